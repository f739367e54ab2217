"""FLAME companion files from the original projects: DECA's 68-point and IMavatar's 70-point
landmark embeddings, INSTA's text region lists.

The real files are read from the workspace's ``shared/realdata`` folder next to the repository
(never copied into the project); those tests skip when it is absent. The synthetic tests at the
end run everywhere.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from headstudio.flame.files import (
    FlameArrays,
    FlameFileError,
    load_landmark_embedding,
    load_region_masks,
)
from headstudio.flame.lbs import axis_angle_to_matrix
from headstudio.flame.model import FlameModel, dynamic_contour_bins, faces_points
from headstudio.flame.safe_pickle import safe_load_npy_dict
from tests.conftest import REALDATA

DECA = REALDATA / "deca_landmark_embedding" / "landmark_embedding.npy"
IMAVATAR = REALDATA / "imavatar_landmark_embedding_with_eyes" / "landmark_embedding_with_eyes.npy"
INSTA = REALDATA / "insta_flame_masks"

FLAME_VERTICES, FLAME_FACES = 5023, 9976


def needs(path: Path):
    return pytest.mark.skipif(
        not path.exists(), reason=f"real reference file {path} is absent (the workspace's shared/realdata is not here)"
    )


def one_line(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg


def random_flame_arrays(seed: int = 0) -> FlameArrays:
    """A mesh with FLAME's vertex and face counts: random positions and random faces."""
    rng = np.random.default_rng(seed)
    v, j = FLAME_VERTICES, 5
    weights = rng.random((v, j))
    return FlameArrays(
        v_template=rng.normal(size=(v, 3)),
        faces=rng.integers(0, v, size=(FLAME_FACES, 3)).astype(np.int64),
        weights=weights / weights.sum(1, keepdims=True),
        posedirs=np.zeros((v, 3, 9 * (j - 1))),
        shapedirs=np.zeros((v, 3, 2)),
        J_regressor=np.full((j, v), 1.0 / v),
        parents=(-1, 0, 1, 1, 1),
        num_shape_total=1,
    )


def yaw_rot_mats(degrees: list[float]) -> torch.Tensor:
    pose = torch.zeros(len(degrees), 5, 3, dtype=torch.float64)
    pose[:, 0, 1] = torch.tensor([math.radians(d) for d in degrees], dtype=torch.float64)
    return axis_angle_to_matrix(pose)


# --------------------------------------------------------------------------- real embeddings


@needs(DECA)
@needs(IMAVATAR)
def test_real_embeddings_index_faces_of_flame():
    for path in (DECA, IMAVATAR):
        raw = safe_load_npy_dict(path)
        top = max(int(np.asarray(raw[k]).max()) for k in raw if k.endswith("faces_idx"))
        assert top < FLAME_FACES  # so a random 9976-face mesh is a valid test mesh


