"""Where mediapipe's face-mesh points lie on a FLAME-format mesh: a dense landmark embedding for hs-track.

The file is FLAME's ``mediapipe_landmark_embedding.npz`` layout (the one metrical-tracker reads beside
FLAME): ``landmark_indices`` (K,) mediapipe point ids, ``lmk_face_idx`` (K,) a mesh face per point and
``lmk_b_coords`` (K, 3) barycentric coordinates in it. Ours may also carry ``weights`` (K,), how firmly a
point sits on the surface (1 where absent).

FLAME's own embedding is for FLAME's mesh. For headstudio's procedural model we *calibrate* one
(:func:`calibrate`): render procedural subjects whose mesh is known, run mediapipe on the renders, read
which surface point lies under each detected point (the rasterizer's face and barycentric coordinates),
carry it to the neutral template and take its robust centre over all frames. A point that slides over
the surface as the face moves (the face oval at the silhouette, inner lips) has a wide spread there and
gets a low weight. The embedding belongs to the model's topology, not to a subject: the shipped one
(``headstudio/flame/procedural/mediapipe_landmark_embedding.npz``, written by
``python -m headstudio.track.calibrate``) was made from identities the benches do not use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstudio.flame.constants import MEDIAPIPE_EMBEDDING_FILENAME  # noqa: F401  (re-exported)
from headstudio.flame.files import FlameFileError

PROCEDURAL_EMBEDDING = Path(__file__).resolve().parents[1] / "flame" / "procedural" / MEDIAPIPE_EMBEDDING_FILENAME
"""The shipped embedding of headstudio's procedural model (any seed: they share the template's topology)."""


@dataclass
class MediapipeEmbedding:
    """Mesh points of mediapipe face-mesh landmarks."""

    indices: np.ndarray
    """(K,) mediapipe point ids (0..477)."""
    faces: np.ndarray
    """(K,) mesh face of each point."""
    bary: np.ndarray
    """(K, 3) barycentric coordinates in that face."""
    weights: np.ndarray
    """(K,) confidence of each point in (0, 1]."""

    def __len__(self) -> int:
        return len(self.indices)


def load_mediapipe_embedding(path: os.PathLike | str, num_faces: int | None = None) -> MediapipeEmbedding:
    """Read a ``mediapipe_landmark_embedding.npz``; a malformed file is a :class:`FlameFileError` naming the field."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as doc:
            data = {k: doc[k] for k in doc.files}
    except (OSError, ValueError) as exc:
        raise FlameFileError(f"{path}: not a readable .npz ({exc})") from None
    for key in ("landmark_indices", "lmk_face_idx", "lmk_b_coords"):
        if key not in data:
            raise FlameFileError(f"{path}: field '{key}' is missing (a mediapipe landmark embedding has "
                                 "landmark_indices, lmk_face_idx, lmk_b_coords)")  # fmt: skip
    indices = np.asarray(data["landmark_indices"]).reshape(-1).astype(np.int64)
    faces = np.asarray(data["lmk_face_idx"]).reshape(-1).astype(np.int64)
    bary = np.asarray(data["lmk_b_coords"], dtype=np.float64).reshape(-1, 3)
    weights = np.asarray(data.get("weights", np.ones(len(indices))), dtype=np.float64).reshape(-1)
    k = len(indices)
    for name, arr in (("lmk_face_idx", faces), ("lmk_b_coords", bary), ("weights", weights)):
        if len(arr) != k:
            raise FlameFileError(f"{path}: field '{name}' has {len(arr)} rows, landmark_indices has {k}")
    if k and (indices.min() < 0 or indices.max() > 477):
        raise FlameFileError(f"{path}: field 'landmark_indices' must hold mediapipe ids 0..477")
    if num_faces is not None and k and (faces.min() < 0 or faces.max() >= num_faces):
        raise FlameFileError(f"{path}: field 'lmk_face_idx' points past the model's {num_faces} faces")
    return MediapipeEmbedding(indices, faces, bary, np.clip(weights, 0.0, 1.0))


def save_mediapipe_embedding(embedding: MediapipeEmbedding, path: os.PathLike | str) -> None:
    """Write the npz atomically (temporary name, then rename)."""
    from headstudio.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, landmark_indices=embedding.indices.astype(np.int64), lmk_face_idx=embedding.faces.astype(np.int64),
                     lmk_b_coords=embedding.bary.astype(np.float64), weights=embedding.weights.astype(np.float64))  # fmt: skip

