"""Reading FLAME-format files: the model pickle, the landmark embedding, the region masks.

The licensed FLAME 2020/2023 files and headstudio's procedural FLAME-format model go
through the same functions. Every pickle goes through the allow-list unpickler of
:mod:`headstudio.flame.safe_pickle`. Errors are one line naming the file and the field.

Landmark embeddings come in two layouts, both read by :func:`load_landmark_embedding`:
DECA's ``landmark_embedding.npy`` (68 points: 51 static + 17 dynamic contour) and
IMavatar's ``landmark_embedding_with_eyes.npy`` (70 points: the same plus 2 iris points).
Region masks are either ``FLAME_masks.pkl`` or INSTA's ``flame_masks/`` folder of text
lists; :func:`load_region_masks` reads both.
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

FLAME_ENV = "HEADSTUDIO_FLAME"
"""Environment variable naming a FLAME ``generic_model.pkl``."""
FLAME_LICENCE_HINT = (
    "FLAME is licensed and cannot be bundled or downloaded by headstudio: register at "
    "https://flame.is.tue.mpg.de, download FLAME 2020 or 2023, and pass --flame-path "
    "/path/to/generic_model.pkl or set HEADSTUDIO_FLAME; or make headstudio's procedural "
    "FLAME-format model with `hs-synth flame-model OUT.pkl`"
)

NUM_STATIC = NUM_LANDMARKS - NUM_CONTOUR
"""Static (inner-face) landmarks of the iBUG-68 layout: 51."""
NUM_IRIS = 2
"""Iris points that IMavatar's 70-point embedding appends after the 51 static ones."""

NON_REGION_TEXT_FILES = frozenset({"smplx_flame.txt"})
"""Text files in INSTA's ``flame_masks/`` folder that are not region vertex lists."""

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
    expression_names: tuple[str, ...] = ()  # names of the expression components, where the file has them

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_expression_total(self) -> int:
        return self.shapedirs.shape[2] - self.num_shape_total


@dataclass
class LandmarkEmbedding:
    """DECA-style landmark embedding: faces and barycentric coordinates, iBUG-68 order.

    Rows of the 68 landmarks: 0..16 the jaw contour (taken from the dynamic table, one
    79-row table per contour point, chosen by head yaw), 17..67 the 51 static inner points
    (brows, nose, eyes, mouth) = ``static_*``. ``full_*`` is a fixed (non-dynamic) embedding
    of all 68 in the same order; in DECA's file ``full[17:] == static``.

    IMavatar's 70-point file (``landmark_embedding_with_eyes.npy``) stores 53 static points,
    the 51 above and then 2 iris points, and a full table of 70 (the 68, then the same
    2 iris points). IMavatar's tracked ``flame_keypoints`` follow that order: 17 contour +
    51 static + 2 iris. Here the iris points are split off into ``iris_*`` so that the
    static and full tables are always the 51 / 68 of the iBUG layout; ``iris_*`` are
    ``None`` for a 68-point file.
    """

    static_faces: np.ndarray  # (51,) int
    static_bary: np.ndarray  # (51, 3)
    dynamic_faces: np.ndarray  # (79, 17) int
    dynamic_bary: np.ndarray  # (79, 17, 3)
    full_faces: np.ndarray  # (68,) int
    full_bary: np.ndarray  # (68, 3)
    iris_faces: Optional[np.ndarray] = None  # (2,) int: rows 51..52 of a 53-row static table
    iris_bary: Optional[np.ndarray] = None  # (2, 3)

    @property
    def has_iris(self) -> bool:
        return self.iris_faces is not None

    @property
    def num_points(self) -> int:
        """68, or 70 with the iris points (the length of the source file's full table)."""
        return NUM_LANDMARKS + (NUM_IRIS if self.has_iris else 0)


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
        expression_names=_names(data.get("expression_names"), path),
    )