@needs(DECA)
@needs(IMAVATAR)
def test_deca_and_imavatar_embeddings_give_the_same_68_landmarks():
    deca = load_landmark_embedding(DECA, num_faces=FLAME_FACES)
    ima = load_landmark_embedding(IMAVATAR, num_faces=FLAME_FACES)
    assert deca.static_faces.shape == ima.static_faces.shape == (51,)
    assert deca.full_faces.shape == ima.full_faces.shape == (68,) and ima.full_bary.shape == (68, 3)
    assert not deca.has_iris and deca.iris_faces is None and deca.iris_bary is None and deca.num_points == 68
    assert ima.has_iris and ima.iris_faces.shape == (2,) and ima.iris_bary.shape == (2, 3) and ima.num_points == 70

    arrays = random_flame_arrays()
    m68 = FlameModel(arrays, deca, num_shape=1, num_expression=1).double()
    m70 = FlameModel(arrays, ima, num_shape=1, num_expression=1).double()
    verts = torch.as_tensor(arrays.v_template)[None].expand(7, -1, -1)
    yaws = [0.0, 5.0, -5.0, 20.0, -20.0, 38.0, -38.0]  # 7 distinct bins, both signs
    rot = yaw_rot_mats(yaws)
    bins = dynamic_contour_bins(rot)
    assert len(set(bins.tolist())) == len(yaws) and (bins >= 40).any() and (bins < 40).any()

    lm68, lm70 = m68.landmarks(verts, rot), m70.landmarks(verts, rot)
    assert lm68.shape == lm70.shape == (7, 68, 3)
    assert torch.equal(lm68[:, :17], lm70[:, :17])  # contour, per yaw bin
    assert torch.equal(lm68[:, 17:], lm70[:, 17:])  # the 51 static
    assert torch.allclose(m68.full_landmarks(verts), m70.full_landmarks(verts), atol=1e-12, rtol=0)
    assert m70.full_landmarks(verts).shape == (7, 68, 3)

    # The static rows are the full table's rows 17..67 (DECA's convention), in both files.
    raw = safe_load_npy_dict(DECA)
    ref = faces_points(verts, m68.faces, torch.as_tensor(raw["full_lmk_faces_idx"][0, 17:]),
                       torch.as_tensor(raw["full_lmk_bary_coords"][0, 17:], dtype=torch.float64))  # fmt: skip
    assert torch.allclose(lm68[:, 17:], ref, atol=1e-6, rtol=0)

    # Iris points only with the 70-point file; they are its full table's rows 68, 69.
    assert m70.has_iris and not m68.has_iris
    iris = m70.iris_landmarks(verts)
    assert iris.shape == (7, 2, 3)
    raw70 = safe_load_npy_dict(IMAVATAR)
    ref = faces_points(verts, m70.faces, torch.as_tensor(raw70["full_lmk_faces_idx"][0, 68:]),
                       torch.as_tensor(raw70["full_lmk_bary_coords"][0, 68:], dtype=torch.float64))  # fmt: skip
    assert torch.allclose(iris, ref, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="no iris landmarks"):
        m68.iris_landmarks(verts)


@needs(IMAVATAR)
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(full_lmk_faces_idx=d["full_lmk_faces_idx"][:, :68]), r"'full_lmk_faces_idx' has shape \(1, 68\), expected \(70\)"),
        (lambda d: d.update(full_lmk_bary_coords=d["full_lmk_bary_coords"][:, :69]), r"'full_lmk_bary_coords' has shape \(1, 69, 3\), expected \(70, 3\)"),
        (lambda d: d.update(static_lmk_bary_coords=d["static_lmk_bary_coords"][:52]), r"'static_lmk_bary_coords' has shape \(52, 3\), expected \(53, 3\)"),
        (lambda d: d.update(static_lmk_faces_idx=d["static_lmk_faces_idx"][:52]), r"'static_lmk_faces_idx' has shape \(52,\), expected \(51\).*or \(53\)"),
        (lambda d: d.update(dynamic_lmk_faces_idx=d["dynamic_lmk_faces_idx"][:78]), r"'dynamic_lmk_faces_idx' has shape \(78, 17\)"),
    ],
)  # fmt: skip
def test_malformed_70_point_embedding_is_refused(tmp_path, change, message):
    data = dict(safe_load_npy_dict(IMAVATAR))
    change(data)
    path = tmp_path / "landmark_embedding_with_eyes.npy"
    np.save(path, np.array(data, dtype=object), allow_pickle=True)  # writing only; loading is the safe reader
    with pytest.raises(FlameFileError, match=message) as err:
        load_landmark_embedding(path, num_faces=FLAME_FACES)
    one_line(err, path)


@needs(IMAVATAR)
def test_70_point_embedding_face_ids_are_checked(tmp_path):
    data = dict(safe_load_npy_dict(IMAVATAR))
    path = tmp_path / "landmark_embedding_with_eyes.npy"
    np.save(path, np.array(data, dtype=object), allow_pickle=True)
    with pytest.raises(FlameFileError, match="indexes face 8905 of a 5000-face mesh") as err:
        load_landmark_embedding(path, num_faces=5000)
    one_line(err, path)


