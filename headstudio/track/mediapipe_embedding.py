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
gets a low weight; with the detector-bias model (below) the weight measures instead what that model
leaves unexplained of the point's offsets on identities it was not fitted on. The embedding belongs to the model's topology, not to a subject: the shipped one
(``headstudio/flame/procedural/mediapipe_landmark_embedding.npz``, written by
``python -m headstudio.track.calibrate``) was made from identities the benches do not use.

**Detector bias.** mediapipe's points do not stay on one surface point: as the head turns, the jaw opens
or the face moves, each drifts in the image in a way that repeats across identities (the calibration's
residuals are, in large part, a linear function of the pose and expression). An embedding calibrated
with the bias model (the default of ``calibrate``) therefore carries ``bias_coefficients`` (F, K, 2): the image-plane offset (FLAME units at the head, x right,
y down) of each detected point from its embedded point, linear in :func:`bias_features` of the frame's
head rotation, jaw and first ``bias_num_expression`` expression coefficients. The fit adds the offset to
its predicted points (:func:`detector_offsets`), so the mesh is fitted to where mediapipe *would* put the
points, not to the points themselves. The shipped embedding carries one (calibrated on seeds 101-172);
FLAME's own file has no such fields, and its offset is zero. bench/track.py measures the fit with and
without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

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
    bias: Optional[np.ndarray] = None
    """(F, K, 2) the detector-bias model's coefficients (see the module docstring), or None."""
    bias_num_expression: int = 0
    """Expression coefficients among the bias features."""
    bias_feature_set: int = 2
    """Which :func:`bias_features` the coefficients belong to (files written before set 2 have 1)."""

    def __len__(self) -> int:
        return len(self.indices)


BIAS_FEATURE_SETS = (1, 2)
"""Versions of :func:`bias_features` (an embedding's ``bias_feature_set`` field; 1 where absent)."""


def num_bias_features(num_expression: int, feature_set: int = 2) -> int:
    """Length of :func:`bias_features`' rows."""
    return 1 + 3 + 3 + num_expression + 4 + (13 if feature_set >= 2 else 0)


def bias_features(
    pose: Float[Tensor, "T 15"], expression: Float[Tensor, "T E"], num_expression: int, feature_set: int = 2
) -> Float[Tensor, "T F"]:
    """Per frame: 1; the head's rotation (global, then neck) as sin(angle) x axis (smooth at zero, unlike the
    axis-angle); the jaw's axis-angle; the first ``num_expression`` expression coefficients; and pitch^2,
    yaw^2, pitch x yaw and |yaw| (smoothed), for the points that slide towards the silhouette. Feature set 2
    (the default since the 72-identity calibration) adds the third-order pose terms pitch^3, yaw^3,
    pitch^2 yaw, pitch yaw^2, the signed squares pitch |pitch| and yaw |yaw|, roll^2, roll x pitch,
    roll x yaw, and the jaw's opening squared and times pitch, yaw and |yaw|: mediapipe's drift grows
    faster than linearly as the head pitches down or turns (on the calibration's renders, leave one
    identity out, they take the residual's root mean square from 3.00 to 2.90 px)."""
    from headstudio.flame.lbs import axis_angle_to_matrix

    if feature_set not in BIAS_FEATURE_SETS:
        raise ValueError(f"bias feature set {feature_set} is not one of {BIAS_FEATURE_SETS}")
    rot = axis_angle_to_matrix(pose[:, 0:3]) @ axis_angle_to_matrix(pose[:, 3:6])
    r = torch.stack([rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0], rot[:, 1, 0] - rot[:, 0, 1]], -1) / 2
    pitch, yaw, roll = r[:, 0], r[:, 1], r[:, 2]
    abs_yaw = torch.sqrt(yaw**2 + 1e-4)
    terms = [pitch**2, yaw**2, pitch * yaw, abs_yaw]
    if feature_set >= 2:
        jaw = pose[:, 6]
        abs_pitch = torch.sqrt(pitch**2 + 1e-4)
        terms += [pitch**3, yaw**3, pitch**2 * yaw, pitch * yaw**2, pitch * abs_pitch, yaw * abs_yaw,
                  roll**2, roll * pitch, roll * yaw, jaw**2, jaw * pitch, jaw * yaw, jaw * abs_yaw]  # fmt: skip
    ones = torch.ones_like(pitch)[:, None]
    return torch.cat([ones, r, pose[:, 6:9], expression[:, :num_expression], torch.stack(terms, -1)], -1)


def detector_offsets(
    coefficients: Float[Tensor, "F K 2"], features: Float[Tensor, "T F"]
) -> Float[Tensor, "T K 2"]:
    """The bias model's image-plane offsets (FLAME units at the head, x right, y down)."""
    return torch.einsum("tf,fkc->tkc", features, coefficients)


def fit_detector_bias(
    residuals: Float[np.ndarray, "T K 2"], features: Float[np.ndarray, "T F"], ridge: float = 1.0
) -> np.ndarray:
    """(F, K, 2) ridge least squares of per-point residuals (NaN: not seen) on the features; the constant
    feature is not shrunk."""
    t, k, _ = residuals.shape
    penalty = ridge * np.eye(features.shape[1])
    penalty[0, 0] = 0.0
    out = np.zeros((features.shape[1], k, 2))
    seen = np.isfinite(residuals).all(-1)  # T K
    for pattern in np.unique(seen.T, axis=0):  # points seen in the same frames share one solve
        cols = np.nonzero((seen.T == pattern).all(1))[0]
        if pattern.sum() == 0:
            continue
        x = features[pattern]
        y = residuals[pattern][:, cols].reshape(int(pattern.sum()), -1)
        out[:, cols] = np.linalg.solve(x.T @ x + penalty, x.T @ y).reshape(-1, len(cols), 2)
    return out


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
    bias, num_expression, feature_set = None, 0, 2
    if "bias_coefficients" in data:
        bias = np.asarray(data["bias_coefficients"], dtype=np.float64)
        if "bias_num_expression" not in data:
            raise FlameFileError(f"{path}: field 'bias_num_expression' is missing (bias_coefficients needs it)")
        num_expression = int(np.asarray(data["bias_num_expression"]).reshape(()))
        feature_set = int(np.asarray(data.get("bias_feature_set", 1)).reshape(()))
        if feature_set not in BIAS_FEATURE_SETS:
            raise FlameFileError(f"{path}: field 'bias_feature_set' is {feature_set}; this version reads {BIAS_FEATURE_SETS}")
        want = (num_bias_features(num_expression, feature_set), k, 2)
        if bias.shape != want or not np.isfinite(bias).all():
            raise FlameFileError(f"{path}: field 'bias_coefficients' must be finite with shape {want}, got {bias.shape}")
    return MediapipeEmbedding(indices, faces, bary, np.clip(weights, 0.0, 1.0), bias, num_expression, feature_set)


def save_mediapipe_embedding(embedding: MediapipeEmbedding, path: os.PathLike | str) -> None:
    """Write the npz atomically (temporary name, then rename)."""
    from headstudio.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            extra = {}
            if embedding.bias is not None:
                extra = dict(bias_coefficients=embedding.bias.astype(np.float64),
                             bias_num_expression=np.int64(embedding.bias_num_expression),
                             bias_feature_set=np.int64(embedding.bias_feature_set))  # fmt: skip
            np.savez(fh, landmark_indices=embedding.indices.astype(np.int64), lmk_face_idx=embedding.faces.astype(np.int64),
                     lmk_b_coords=embedding.bary.astype(np.float64), weights=embedding.weights.astype(np.float64),
                     **extra)  # fmt: skip