def _names(value: Any, path: Path) -> tuple[str, ...]:
    """``expression_names`` (headstudio's procedural model writes it; official FLAME has none)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise FlameFileError(f"{path}: field 'expression_names' must be a list of strings")
    return tuple(value)


def load_landmark_embedding(path: os.PathLike | str, num_faces: Optional[int] = None) -> LandmarkEmbedding:
    """Load a DECA-style landmark embedding (an np.save'd dict).

    Two layouts are accepted, told apart by the length of ``static_lmk_faces_idx``:

    - 51: DECA's ``landmark_embedding.npy`` (full table of 68);
    - 53: IMavatar's ``landmark_embedding_with_eyes.npy``, 51 + 2 iris points last (full
      table of 70, the 68 then the 2 iris points). The iris points are read from the
      static table (rows 51, 52), which is what DECA/IMavatar's FLAME layer uses to fit
      the 70 tracked keypoints, and returned as ``iris_faces`` / ``iris_bary``.

    The ``full_*`` fields may be stored ``(1, N)`` / ``(1, N, 3)`` (as both files do).
    Anything else is a :class:`FlameFileError` naming the file and the field.
    """
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
                bad = arr.min() if arr.min() < 0 else arr.max()
                raise FlameFileError(f"{path}: field '{key}' indexes face {bad} of a {num_faces}-face mesh")
        else:
            arr = arr.astype(np.float64)
        if (
            None not in shape
            and arr.shape != shape
            and arr.ndim == len(shape) + 1
            and arr.shape[0] == 1
            and arr.shape[1:] == shape
        ):
            arr = arr[0]  # full_* is stored (1, 68) / (1, 70) in DECA's and IMavatar's files
        _expect_shape(arr, shape, key, path)
        return arr

    static_faces = get("static_lmk_faces_idx", (None,), True)
    num_static = static_faces.shape[0]
    if num_static not in (NUM_STATIC, NUM_STATIC + NUM_IRIS):
        raise FlameFileError(
            f"{path}: field 'static_lmk_faces_idx' has shape {tuple(static_faces.shape)}, expected ({NUM_STATIC}) "
            f"for a 68-point (DECA) or ({NUM_STATIC + NUM_IRIS}) for a 70-point (IMavatar, with iris) embedding"
        )
    with_iris = num_static == NUM_STATIC + NUM_IRIS
    num_full = NUM_LANDMARKS + (NUM_IRIS if with_iris else 0)
    static_bary = get("static_lmk_bary_coords", (num_static, 3), False)
    full_faces = get("full_lmk_faces_idx", (num_full,), True)
    full_bary = get("full_lmk_bary_coords", (num_full, 3), False)
    return LandmarkEmbedding(
        static_faces=static_faces[:NUM_STATIC],
        static_bary=static_bary[:NUM_STATIC],
        dynamic_faces=get("dynamic_lmk_faces_idx", (NUM_DYNAMIC_BINS, NUM_CONTOUR), True),
        dynamic_bary=get("dynamic_lmk_bary_coords", (NUM_DYNAMIC_BINS, NUM_CONTOUR, 3), False),
        full_faces=full_faces[:NUM_LANDMARKS],
        full_bary=full_bary[:NUM_LANDMARKS],
        iris_faces=static_faces[NUM_STATIC:] if with_iris else None,
        iris_bary=static_bary[NUM_STATIC:] if with_iris else None,
    )


def _check_region(ids: np.ndarray, name: str, path: Path, num_vertices: Optional[int]) -> np.ndarray:
    if num_vertices is not None and ids.size and (ids.min() < 0 or ids.max() >= num_vertices):
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise FlameFileError(f"{path}: region '{name}' indexes vertex {bad} of a {num_vertices}-vertex mesh")
    if ids.size and ids.min() < 0:
        raise FlameFileError(f"{path}: region '{name}' holds a negative vertex id {ids.min()}")
    return ids.astype(np.int64)


def _load_region_text(path: Path, num_vertices: Optional[int]) -> np.ndarray:
    """One INSTA region list: one integer vertex id per line (blank lines ignored)."""
    name = path.stem
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise FlameFileError(f"{path}: cannot read region list ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise FlameFileError(f"{path}: region list is not plain ASCII text") from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item = line.strip()
        if not item:
            continue
        try:
            ids.append(int(item, 10))
        except ValueError:
            shown = item if len(item) <= 40 else item[:37] + "..."
            raise FlameFileError(f"{path}: line {lineno} is not an integer vertex id ({shown!r})") from None
    if not ids:
        raise FlameFileError(f"{path}: region list '{name}' holds no vertex ids")
    return _check_region(np.asarray(ids, dtype=np.int64), name, path, num_vertices)


def load_region_masks(path: os.PathLike | str, num_vertices: Optional[int] = None) -> dict[str, np.ndarray]:
    """Load FLAME region masks: region name -> int64 vertex ids.

    ``path`` is one of:

    - ``FLAME_masks.pkl`` (a pickled dict, read through the allow-list unpickler);
    - a folder of INSTA-style text lists (``flame_masks/face.txt``, ``lips.txt``, ...), one
      vertex id per line, the region named after the file's stem; regions come in the
      order of their file names;
    - a single such ``.txt`` list (a one-region dict).

    In a folder, ``smplx_flame.txt`` is skipped: INSTA ships it next to the region lists,
    but it is not a region, it has one line per FLAME vertex (5023) giving the matching
    SMPL-X vertex id (values up to 10474), so read as a region it would either fail the
    vertex-id check or silently select most of the head. Passing it as a single file is
    an error for the same reason. With ``num_vertices`` every id is checked against the
    mesh; errors are one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        lists = sorted(p for p in path.glob("*.txt") if p.is_file() and p.name not in NON_REGION_TEXT_FILES)
        if not lists:
            raise FlameFileError(f"{path}: folder holds no region lists (*.txt, one vertex id per line)")
        return {p.stem: _load_region_text(p, num_vertices) for p in lists}
    path = _require_file(path, "region mask file")
    if path.suffix.lower() == ".txt":
        if path.name in NON_REGION_TEXT_FILES:
            raise FlameFileError(f"{path}: not a region list (INSTA's FLAME -> SMPL-X vertex map)")
        return {path.stem: _load_region_text(path, num_vertices)}
    data = safe_load_pickle(path)
    if not isinstance(data, Mapping):
        raise FlameFileError(f"{path}: expected a dict of region name -> vertex ids, got {type(data).__name__}")
    masks = {}
    for name, ids in data.items():
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise FlameFileError(f"{path}: region '{name}' must be a 1-D integer array of vertex ids")
        masks[str(name)] = _check_region(arr, str(name), path, num_vertices)
    return masks