# --------------------------------------------------------------------------- INSTA region lists

INSTA_SIZES = {
    "boundary": 114, "eye_region": 751, "face": 1787, "forehead": 133, "left_ear": 588, "left_eye_region": 287,
    "left_eyeball": 546, "lips": 318, "neck": 253, "nose": 379, "right_ear": 588, "right_eye_region": 287,
    "right_eyeball": 546, "scalp": 489,
}  # fmt: skip


@needs(INSTA)
def test_insta_region_lists_load():
    masks = load_region_masks(INSTA, num_vertices=FLAME_VERTICES)
    assert {k: len(v) for k, v in masks.items()} == INSTA_SIZES
    assert "smplx_flame" not in masks
    assert all(v.dtype == np.int64 and v.ndim == 1 for v in masks.values())
    assert (masks["left_eyeball"].min(), masks["left_eyeball"].max()) == (3931, 4476)
    assert (masks["right_eyeball"].min(), masks["right_eyeball"].max()) == (4477, 5022)
    assert (masks["face"].min(), masks["face"].max()) == (16, 3928)
    assert (masks["lips"].min(), masks["lips"].max()) == (1572, 3928)
    single = load_region_masks(INSTA / "lips.txt", num_vertices=FLAME_VERTICES)
    assert list(single) == ["lips"] and np.array_equal(single["lips"], masks["lips"])


@needs(INSTA)
def test_smplx_map_is_not_a_region():
    path = INSTA / "smplx_flame.txt"
    assert len(path.read_text().split()) == FLAME_VERTICES  # one SMPL-X id per FLAME vertex
    with pytest.raises(FlameFileError, match="not a region list") as err:
        load_region_masks(path)
    one_line(err, path)


@needs(INSTA)
def test_insta_ids_are_checked_against_the_mesh():
    with pytest.raises(FlameFileError, match="region 'right_eyeball' indexes vertex 5022 of a 5000-vertex mesh") as err:
        load_region_masks(INSTA, num_vertices=5000)
    one_line(err, INSTA / "right_eyeball.txt")


@needs(INSTA)
def test_flame_model_from_file_takes_the_insta_folder(tmp_path):
    arrays = random_flame_arrays()
    path = tmp_path / "generic_model.pkl"
    model = {
        "v_template": arrays.v_template, "f": arrays.faces, "weights": arrays.weights, "posedirs": arrays.posedirs,
        "shapedirs": arrays.shapedirs, "J_regressor": arrays.J_regressor,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "num_shape_components": 1,
    }  # fmt: skip
    path.write_bytes(pickle.dumps(model, protocol=2))
    flame = FlameModel.from_file(path, masks_path=INSTA, num_shape=1, num_expression=1)
    assert set(flame.region_masks) == set(INSTA_SIZES) and len(flame.region_masks["face"]) == 1787
    if IMAVATAR.exists():
        flame = FlameModel.from_file(path, landmark_path=IMAVATAR, masks_path=INSTA, num_shape=1, num_expression=1)
        assert flame.has_iris and flame().landmarks.shape == (1, 68, 3)


# --------------------------------------------------------------------------- synthetic (run everywhere)


@pytest.mark.parametrize(
    "body, message",
    [
        ("1\n2\n5023\n", "region 'face' indexes vertex 5023 of a 5023-vertex mesh"),
        ("1\n-2\n", "region 'face' indexes vertex -2 of a 5023-vertex mesh"),
        ("1\nabc\n3\n", r"line 2 is not an integer vertex id \('abc'\)"),
        ("1\n2.5\n", r"line 2 is not an integer vertex id \('2.5'\)"),
        ("\n\n", "holds no vertex ids"),
    ],
)
def test_bad_region_list_is_named(tmp_path, body, message):
    folder = tmp_path / "flame_masks"
    folder.mkdir()
    (folder / "lips.txt").write_text("10\n11\n")
    (folder / "face.txt").write_text(body)
    for target in (folder, folder / "face.txt"):
        with pytest.raises(FlameFileError, match=message) as err:
            load_region_masks(target, num_vertices=FLAME_VERTICES)
        one_line(err, folder / "face.txt")


