"""hs-track's output: the IMavatar layout as IMavatar's DECA-based preprocessing writes it (see
:mod:`headstudio.data.formats.imavatar` for the conventions this reader and that writer share)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from headstudio.track.fit import LandmarkFit

HALF = 0.5
"""Our pixel centres are at +0.5; IMavatar's keypoints and principal point are at integer centres."""


def _r(a, nd: int = 6) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def write_sequence(
    folder: Path,
    indices: list[int],
    images: list[np.ndarray],
    masks: list[np.ndarray],
    fit: LandmarkFit,
    detected: list[Optional[np.ndarray]],
    size: int,
) -> None:
    """One sequence folder: ``flame_params.json``, ``image/<k>.png`` and ``mask/<k>.png`` (k from 1), and
    ``face_mask/<k>.png`` (ours: the face region)."""
    for sub in ("image", "mask", "face_mask"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    frames = []
    f = fit.focal
    for k, i in enumerate(indices, start=1):
        cv2.imwrite(str(folder / "image" / f"{k}.png"), images[i][:, :, ::-1])
        fg, face = masks[i]
        cv2.imwrite(str(folder / "mask" / f"{k}.png"), fg.astype(np.uint8) * 255)
        cv2.imwrite(str(folder / "face_mask" / f"{k}.png"), face.astype(np.uint8) * 255)
        w2c = np.concatenate([np.eye(3), fit.translation[i].double().numpy()[:, None]], axis=1)  # OpenGL, world units
        points = fit.landmarks_px[i].double().numpy()
        if fit.iris_px is not None:
            points = np.concatenate([points, fit.iris_px[i].double().numpy()])
        keypoints = 2 * (points - HALF) / size - 1  # the projected FLAME landmarks, as DECA's optimize.py stores them
        box_src = detected[i] if detected[i] is not None else fit.landmarks_px[i].double().numpy()
        lo, hi = box_src[:68].min(0) - HALF, box_src[:68].max(0) - HALF
        frames.append(
            {
                "file_path": f"./image/{k}",
                "world_mat": _r(w2c),
                "expression": _r(fit.expression[i].double().numpy()),
                "pose": _r(fit.pose[i].double().numpy()),
                "bbox": _r(np.concatenate([2 * lo / size - 1, 2 * hi / size - 1])),
                "flame_keypoints": _r(keypoints),
            }
        )
    doc = {
        "shape_params": _r(fit.shape.double().numpy()),
        "intrinsics": _r([-f / size, f / size, (size / 2 - HALF) / size, (size / 2 - HALF) / size]),
        "frames": frames,
    }
    (folder / "flame_params.json").write_text(json.dumps(doc))
