"""FLAME core: loader, batched LBS, landmarks, the procedural FLAME-format model."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from headstudio.flame import procedural as P
from headstudio.flame.files import FlameFileError, load_flame_arrays, load_landmark_embedding
from headstudio.flame.lbs import axis_angle_to_matrix, lbs, matrix_to_axis_angle
from headstudio.flame.model import FlameModel
from headstudio.flame.official_writer import dump_official_style


def reference_lbs(flame: FlameModel, shape, expr, pose) -> np.ndarray:
    """FLAME's forward formula written out per joint and per vertex in numpy (float64)."""
    v = flame.v_template.numpy() + flame.shapedirs.numpy() @ shape + flame.exprdirs.numpy() @ expr
    joints = flame.J_regressor.numpy() @ v
    rots = Rotation.from_rotvec(pose.reshape(5, 3)).as_matrix()
    feat = np.concatenate([(rots[j] - np.eye(3)).ravel() for j in range(1, 5)])
    v = v + flame.posedirs.numpy() @ feat
    glob = []
    for j, parent in enumerate(flame.parents):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0)
        glob.append(local if parent < 0 else glob[parent] @ local)
    out = np.zeros_like(v)
    w = flame.weights.numpy()
    for i in range(len(v)):
        m = np.zeros((4, 4))
        for j in range(5):
            a = glob[j].copy()
            a[:3, 3] -= glob[j][:3, :3] @ joints[j]
            m += w[i, j] * a
        out[i] = m[:3, :3] @ v[i] + m[:3, 3]
    return out


def test_lbs_matches_reference(flame):
    rng = np.random.default_rng(1)
    shape, expr = rng.normal(size=100) * 0.5, rng.normal(size=50) * 0.5
    pose = rng.normal(size=15) * 0.2
    out = flame(torch.tensor(shape)[None], torch.tensor(expr)[None], torch.tensor(pose)[None])
    ref = reference_lbs(flame, shape, expr, pose)
    assert np.abs(out.vertices[0].numpy() - ref).max() < 1e-9


def test_zero_pose_gives_template(flame):
    out = flame()
    assert torch.allclose(out.vertices[0], flame.v_template, atol=1e-12)


def test_global_rotation_is_rigid(flame):
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, :3] = torch.tensor([0.3, -0.5, 0.2])
    out = flame(pose=pose).vertices[0].numpy()
    rest = flame.v_template.numpy()
    j0 = (flame.J_regressor.numpy() @ rest)[0]
    R = Rotation.from_rotvec([0.3, -0.5, 0.2]).as_matrix()
    assert np.abs(out - ((rest - j0) @ R.T + j0)).max() < 1e-7  # float32 weights sum to 1 +- 1e-7


def test_jaw_moves_only_jaw_weighted_vertices(flame):
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, 6] = 0.35
    moved = (flame(pose=pose).vertices[0] - flame.v_template).norm(dim=-1)
    jaw_w = flame.weights[:, 2]
    assert moved[jaw_w == 0].max() < 1e-7  # float32 weights: sub-micron round-off only
    assert moved.max() > 0.01  # the chin drops by centimetres
    chin = moved[flame.v_template[:, 1] < -0.07][flame.v_template[flame.v_template[:, 1] < -0.07, 2] > 0.05]
    assert chin.mean() > 0.01


def test_eye_pose_moves_only_the_eyeball(flame):
    for joint, key in ((3, "left_eyeball"), (4, "right_eyeball")):
        pose = torch.zeros(1, 15, dtype=torch.float64)
        pose[0, 3 * joint : 3 * joint + 3] = torch.tensor([0.2, 0.3, 0.0])
        moved = (flame(pose=pose).vertices[0] - flame.v_template).norm(dim=-1) > 1e-7
        eyeball = torch.zeros_like(moved)
        eyeball[flame.region_masks[key]] = True
        assert moved.any() and not (moved & ~eyeball).any()


def test_lbs_on_points_with_per_point_fields(flame):
    """The shared LBS takes per-frame, per-point blendshapes and weights (imavatar-surface)."""
    rng = np.random.default_rng(2)
    expr = torch.tensor(rng.normal(size=(2, 50)) * 0.5)
    pose = torch.tensor(rng.normal(size=(2, 15)) * 0.2)
    ref = flame(expression=expr, pose=pose).vertices
    rest, joints = flame.rest_mesh(batch=2)
    rest_joints = flame.rest_mesh(expression=expr, batch=2)[1]
    rot = axis_angle_to_matrix(pose.reshape(2, 5, 3))
    batched = lambda t: t[None].expand(2, *t.shape)  # noqa: E731
    posed, _ = lbs(
        rest,
        batched(flame.weights),
        rot,
        rest_joints,
        flame.parents,
        expression=expr,
        expr_dirs=batched(flame.exprdirs),
        pose_dirs=batched(flame.posedirs),
    )
    assert torch.allclose(posed, ref, atol=1e-10)