def test_region_folder_skips_smplx_map_and_needs_lists(tmp_path):
    folder = tmp_path / "flame_masks"
    folder.mkdir()
    with pytest.raises(FlameFileError, match="holds no region lists") as err:
        load_region_masks(folder)
    one_line(err, folder)
    (folder / "smplx_flame.txt").write_text("\n".join(str(10000 + i) for i in range(20)) + "\n")
    with pytest.raises(FlameFileError, match="holds no region lists"):
        load_region_masks(folder, num_vertices=20)
    (folder / "nose.txt").write_text("3\n4\n  5  \n\n")
    masks = load_region_masks(folder, num_vertices=20)
    assert list(masks) == ["nose"] and masks["nose"].tolist() == [3, 4, 5] and masks["nose"].dtype == np.int64


def synthetic_70(procedural) -> dict:
    """The procedural 68-point embedding with 2 iris points appended, laid out as IMavatar's file."""
    lm = {k: np.asarray(v) for k, v in procedural.landmarks.items()}
    iris_f = lm["static_lmk_faces_idx"][:2][::-1].copy()
    iris_b = np.array([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    lm["static_lmk_faces_idx"] = np.concatenate([lm["static_lmk_faces_idx"], iris_f])
    lm["static_lmk_bary_coords"] = np.concatenate([lm["static_lmk_bary_coords"], iris_b])
    lm["full_lmk_faces_idx"] = np.concatenate([lm["full_lmk_faces_idx"].reshape(1, -1), iris_f[None]], 1)
    lm["full_lmk_bary_coords"] = np.concatenate([lm["full_lmk_bary_coords"].reshape(1, -1, 3), iris_b[None]], 1)
    return lm


def test_synthetic_70_point_embedding(tmp_path, procedural, flame_path):
    lm = synthetic_70(procedural)
    path = tmp_path / "landmark_embedding_with_eyes.npy"
    np.save(path, np.array(lm, dtype=object), allow_pickle=True)
    emb = load_landmark_embedding(path)
    assert emb.has_iris and emb.static_faces.shape == (51,) and emb.full_faces.shape == (68,)
    assert np.array_equal(emb.iris_faces, lm["static_lmk_faces_idx"][51:])
    assert np.allclose(emb.iris_bary, lm["static_lmk_bary_coords"][51:])
    m68 = FlameModel.from_file(flame_path).double()
    m70 = FlameModel.from_file(flame_path, landmark_path=path).double()
    pose = torch.zeros(2, 15, dtype=torch.float64)
    pose[:, 1] = torch.tensor([0.3, -0.4], dtype=torch.float64)
    o68, o70 = m68(pose=pose), m70(pose=pose)
    assert torch.equal(o68.landmarks, o70.landmarks)
    assert torch.equal(m68.full_landmarks(o68.vertices), m70.full_landmarks(o70.vertices))
    assert m70.iris_landmarks(o70.vertices).shape == (2, 2, 3) and not m68.has_iris
    lm["full_lmk_faces_idx"] = lm["full_lmk_faces_idx"][:, :69]
    np.save(path, np.array(lm, dtype=object), allow_pickle=True)
    with pytest.raises(FlameFileError, match=r"'full_lmk_faces_idx' has shape \(1, 69\), expected \(70\)") as err:
        load_landmark_embedding(path)
    one_line(err, path)


def test_model_without_embedding_has_no_iris():
    flame = FlameModel(random_flame_arrays(), None, num_shape=1, num_expression=1)
    assert not flame.has_iris and not flame.has_landmarks
    with pytest.raises(ValueError, match="no landmark embedding"):
        flame.iris_landmarks(flame.v_template[None])
