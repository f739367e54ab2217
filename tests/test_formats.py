"""The four layouts as their original tools write them (fixtures written here from the format
descriptions, not by hs-synth): each parses, and the frame's FLAME landmarks projected with the
parsed camera land on the fixture's 2-D landmarks (computed with the original tool's own
projection and pixel convention).

The fixtures follow, for each layout, what its writer does and how its reader reads it:
IMavatar (``preprocess/DECA/optimize.py``, ``code/datasets/real_dataset.py``), NerFace
(``real_to_nerf.py``, ``load_flame.py`` / ``get_ray_bundle``), INSTA (``scripts/transforms.py``,
INSTA-pytorch ``provider.py`` / ``get_rays``) and MonoNPHM (metrical-tracker checkpoints,
``photometric_tracking/data_loading.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from headstudio.data.errors import DataError
from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig
from headstudio.export.ply import write_ply
from headstudio.flame.constants import LANDMARK_WITH_EYES_FILENAME
from headstudio.flame.model import FlameModel
from tests.conftest import REALDATA

def axis_angle_to_matrix_np(v) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(v, dtype=np.float64)).as_matrix()


MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])
# MonoNPHM's data_loading.py: the WFLW-98 rows of the iBUG-68 landmarks.
WFLW_2_IBUG68 = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 33, 34, 35, 36, 37, 42, 43, 44, 45,
                 46, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75, 76, 77, 78,
                 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95]  # fmt: skip


@pytest.fixture(scope="module")
def flame70(flame_path) -> FlameModel:
    """The procedural model with IMavatar's 70-point embedding (68 + two irises)."""
    path = flame_path.with_name(LANDMARK_WITH_EYES_FILENAME)
    return FlameModel.from_file(flame_path, landmark_path=path, num_shape=300, num_expression=100).double()


def flame_points(model: FlameModel, shape, expression, pose) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and landmarks (70, 3: 68 + irises) in FLAME metres."""
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))[None]  # noqa: E731
    out = model(shape=t(shape), expression=t(expression), pose=t(pose))
    lms = torch.cat([out.landmarks, model.iris_landmarks(out.vertices)], 1)
    return out.vertices[0].numpy(), lms[0].numpy()


def random_state(rng: np.random.Generator, n_expr: int = 50, head: bool = True) -> dict:
    pose = np.zeros(15)
    if head:
        pose[0:3] = rng.normal(size=3) * [0.15, 0.3, 0.1]
    pose[3:6] = rng.normal(size=3) * 0.08
    pose[6] = rng.uniform(0.05, 0.3)
    pose[7:9] = rng.normal(size=2) * 0.02
    pose[9:15] = rng.normal(size=6) * 0.1
    expr = np.zeros(100)
    expr[:n_expr] = rng.normal(size=n_expr) * 0.4
    return {"expression": expr, "pose": pose}


def write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def disc_image(w: int, h: int, channels: int = 3, alpha: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    inside = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (0.35 * min(w, h)) ** 2
    img = np.full((h, w, channels), 200, np.uint8)
    img[inside] = (40, 90, 160)[:channels] if channels == 3 else 90
    if alpha:
        img = np.concatenate([img, (inside * 255).astype(np.uint8)[..., None]], -1)
    return img


def project_ns(cameras, k: int, points: np.ndarray) -> np.ndarray:
    """World points -> pixels with nerfstudio's camera: OpenGL c2w, pixel (i, j) centred at (i + 0.5, j + 0.5)."""
    c2w = cameras.camera_to_worlds[k].double().numpy()
    cam = (points - c2w[:, 3]) @ c2w[:, :3]
    fx, fy, cx, cy = (float(getattr(cameras, a)[k]) for a in ("fx", "fy", "cx", "cy"))
    return np.stack([cx + fx * cam[:, 0] / -cam[:, 2], cy - fy * cam[:, 1] / -cam[:, 2]], -1)


def track_landmarks(out, flame70: FlameModel, k: int) -> np.ndarray:
    """FLAME landmarks (70) of the k-th camera's frame from the parsed frame table, in world units (x 4)."""
    meta = out.metadata
    frame = int(out.cameras.metadata["frame_index"][k])
    table = meta["frame_table"]
    _, lms = flame_points(flame70, meta["shape"].double().numpy(), table["expression"][frame].double().numpy(), table["pose"][frame].double().numpy())
    return lms * meta["world_scale"]