def test_skinned_surface_points_equal_the_skinned_mesh_interpolated(flame):
    """skin_surface_points gives what skinning every vertex and interpolating gives, for points shared by the
    batch and for points chosen per batch element."""
    from headstudio.flame.lbs import rigid_transforms, skin_surface_points
    from headstudio.flame.model import faces_points

    g = torch.Generator().manual_seed(0)
    rest = flame.v_template[None] + 0.01 * torch.randn(3, flame.num_vertices, 3, generator=g)
    rot = axis_angle_to_matrix(0.3 * torch.randn(3, 5, 3, generator=g))
    joints = flame.J_regressor @ rest
    posed, transforms = lbs(rest, flame.weights, rot, joints, flame.parents)
    _, same = rigid_transforms(rot, joints, flame.parents)
    assert torch.allclose(transforms, same)
    faces = torch.randint(0, flame.faces.shape[0], (40,), generator=g)
    bary = torch.rand(40, 3, generator=g)
    bary = bary / bary.sum(-1, keepdim=True)
    want = faces_points(posed, flame.faces, faces, bary)
    got = skin_surface_points(rest, flame.weights, transforms, flame.faces[faces], bary)
    assert torch.allclose(got, want, atol=1e-6)
    per_frame = faces.reshape(1, 40).roll(1, -1).expand(3, -1).clone()
    per_frame[1] = faces
    want = torch.stack([faces_points(posed[i : i + 1], flame.faces, per_frame[i], bary)[0] for i in range(3)])
    got = skin_surface_points(rest, flame.weights, transforms, flame.faces[per_frame], bary.expand(3, -1, -1))
    assert torch.allclose(got, want, atol=1e-6)
    shared = skin_surface_points(rest, flame.weights, transforms, flame.faces[faces], bary)
    assert torch.allclose(got[1], shared[1], atol=1e-6) and not torch.allclose(got[0], shared[0], atol=1e-4)


def test_axis_angle_round_trip():
    vec = torch.tensor([[0.0, 0.0, 0.0], [1e-5, 0, 0], [0.3, -1.2, 0.5], [0, 2.5, 0]], dtype=torch.float64)
    R = axis_angle_to_matrix(vec)
    assert torch.allclose(R, torch.tensor(Rotation.from_rotvec(vec.numpy()).as_matrix()), atol=1e-10)
    assert torch.allclose(matrix_to_axis_angle(R), vec, atol=1e-6)


def test_landmarks_follow_the_mesh(flame):
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, 6] = 0.3  # open the jaw
    pose[0, 4] = 0.25  # turn the head: the contour row changes
    out = flame(pose=pose)
    lm = out.landmarks[0]
    v, f = out.vertices[0], flame.faces
    # Recompute the contour row independently from the yaw of global * neck (DECA's table order).
    yaw = math.degrees(Rotation.from_rotvec([0, 0.25, 0]).as_euler("yxz")[0])
    bins = int(round(-yaw)) if round(-yaw) >= 0 else 39 - int(round(-yaw))
    tri = v[f[flame.lmk_dynamic_faces[bins]]]
    assert torch.allclose(lm[:17], (tri * flame.lmk_dynamic_bary[bins][..., None]).sum(-2), atol=1e-12)
    tri = v[f[flame.lmk_static_faces]]
    assert torch.allclose(lm[17:], (tri * flame.lmk_static_bary[..., None]).sum(-2), atol=1e-12)
    rest = flame().landmarks[0]
    drop = rest[:, 1] - lm[:, 1]
    assert drop[57 - 0] > 0.01 and drop[66] > 0.01  # lower lip follows the jaw
    assert abs(drop[51]) < 0.003 and abs(drop[62]) < 0.003  # upper lip does not
    # iBUG order: subject's right (x < 0) first; eyes above the nose tip above the mouth.
    assert rest[36:42, 0].max() < 0 < rest[42:48, 0].min()
    assert rest[17:22, 0].max() < 0 < rest[22:27, 0].min()
    assert rest[48, 0] < rest[54, 0] and rest[0, 0] < rest[16, 0]
    assert rest[36:48, 1].mean() > rest[30, 1] > rest[48:68, 1].mean() > rest[8, 1]


def test_procedural_model_is_a_head(procedural):
    t = procedural.template
    assert len(t.vertices) >= 3000
    assert procedural.model["shapedirs"].shape == (len(t.vertices), 3, 400)
    assert procedural.model["posedirs"].shape == (len(t.vertices), 3, 36)
    assert np.abs(procedural.model["posedirs"]).max() > 0
    extent = t.vertices.max(0) - t.vertices.min(0)
    assert 0.14 < extent[0] < 0.25 and 0.25 < extent[1] < 0.40  # metres, as FLAME
    for key in ("face", "lips", "nose", "eye_region", "neck", "scalp", "left_eyeball", "right_eyeball"):
        assert len(procedural.masks[key]) > 0, key
    w = procedural.model["weights"]
    assert np.allclose(w.sum(1), 1.0) and (w >= 0).all()
    assert all((w[:, j] > 0.5).sum() > 50 for j in range(5))


