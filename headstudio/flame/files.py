"""Reading FLAME-format files: the model pickle, the landmark embedding, the region masks.

The licensed FLAME 2020/2023 files and headstudio's procedural FLAME-format model go
through the same functions. Every pickle goes through the allow-list unpickler of
:mod:`headstudio.flame.safe_pickle`. Errors are one line naming the file and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from headstudio.flame.constants import (  # noqa: F401
    LANDMARK_FILENAME,
    MASKS_FILENAME,
    MODEL_FILENAME,
    NUM_CONTOUR,
    NUM_DYNAMIC_BINS,
    NUM_JOINTS,
    NUM_LANDMARKS,
    PARENTS,
)
from headstudio.flame.safe_pickle import FlameFileError, safe_load_npy_dict, safe_load_pickle

FLAME_LICENCE_HINT = (
    "FLAME is licensed and cannot be bundled or downloaded by headstudio: register at "
    "https://flame.is.tue.mpg.de, download FLAME 2020 or 2023, and pass --flame-path "
    "/path/to/generic_model.pkl or set HEADSTUDIO_FLAME; or make headstudio's procedural "
    "FLAME-format model with `hs-synth flame-model OUT.pkl`"
)



@dataclass
class FlameArrays:
    """The arrays of a FLAME-format model, densified, as numpy."""

    v_template: np.ndarray  # (V, 3) float
    faces: np.ndarray  # (F, 3) int64
    weights: np.ndarray  # (V, J) float
    posedirs: np.ndarray  # (V, 3, 9*(J-1)) float
    shapedirs: np.ndarray  # (V, 3, S+E) float; first `num_shape_total` are identity
    J_regressor: np.ndarray  # (J, V) float, dense
    parents: tuple[int, ...]
    num_shape_total: int  # identity components in shapedirs (300 in official FLAME)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_expression_total(self) -> int:
        return self.shapedirs.shape[2] - self.num_shape_total


@dataclass
class LandmarkEmbedding:
    """DECA-style 68-landmark embedding: faces and barycentric coordinates."""

    static_faces: np.ndarray  # (51,) int
    static_bary: np.ndarray  # (51, 3)
    dynamic_faces: np.ndarray  # (79, 17) int
    dynamic_bary: np.ndarray  # (79, 17, 3)
    full_faces: np.ndarray  # (68,) int
    full_bary: np.ndarray  # (68, 3)


def _field(data: Mapping[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in data:
        raise FlameFileError(f"{path}: missing key '{key}'")
    value = data[key]
    if hasattr(value, "toarray"):  # scipy sparse
        value = value.toarray()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - defensive
        raise FlameFileError(f"{path}: field '{key}' is not an array ({exc})") from None
    if arr.dtype == object:
        raise FlameFileError(f"{path}: field '{key}' is not a numeric array (got {type(value).__name__})")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise FlameFileError(f"{path}: field '{key}' contains NaN or inf")
    return arr


def _expect_shape(arr: np.ndarray, shape: tuple, key: str, path: Path) -> None:
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise FlameFileError(f"{path}: field '{key}' has shape {tuple(arr.shape)}, expected {want}")


def _require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FlameFileError(f"{path}: {what} not found. {FLAME_LICENCE_HINT}")
    if not path.is_file():
        raise FlameFileError(f"{path}: {what} is not a file")
    return path


def load_flame_arrays(path: os.PathLike | str, num_shape_total: Optional[int] = None) -> FlameArrays:
    """Load and validate a FLAME-format ``generic_model.pkl``.

    ``num_shape_total`` is the number of identity components at the front of
    ``shapedirs``; by default 300 (official FLAME) unless the file says otherwise in the
    key ``num_shape_components`` (headstudio's procedural model writes it).
    """
    path = _require_file(Path(path), "FLAME model file")
    data = safe_load_pickle(path)
    if not isinstance(data, Mapping):
        raise FlameFileError(f"{path}: expected a dict of FLAME arrays, got {type(data).__name__}")
    v_template = _field(data, "v_template", path).astype(np.float64)
    _expect_shape(v_template, (None, 3), "v_template", path)
    num_verts = v_template.shape[0]
    faces = _field(data, "f", path)
    _expect_shape(faces, (None, 3), "f", path)
    if faces.dtype.kind not in "iu":
        raise FlameFileError(f"{path}: field 'f' must hold integer vertex ids, got {faces.dtype}")
    faces = faces.astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= num_verts):
        raise FlameFileError(f"{path}: field 'f' indexes vertex {faces.max()} but v_template has {num_verts}")
    kintree = _field(data, "kintree_table", path)
    _expect_shape(kintree, (2, None), "kintree_table", path)
    num_joints = kintree.shape[1]
    parents = tuple(int(p) if i > 0 else -1 for i, p in enumerate(kintree[0].astype(np.int64)))
    if any(not (0 <= p < i) for i, p in enumerate(parents) if i > 0):
        raise FlameFileError(f"{path}: field 'kintree_table' is not a tree with parents before children")
    weights = _field(data, "weights", path).astype(np.float64)
    _expect_shape(weights, (num_verts, num_joints), "weights", path)
    posedirs = _field(data, "posedirs", path).astype(np.float64)
    _expect_shape(posedirs, (num_verts, 3, 9 * (num_joints - 1)), "posedirs", path)
    shapedirs = _field(data, "shapedirs", path).astype(np.float64)
    _expect_shape(shapedirs, (num_verts, 3, None), "shapedirs", path)
    regressor = _field(data, "J_regressor", path).astype(np.float64)
    _expect_shape(regressor, (num_joints, num_verts), "J_regressor", path)
    if num_shape_total is None:
        num_shape_total = int(data.get("num_shape_components", min(300, shapedirs.shape[2])))
    if not 0 < num_shape_total <= shapedirs.shape[2]:
        raise FlameFileError(f"{path}: num_shape_components={num_shape_total} exceeds shapedirs' {shapedirs.shape[2]}")
    return FlameArrays(
        v_template=v_template,
        faces=faces,
        weights=weights,
        posedirs=posedirs,
        shapedirs=shapedirs,
        J_regressor=regressor,
        parents=parents,
        num_shape_total=num_shape_total,
    )


def load_landmark_embedding(path: os.PathLike | str, num_faces: Optional[int] = None) -> LandmarkEmbedding:
    """Load a DECA-style ``landmark_embedding.npy`` (an np.save'd dict)."""
    path = _require_file(Path(path), "landmark embedding")
    data = safe_load_npy_dict(path)
    if not isinstance(data, Mapping):
        raise FlameFileError(f"{path}: expected a dict with DECA landmark keys, got {type(data).__name__}")

    def get(key: str, shape: tuple, integer: bool) -> np.ndarray:
        arr = _field(data, key, path)
        if integer:
            if arr.dtype.kind not in "iu":
                raise FlameFileError(f"{path}: field '{key}' must hold integer face ids, got {arr.dtype}")
            arr = arr.astype(np.int64)
            if num_faces is not None and arr.size and (arr.min() < 0 or arr.max() >= num_faces):
                raise FlameFileError(f"{path}: field '{key}' indexes face {arr.max()} of a {num_faces}-face mesh")
        else:
            arr = arr.astype(np.float64)
        if arr.shape != shape and arr.reshape(-1).shape[0] == int(np.prod(shape)) and arr.shape[0] == 1:
            arr = arr.reshape(shape)  # full_* is stored (1, 68) in DECA's file
        _expect_shape(arr, shape, key, path)
        return arr

    return LandmarkEmbedding(
        static_faces=get("static_lmk_faces_idx", (51,), True),
        static_bary=get("static_lmk_bary_coords", (51, 3), False),
        dynamic_faces=get("dynamic_lmk_faces_idx", (NUM_DYNAMIC_BINS, NUM_CONTOUR), True),
        dynamic_bary=get("dynamic_lmk_bary_coords", (NUM_DYNAMIC_BINS, NUM_CONTOUR, 3), False),
        full_faces=get("full_lmk_faces_idx", (NUM_LANDMARKS,), True),
        full_bary=get("full_lmk_bary_coords", (NUM_LANDMARKS, 3), False),
    )


def load_region_masks(path: os.PathLike | str, num_vertices: Optional[int] = None) -> dict[str, np.ndarray]:
    """Load ``FLAME_masks.pkl``: region name -> vertex ids."""
    path = _require_file(Path(path), "region mask file")
    data = safe_load_pickle(path)
    if not isinstance(data, Mapping):
        raise FlameFileError(f"{path}: expected a dict of region name -> vertex ids, got {type(data).__name__}")
    masks = {}
    for name, ids in data.items():
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise FlameFileError(f"{path}: region '{name}' must be a 1-D integer array of vertex ids")
        if num_vertices is not None and arr.size and (arr.min() < 0 or arr.max() >= num_vertices):
            raise FlameFileError(f"{path}: region '{name}' indexes vertex {arr.max()} of a {num_vertices}-vertex mesh")
        masks[str(name)] = arr.astype(np.int64)
    return masks


def sibling(model_path: os.PathLike | str, filename: str) -> Path:
    """Path of a companion file (landmarks, masks) next to a model file."""
    return Path(model_path).with_name(filename)