def parse(root: Path, split: str = "train", **kw):
    return FlameVideoDataParserConfig(data=root, **kw).setup().get_dataparser_outputs(split)


# ------------------------------------------------------------------------------------------ IMavatar


def write_imavatar(base: Path, flame70: FlameModel, size=(64, 48)) -> tuple[Path, dict]:
    """``<subject>/<subject>/MVI_xxxx/`` with flame_params.json as IMavatar's optimize.py writes it."""
    rng = np.random.default_rng(1)
    W, H = size
    fx, fy, cx, cy = 170.0, 166.0, 31.3, 24.6  # pixels, integer pixel centres (IMavatar samples at integers)
    subject = base / "subject1"
    shape = rng.normal(size=100) * 0.5
    truth = {}
    for seq, n in (("MVI_1810", 3), ("MVI_1811", 2), ("MVI_1812", 2), ("MVI_1814", 2)):
        d = subject / "subject1" / seq
        frames = []
        for i in range(1, n + 1):
            st = random_state(rng)
            _, lms = flame_points(flame70, shape, st["expression"], st["pose"])
            p = lms * 4.0 + [0.0, 0.0, -4.0]  # world_mat [I | (0, 0, -4)] applied; FLAME x 4
            x, y, z = p.T
            K = [-2 * fx / W, 2 * fy / H, 2 * cx / W - 1, 2 * cy / H - 1]  # optimize.py's projection
            kp = np.stack([(x / z) * K[0] + K[2], (y / z) * K[1] + K[3]], -1)
            write_png(d / "image" / f"{i}.png", disc_image(W, H))
            write_png(d / "mask" / f"{i}.png", disc_image(W, H, 1)[..., 0])
            frames.append({
                "file_path": f"./image/{i}",
                "world_mat": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -4.0]],
                "expression": st["expression"][:50].tolist(),
                "pose": st["pose"].tolist(),
                "bbox": np.concatenate([kp[:68].min(0), kp[:68].max(0)]).tolist(),
                "flame_keypoints": kp.tolist(),
            })  # fmt: skip
            truth[(seq, i)] = (kp + 1) / 2 * [W, H]  # IMavatar pixel coordinates (integer centres)
        doc = {"shape_params": shape.tolist(), "intrinsics": [-fx / W, fy / H, cx / W, cy / H], "frames": frames}
        (d / "flame_params.json").write_text(json.dumps(doc))
    return subject, truth


def test_imavatar_nested_subject_parses_with_its_released_split_and_70_keypoints(tmp_path, flame_path, flame70):
    subject, truth = write_imavatar(tmp_path, flame70)
    for data in (subject, subject / "subject1"):  # the outer or the inner folder
        train, test = parse(data, "train", flame_path=flame_path), parse(data, "test", flame_path=flame_path)
        table = train.metadata["frame_table"]
        seq_of = lambda out: {table["sequence"][int(i)] for i in out.cameras.metadata["frame_index"][:, 0]}  # noqa: E731
        assert seq_of(test) == {"MVI_1812"}  # IMavatar's released test sequence, not the last one (MVI_1814)
        assert seq_of(train) == {"MVI_1810", "MVI_1811", "MVI_1814"}
        assert train.metadata["landmarks_px"].shape[1] == 70
    out = parse(subject, "train", flame_path=flame_path)
    table = out.metadata["frame_table"]
    errors = []
    for k in range(len(out.cameras)):
        frame = int(out.cameras.metadata["frame_index"][k])
        seq, n = table["sequence"][frame], int(Path(table["image"][frame]).stem)
        px = project_ns(out.cameras, k, track_landmarks(out, flame70, k))
        parsed = out.metadata["landmarks_px"][k].double().numpy()
        assert np.abs(parsed - (truth[(seq, n)] + 0.5)).max() < 1e-4  # integer centres -> nerfstudio's
        # Rows 17: (inner points and irises): with the head pose folded into the camera, the frame's FLAME
        # state has no global rotation, so FLAME's yaw-dependent contour row differs from the tracked one.
        errors.append(np.abs(px[17:] - parsed[17:]).max())
    # Within 1 px as required; far tighter in fact (a half-pixel slip would show as 0.5).
    assert max(errors) < 0.02, errors


