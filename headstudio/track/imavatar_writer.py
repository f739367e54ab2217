"""hs-track's output: the IMavatar layout as IMavatar's DECA-based preprocessing writes it (the entries come
from :mod:`headstudio.data.formats.imavatar`, whose reader and the synthetic subjects' writer share them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from headstudio.data.formats.imavatar import imavatar_frame, imavatar_intrinsics
from headstudio.track.fit import LandmarkFit


def write_sequence(
    folder: Path,
    indices: list[int],
    images: list[np.ndarray],
    masks: list[tuple[np.ndarray, np.ndarray]],
    fit: LandmarkFit,
    detected: list[Optional[np.ndarray]],
    size: int,
) -> None:
    """One sequence folder: ``flame_params.json``, ``image/<k>.png`` and ``mask/<k>.png`` (k from 1), and
    ``face_mask/<k>.png`` (ours: the face region). ``flame_keypoints`` are the fitted FLAME landmarks,
    projected (as DECA's optimize.py stores them); ``bbox`` is the detected landmarks' extent."""
    for sub in ("image", "mask", "face_mask"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    frames = []
    for k, i in enumerate(indices, start=1):
        cv2.imwrite(str(folder / "image" / f"{k}.png"), images[i][:, :, ::-1])
        fg, face = masks[i]
        cv2.imwrite(str(folder / "mask" / f"{k}.png"), fg.astype(np.uint8) * 255)
        cv2.imwrite(str(folder / "face_mask" / f"{k}.png"), face.astype(np.uint8) * 255)
        w2c = np.concatenate([np.eye(3), fit.translation[i].double().numpy()[:, None]], axis=1)  # OpenGL, world units
        points = fit.landmarks_px[i].double().numpy()
        if fit.iris_px is not None:
            points = np.concatenate([points, fit.iris_px[i].double().numpy()])
        box = detected[i] if detected[i] is not None else points
        frames.append(imavatar_frame(str(k), w2c, fit.expression[i].numpy(), fit.pose[i].numpy(), points, box, (size, size)))
    c = size / 2  # the principal point: the crop's centre
    doc = {
        "shape_params": np.round(fit.shape.double().numpy(), 6).tolist(),
        "intrinsics": imavatar_intrinsics(fit.focal, fit.focal, c, c, (size, size)),
        "frames": frames,
    }
    (folder / "flame_params.json").write_text(json.dumps(doc))