def test_expression_actions_are_distinct_and_local(procedural):
    t = procedural.template
    skin = t.part == P.SKIN
    dirs = procedural.model["shapedirs"][:, :, 300 : 300 + len(P.EXPRESSION_NAMES)]
    flat = dirs.reshape(-1, dirs.shape[-1])
    unit = flat / np.linalg.norm(flat, axis=0)
    cos = np.abs(unit.T @ unit) - np.eye(unit.shape[1])
    assert cos.max() < 0.95, "two expression actions are nearly the same"
    for k, name in enumerate(P.EXPRESSION_NAMES):
        mag = np.linalg.norm(dirs[:, :, k], axis=1)
        assert mag.max() > 0.002, name
        assert ((mag > 0.1 * mag.max()) & skin).sum() < 0.2 * skin.sum(), f"{name} is not local"
    x = t.vertices[:, 0]
    for name, side in (("smile_left", 1), ("blink_left", 1), ("brow_raise_right", -1), ("sneer_left", 1)):
        mag = np.linalg.norm(dirs[:, :, P.EXPRESSION_NAMES.index(name)], axis=1)
        assert mag[side * x > 0.01].sum() > 5 * mag[side * x < -0.01].sum(), f"{name} is not asymmetric"


def test_blink_closes_the_eye(flame):
    """With blink on, the skin covers the eyeball front: the eyeball's front is behind the lid."""
    expr = torch.zeros(1, 50, dtype=torch.float64)
    eyeball = flame.v_template[flame.region_masks["left_eyeball"]]
    front = eyeball[eyeball[:, 2].argmax()]
    expr[0, P.EXPRESSION_NAMES.index("blink_left")] = 1.0
    v = flame(expression=expr).vertices[0]
    skin = torch.as_tensor(np.isin(np.arange(len(v)), flame.region_masks["left_eye_region"]))
    near = v[skin][((v[skin][:, :2] - front[:2]).norm(dim=-1)).argmin()]
    assert near[2] > front[2]


def test_seed_is_deterministic_and_varies_identity():
    a, b, c = (P.make_procedural_flame(seed=s).model["shapedirs"] for s in (3, 3, 4))
    assert np.array_equal(a, b)
    assert not np.allclose(a[:, :, 20:300], c[:, :, 20:300])


def test_procedural_model_round_trips_through_the_loader(procedural, flame_path):
    arrays = load_flame_arrays(flame_path)
    m = procedural.model
    assert np.array_equal(arrays.v_template, m["v_template"])
    assert np.array_equal(arrays.shapedirs, m["shapedirs"])
    assert np.array_equal(arrays.J_regressor, m["J_regressor"].toarray())
    assert np.array_equal(arrays.faces, m["f"].astype(np.int64))
    assert arrays.parents == (-1, 0, 1, 1, 1)
    lm = load_landmark_embedding(flame_path.with_name("landmark_embedding.npy"))
    assert lm.dynamic_faces.shape == (79, 17) and lm.full_bary.shape == (68, 3)


def test_official_key_layout_loads(tmp_path, procedural):
    """A file with exactly the official keys, chumpy-style objects and sparse regressor."""
    m = dict(procedural.model)
    path = tmp_path / "generic_model.pkl"
    dump_official_style(m, path, chumpy_keys=("v_template", "shapedirs", "weights", "J"))
    model = FlameModel.from_file(path, num_shape=300, num_expression=100)
    assert model.num_vertices == len(m["v_template"])
    assert torch.allclose(model.v_template, torch.tensor(m["v_template"], dtype=torch.float32))


def test_missing_model_explains_the_licence(tmp_path):
    with pytest.raises(FlameFileError, match="licensed"):
        load_flame_arrays(tmp_path / "generic_model.pkl")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("posedirs"), "missing key 'posedirs'"),
        (lambda d: d.update(weights=np.zeros((3, 5))), "field 'weights' has shape"),
        (lambda d: d.update(v_template=np.full((d["v_template"].shape[0], 3), np.nan)), "NaN"),
        (lambda d: d.update(f=np.array([[0, 1, 10**7]])), "field 'f' indexes vertex"),
    ],
)
def test_bad_model_fields_are_named(tmp_path, procedural, change, message):
    d = {k: v for k, v in procedural.model.items()}
    change(d)
    path = tmp_path / "generic_model.pkl"
    with open(path, "wb") as fh:
        pickle.dump(d, fh, protocol=2)
    with pytest.raises(FlameFileError, match=message) as err:
        load_flame_arrays(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_malicious_model_file_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(FlameFileError, match="refused"):
        FlameModel.from_file(path)
    assert not marker.exists()


def test_bad_landmark_embedding_is_named(tmp_path, procedural):
    path = tmp_path / "landmark_embedding.npy"
    lm = dict(procedural.landmarks)
    lm["dynamic_lmk_faces_idx"] = lm["dynamic_lmk_faces_idx"][:10]
    np.save(path, np.array(lm, dtype=object), allow_pickle=True)
    with pytest.raises(FlameFileError, match="dynamic_lmk_faces_idx.*shape"):
        load_landmark_embedding(path)
    lm.pop("static_lmk_bary_coords")
    np.save(path, np.array(lm, dtype=object), allow_pickle=True)
    with pytest.raises(FlameFileError, match="missing key 'static_lmk_bary_coords'"):
        load_landmark_embedding(path)