def test_imavatar_pixel_centres_follow_nerfstudio(tmp_path, flame_path, flame70):
    """The ray nerfstudio casts through pixel (i, j) is IMavatar's ray through integer (i, j)."""
    subject, _ = write_imavatar(tmp_path, flame70)
    out = parse(subject, "train", flame_path=flame_path, fold_head_pose=False)
    cams = out.cameras
    doc = json.loads((subject / "subject1" / "MVI_1810" / "flame_params.json").read_text())
    W, H = 64, 48
    i0, i1, i2, i3 = doc["intrinsics"]
    fx, fy, cx, cy = i0 * W, i1 * H, i2 * W, i3 * H  # IMavatar's K (fx negative)
    ij = torch.tensor([[5, 7], [40, 30], [63, 47]])  # (row j, column i)
    rays = cams.generate_rays(camera_indices=0, coords=ij.float() + 0.5)
    for (j, i), d in zip(ij.tolist(), rays.directions.reshape(-1, 3).double().numpy()):
        lift = np.array([(i - cx) / fx * -1, -(j - cy) / fy, -1.0])  # rend_util.lift with z = -1, R = I
        assert np.allclose(d / np.linalg.norm(d), lift / np.linalg.norm(lift), atol=1e-6)


def test_imavatar_soft_masks_are_thresholded_as_imavatar_reads_them(tmp_path, flame_path, flame70):
    subject, _ = write_imavatar(tmp_path, flame70)
    soft = subject / "subject1" / "MVI_1810" / "mask" / "1.png"
    grey = cv2.imread(str(soft), cv2.IMREAD_GRAYSCALE)
    grey[:, :10] = 100  # a soft matte edge: below IMavatar's 127.5
    grey[:, -10:] = 130
    cv2.imwrite(str(soft), grey)
    out = parse(subject, "train", flame_path=flame_path)
    mask = cv2.imread(str(out.mask_filenames[0]), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and not mask[:, :10].any() and mask[:, -10:].all()


# ------------------------------------------------------------------------------------------ NerFace


def write_nerface(root: Path, flame70: FlameModel, size=(60, 60)) -> tuple[dict, dict]:
    """transforms_{train,val,test}.json as real_to_nerf.py writes them: the tracker's rigid pose with
    columns 0 and 2 negated, translations scaled to a mean depth of 0.5, fx negative, bbox
    [y0, y1, x0, x1] fractions, 76 expression values, a background plate, no masks."""
    rng = np.random.default_rng(2)
    W, H = size
    fx, fy, cx, cy = 165.0, 162.0, 29.4, 30.7  # integer pixel centres (get_ray_bundle uses integer indices)
    shape = rng.normal(size=100) * 0.5
    raw, truth = {}, {}
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            st = random_state(rng, head=False)
            _, lms = flame_points(flame70, shape, st["expression"], st["pose"])
            head_pts = lms * 4.0  # the head frame (the head pose lives in the camera)
            # Physical OpenGL camera: about 1 m (4 units) in front, rotated about the head.
            R = axis_angle_to_matrix_np(rng.normal(size=3) * [0.1, 0.3, 0.05])
            centre = R @ np.array([0.0, 0.0, 4.0]) + rng.normal(size=3) * 0.05
            c2w_phys = np.eye(4)
            c2w_phys[:3, :3], c2w_phys[:3, 3] = R, centre
            # The tracker's world is the mirror image of ours; its camera looks along +z with y up.
            pose = MIRROR_X @ c2w_phys @ np.diag([1.0, 1.0, -1.0, 1.0])
            assert np.isclose(np.linalg.det(pose[:3, :3]), 1.0)
            raw[(split, i)] = (pose, head_pts, st)
    mean_z = np.mean([p[2, 3] for p, _, _ in raw.values()])
    scale = 0.5 / mean_z
    docs: dict[str, list] = {"train": [], "test": []}
    for (split, i), (pose, head_pts, st) in raw.items():
        m = pose @ np.diag([-1.0, 1.0, -1.0, 1.0])  # "fix guy": columns 0 and 2 negated
        m[:3, 3] *= scale
        # The 2-D landmarks as NerFace's rays see them: dir = ((i - W cx)/fx, -(j - H cy)/fy, -1), fx < 0.
        p = (MIRROR_X[:3, :3] @ head_pts.T).T * scale
        c = (p - m[:3, 3]) @ m[:3, :3]
        u = cx + (-fx) * c[:, 0] / -c[:, 2]
        v = cy - fy * c[:, 1] / -c[:, 2]
        truth[(split, i)] = np.stack([u, v], -1)
        write_png(root / split / f"f_{i:04d}.png", disc_image(W, H))
        docs[split].append({
            "file_path": f"./{split}/f_{i:04d}",
            "transform_matrix": m.tolist(),
            "expression": rng.normal(size=76).tolist(),
            "bbox": [0.1, 0.9, 0.2, 0.8],
        })  # fmt: skip
    docs["val"] = docs["test"][:1]
    for split, frames in docs.items():
        doc = {"camera_angle_x": 2 * np.arctan(W / (2 * fx)), "intrinsics": [-fx, fy, cx / W, cy / H], "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(doc))
    plate = np.full((H, W, 3), 200, np.uint8)
    write_png(root / "bg" / "00050.png", plate)
    return truth, {"mean_depth_m": mean_z / 4.0, "heads": {k: v[1] for k, v in raw.items()}}


def test_nerface_subject_parses_with_its_scale_sign_and_bbox(tmp_path, flame70):
    root = tmp_path / "person_1"
    truth, info = write_nerface(root, flame70)
    for split, n in (("train", 3), ("test", 2)):
        out = parse(root, split, nerface_camera_depth=info["mean_depth_m"])
        assert len(out.cameras) == n and out.metadata["flame_tracked"] is False
        for k in range(n):
            c2w = out.cameras.camera_to_worlds[k].double().numpy()
            assert np.isclose(np.linalg.det(c2w[:, :3]), 1.0, atol=1e-5)  # a proper rotation again
            px = project_ns(out.cameras, k, info["heads"][(split, k)])
            assert np.abs(px - (truth[(split, k)] + 0.5)).max() < 0.02
            assert np.allclose(out.cameras.metadata["bbox"][k].numpy(), [0.2 * 60, 0.1 * 60, 0.8 * 60, 0.9 * 60])
            assert 3.5 < np.linalg.norm(c2w[:, 3]) < 4.5  # NerFace units back to world units
        mask = cv2.imread(str(out.mask_filenames[0]), cv2.IMREAD_UNCHANGED) > 0
        disc = disc_image(60, 60, 1)[..., 0] != 200
        assert mask.ndim == 2 and (mask & disc).sum() / (mask | disc).sum() > 0.95  # from the background plate
    default = parse(root, "train")  # the default assumes a 1 m mean depth
    given = parse(root, "train", nerface_camera_depth=info["mean_depth_m"])
    ratio = np.linalg.norm(default.cameras.camera_to_worlds[0, :, 3]) / np.linalg.norm(given.cameras.camera_to_worlds[0, :, 3])
    assert np.isclose(ratio, 1.0 / info["mean_depth_m"], rtol=1e-4)


def test_flame_methods_refuse_a_nerface_subject_in_one_line(tmp_path, flame70):
    from headstudio.models.subject_state import SubjectState

    root = tmp_path / "person_1"
    write_nerface(root, flame70)
    out = parse(root, "train")
    with pytest.raises(DataError) as err:
        SubjectState(out.metadata)
    msg = str(err.value)
    assert "nerface layout" in msg and "not FLAME" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------ INSTA


def write_insta(root: Path, flame70: FlameModel, size=(64, 56), n_frames: int = 6, n_test: int = 2) -> dict:
    """transforms*.json, meshes, flame/exp (100 values) as INSTA's transforms.py writes metrical-tracker's output."""
    rng = np.random.default_rng(3)
    W, H = size
    fx, fy, cx, cy = 172.0, 170.0, 32.2, 27.9  # OpenCV K; INSTA-pytorch samples at pixel centres (+0.5)
    shape = rng.normal(size=100) * 0.5
    frames, truth, states = [], {}, {}
    for k in range(n_frames):
        fid = f"{k:05d}"
        st = random_state(rng, head=False)  # metrical-tracker's FLAME has no global rotation
        verts, lms = flame_points(flame70, shape, st["expression"], st["pose"])
        (root / "meshes").mkdir(parents=True, exist_ok=True)
        lines = ["v %.9f %.9f %.9f" % tuple(v) for v in verts] + ["f %d %d %d" % tuple(f + 1) for f in flame70.faces.numpy()]
        (root / "meshes" / f"{fid}.obj").write_text("\n".join(lines) + "\n")
        (root / "flame" / "exp").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "flame" / "exp" / f"{fid}.txt", st["expression"], fmt="%.8f")  # one value per line
        # OpenCV world-to-camera in metres; the head pose is in the camera.
        R = axis_angle_to_matrix_np(rng.normal(size=3) * [0.15, 0.3, 0.1]) @ np.diag([1.0, -1.0, -1.0])
        t = np.array([0.0, 0.0, 1.0]) + rng.normal(size=3) * 0.01
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R, t
        c = lms @ R.T + t
        truth[fid] = np.stack([cx + fx * c[:, 0] / c[:, 2], cy + fy * c[:, 1] / c[:, 2]], -1)  # pixel centres
        states[fid] = st
        write_png(root / "images" / f"{fid}.png", disc_image(W, H, alpha=True))
        write_png(root / "seg_mask" / f"{fid}.png", disc_image(W, H))
        frames.append({
            "transform_matrix": np.linalg.inv(w2c).tolist(),
            "file_path": f"images/{fid}.png",
            "mesh_path": f"meshes/{fid}.obj",
            "exp_path": f"flame/exp/{fid}.txt",
            "depth_path": f"depth/{fid}.png",
            "seg_mask_path": f"seg_mask/{fid}.png",
        })  # fmt: skip
    header = {"w": W, "h": H, "cx": cx, "cy": cy, "fl_x": fx, "fl_y": fy, "camera_angle_x": 2 * np.arctan(W / (2 * fx)),
              "camera_angle_y": 2 * np.arctan(H / (2 * fy)), "integer_depth_scale": 1 / 1000}  # fmt: skip
    header = {k: float(v) for k, v in header.items()}
    for name, fr in (("", frames), ("_train", frames[:-n_test]), ("_test", frames[-n_test:]), ("_val", frames[-20:])):
        (root / f"transforms{name}.json").write_text(json.dumps({**header, "frames": fr}, indent=4, sort_keys=True))
    return {"truth": truth, "states": states, "shape": shape}


def rotation_error_degrees(a: np.ndarray, b: np.ndarray) -> float:
    Ra, Rb = axis_angle_to_matrix_np(a), axis_angle_to_matrix_np(b)
    return float(np.degrees(np.arccos(np.clip((np.trace(Ra.T @ Rb) - 1) / 2, -1, 1))))


@pytest.fixture(scope="module")
def insta_subject(tmp_path_factory, flame70) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("insta") / "duda"
    return root, write_insta(root, flame70)


def test_insta_subject_parses_and_recovers_jaw_eyes_neck(insta_subject, flame_path, flame70):
    root, info = insta_subject
    out = parse(root, "train", flame_path=flame_path)
    test = parse(root, "test", flame_path=flame_path)
    assert len(out.cameras) == 4 and len(test.cameras) == 2
    assert (root / ".headstudio" / "flame_fit.npz").exists()
    table = out.metadata["frame_table"]
    for split in (out, test):
        for k in range(len(split.cameras)):
            frame = int(split.cameras.metadata["frame_index"][k])
            fid = Path(table["image"][frame]).stem
            px = project_ns(split.cameras, k, track_landmarks(split, flame70, k))
            err = np.abs(px - info["truth"][fid]).max(1)
            # The contour row FLAME picks depends on the neck yaw rounded to a degree: a recovered yaw a hair
            # across a bin boundary moves a contour point by up to a pixel. The inner points are exact.
            assert err.max() < 1.0 and err[17:].max() < 0.05, (np.argmax(err), err.max())
            true_pose, got = info["states"][fid]["pose"], table["pose"][frame].double().numpy()
            for j, name in ((1, "neck"), (2, "jaw"), (3, "left eye"), (4, "right eye")):
                err = rotation_error_degrees(true_pose[3 * j : 3 * j + 3], got[3 * j : 3 * j + 3])
                assert err < 1.0, (fid, name, err)
    mask = cv2.imread(str(out.mask_filenames[0]), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and ((mask > 0) == (disc_image(64, 56, 1)[..., 0] != 200)).all()  # the image's alpha


def test_insta_recovery_is_cached_and_reported(insta_subject, flame_path, capsys):
    from headstudio.scripts.check_data import CheckData

    root, _ = insta_subject
    parse(root, "train", flame_path=flame_path)
    cache = root / ".headstudio" / "flame_fit.npz"
    stamp = cache.stat().st_mtime_ns
    assert CheckData(path=root, flame_path=flame_path).main() == 0
    text = capsys.readouterr().out
    assert "read from the cache" in text and "fit residual" in text and "mm" in text
    assert cache.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------------ MonoNPHM


def write_mononphm(seq_dir: Path, flame70: FlameModel, size=(72, 72), n_source: int = 4) -> dict:
    """A Kinect sequence as MonoNPHM's preprocessing writes it, with metrical-tracker's checkpoints."""
    rng = np.random.default_rng(4)
    W, H = size
    fx, fy, cx, cy = 205.0, 204.0, 35.6, 36.3  # the Kinect calibration of the full frame (OpenCV)
    seq_dir.mkdir(parents=True)
    (seq_dir / "kinect_intrinsics.txt").write_text(f"{cx} {cy} {fx} {fy} 0.29 -2.6 1.6 0.17 -2.4 1.5 0 0 -6.5e-05 0.00025 ")
    tracker = seq_dir / "metrical_tracker" / seq_dir.name
    shape = rng.normal(size=100) * 0.5
    np.save(seq_dir / "identity.npy", np.concatenate([shape, np.zeros(200)]).astype(np.float32))
    checkpoints = {}
    for k in range(n_source - 1):
        st = random_state(rng, head=False)
        verts, lms = flame_points(flame70, shape, st["expression"], st["pose"])
        R = axis_angle_to_matrix_np(rng.normal(size=3) * [0.15, 0.3, 0.1]) @ np.diag([1.0, -1.0, -1.0])
        t = np.array([0.0, 0.0, 0.9]) + rng.normal(size=3) * 0.01
        K_tracker = np.array([[fx / 2, 0, cx / 2], [0, fy / 2, cy / 2], [0, 0, 1]])  # the 512-crop K: not used for Kinect
        (tracker / "checkpoint").mkdir(parents=True, exist_ok=True)
        np.savez(tracker / "checkpoint" / f"{k:05d}_cam_params_opencv.npz", R=R[None], t=t[None], K=K_tracker[None])
        (tracker / "mesh").mkdir(parents=True, exist_ok=True)
        write_ply(tracker / "mesh" / f"{k:05d}.ply", verts, flame70.faces.numpy())
        checkpoints[k] = (R, t, lms)
    wflw = []
    truth = {}
    for t_ in range(n_source):
        R, t, lms = checkpoints[max(t_ - 1, 0)]  # MonoNPHM reads checkpoint t - 1 for source frame t
        c = lms[:68] @ R.T + t
        px = np.stack([cx + fx * c[:, 0] / c[:, 2], cy + fy * c[:, 1] / c[:, 2]], -1)  # integer pixel centres
        truth[t_] = px
        full = rng.uniform(0, 1, (98, 2))
        full[WFLW_2_IBUG68] = px / [W, H]
        wflw.append(full)
        write_png(seq_dir / "source" / f"{t_:05d}.png", disc_image(W, H))
        seg = np.where(disc_image(W, H, 1)[..., 0] != 200, 2, 0).astype(np.uint8)  # facer: 2 = face skin
        write_png(seq_dir / "seg" / f"{t_}.png", seg)
        write_png(seq_dir / "matting" / f"{t_:05d}.png", (seg > 0).astype(np.uint8) * 255)
    (seq_dir / "pipnet").mkdir(parents=True, exist_ok=True)
    np.save(seq_dir / "pipnet" / "test.npy", np.stack(wflw).astype(np.float32))
    return {"truth": truth}


def test_mononphm_sequence_parses_with_tracker_cameras_and_pipnet_landmarks(tmp_path, flame_path, flame70):
    seq = tmp_path / "510_seq_4"
    info = write_mononphm(seq, flame70)
    out = parse(seq, "train", format="kinect", flame_path=flame_path)
    assert len(out.cameras) == 4
    assert float(out.cameras.fx[0]) == pytest.approx(205.0) and float(out.cameras.cx[0]) == pytest.approx(36.1)
    for k in range(4):
        parsed = out.metadata["landmarks_px"][k].double().numpy()
        assert np.abs(parsed - (info["truth"][k] + 0.5)).max() < 1e-3  # WFLW -> iBUG-68, [0, 1] -> pixels
        px = project_ns(out.cameras, k, track_landmarks(out, flame70, k)[:68])
        err = np.abs(px - parsed).max(1)
        assert err.max() < 1.0 and err[17:].max() < 0.05, (np.argmax(err), err.max())  # contour: see the INSTA test
    mask = cv2.imread(str(out.mask_filenames[0]), cv2.IMREAD_UNCHANGED)
    assert mask.ndim == 2 and ((mask > 0) == (disc_image(72, 72, 1)[..., 0] != 200)).all()


# ------------------------------------------------------------------------------------------ bad input


def one_line(err: pytest.ExceptionInfo, *words: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_bad_input_in_each_original_layout_is_named(tmp_path, flame_path, flame70):
    # IMavatar: keypoints that are neither 68 nor 70 rows.
    subject, _ = write_imavatar(tmp_path / "im", flame70)
    jf = subject / "subject1" / "MVI_1811" / "flame_params.json"
    doc = json.loads(jf.read_text())
    doc["frames"][1]["flame_keypoints"] = doc["frames"][1]["flame_keypoints"][:69]
    jf.write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        parse(subject, flame_path=flame_path)
    one_line(err, str(jf), "frame 1", "flame_keypoints", "(69, 2)")
    # NerFace: a bbox that is not [y0, y1, x0, x1] fractions.
    root = tmp_path / "nf"
    write_nerface(root, flame70)
    jf = root / "transforms_train.json"
    doc = json.loads(jf.read_text())
    doc["frames"][2]["bbox"] = [-1, -1, 1, 1]
    jf.write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        parse(root)
    one_line(err, str(jf), "frame 2", "bbox")
    # INSTA: an expression file that is not numbers.
    root = tmp_path / "insta"
    write_insta(root, flame70, n_frames=3, n_test=1)
    bad = root / "flame" / "exp" / "00001.txt"
    bad.write_text("0.1\nnot-a-number\n")
    with pytest.raises(DataError) as err:
        parse(root, flame_path=flame_path)
    one_line(err, str(bad), "frame 1", "expression")
    # MonoNPHM: a camera npz without the batch axis.
    seq = tmp_path / "510_seq_4"
    write_mononphm(seq, flame70, n_source=3)
    cam = seq / "metrical_tracker" / "510_seq_4" / "checkpoint" / "00001_cam_params_opencv.npz"
    data = dict(np.load(cam))
    np.savez(cam, R=data["R"][0], t=data["t"], K=data["K"])
    with pytest.raises(DataError) as err:
        parse(seq, format="kinect", flame_path=flame_path)
    one_line(err, str(cam), "frame 2", "'R'", "batch axis")


# ------------------------------------------------------------------------------------------ real files



def real_file(*parts: str) -> Path:
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the real files from the original projects live in ../shared/realdata")
    return path


def test_mononphm_kinect_intrinsics_file_parses_to_its_k():
    from headstudio.data.formats.kinect import read_kinect_intrinsics

    fx, fy, cx, cy = read_kinect_intrinsics(real_file("mononphm_kinect_intrinsics", "kinect_intrinsics.txt"))
    # MonoNPHM's reader: cx cy fx fy = fields 0..3 of the first line; the 10 distortion values are ignored.
    assert (fx, fy, cx, cy) == (914.415, 914.03, 539.598, 547.202)


def test_metrical_tracker_identity_is_a_300_shape(tmp_path, flame_path, flame70):
    """MICA's identity.npy, as MonoNPHM and metrical-tracker keep it, is read as the initial FLAME shape."""
    real = real_file("metrical_tracker_identity", "duda_identity.npy")
    seq = tmp_path / "510_seq_4"
    write_mononphm(seq, flame70, n_source=2)
    (seq / "identity.npy").unlink()
    (seq / "identity.npy").symlink_to(real)  # read in place, never copied
    from headstudio.data.errors import Problems
    from headstudio.data.formats import read_subject

    subject, problems = read_subject(seq, "kinect", Problems())
    assert not problems.items and subject.shape.shape == (300,)
    assert np.allclose(subject.shape, np.load(real).astype(np.float64))