def sibling(model_path: os.PathLike | str, filename: str) -> Path:
    """Path of a companion file (landmarks, masks) next to a model file."""
    return Path(model_path).with_name(filename)


def resolve_flame_path(flame_path: Optional[Path], subject_root: Path) -> Path:
    """``--flame-path``, else ``$HEADSTUDIO_FLAME``, else the model inside the subject (``flame/``; for
    IMavatar's nested ``<subject>/<subject>`` also the outer folder's)."""
    if flame_path is not None:
        if not Path(flame_path).exists():
            raise FlameFileError(f"{flame_path}: --flame-path does not exist. {FLAME_LICENCE_HINT}")
        return Path(flame_path)
    env = os.environ.get(FLAME_ENV)
    if env:
        if not Path(env).exists():
            raise FlameFileError(f"{env}: ${FLAME_ENV} points to a missing file. {FLAME_LICENCE_HINT}")
        return Path(env)
    subject_root = Path(subject_root)
    candidates = [subject_root / "flame" / MODEL_FILENAME]
    if subject_root.parent.name == subject_root.name:
        candidates.append(subject_root.parent / "flame" / MODEL_FILENAME)
    for inside in candidates:
        if inside.exists():
            return inside
    raise FlameFileError(f"{subject_root}: no FLAME model found (no --flame-path, no ${FLAME_ENV}, no flame/{MODEL_FILENAME} in the subject). {FLAME_LICENCE_HINT}")
