"""hs-track's output: the IMavatar layout as IMavatar's DECA-based preprocessing writes it (the entries come
from :mod:`headstudio.data.formats.imavatar`, whose reader and the synthetic subjects' writer share them).

The frames are written as they are cropped (:func:`write_frame_files`, so a long clip is never held in
memory) and the tracking once the fit is done (:func:`write_flame_params`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from headstudio.data.formats.imavatar import imavatar_frame, imavatar_intrinsics
from headstudio.track.fit import LandmarkFit


def write_frame_files(folder: Path, k: int, image: np.ndarray, foreground: np.ndarray, face: np.ndarray) -> None:
    """Frame ``k`` (from 1) of a sequence folder: ``image/<k>.png``, ``mask/<k>.png`` and ``face_mask/<k>.png``
    (ours: the face region)."""
    for sub, array in (("image", image[:, :, ::-1]), ("mask", foreground.astype(np.uint8) * 255),
                       ("face_mask", face.astype(np.uint8) * 255)):  # fmt: skip
        (folder / sub).mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(folder / sub / f"{k}.png"), array):
            raise OSError(f"{folder / sub / f'{k}.png'}: could not be written")


def write_flame_params(
    folder: Path, indices: list[int], fit: LandmarkFit, detected: list[Optional[np.ndarray]], size: int
) -> None:
    """``flame_params.json`` of a sequence folder holding clip frames ``indices`` (as ``1..len``).
    ``flame_keypoints`` are the fitted FLAME landmarks, projected (as DECA's optimize.py stores them);
    ``bbox`` is the detected landmarks' extent."""
    frames = []
    for k, i in enumerate(indices, start=1):
        w2c = np.concatenate([np.eye(3), fit.translation[i].double().numpy()[:, None]], axis=1)  # OpenGL, world units
        points = fit.landmarks_px[i].double().numpy()
        if fit.iris_px is not None:
            points = np.concatenate([points, fit.iris_px[i].double().numpy()])
        box = detected[i] if detected[i] is not None else points
        frames.append(imavatar_frame(str(k), w2c, fit.expression[i].numpy(), fit.pose[i].numpy(), points, box, (size, size)))
    cx, cy = fit.principal  # the source frame's centre, in the crop
    doc = {
        "shape_params": np.round(fit.shape.double().numpy(), 6).tolist(),
        "intrinsics": imavatar_intrinsics(fit.focal, fit.focal, cx, cy, (size, size)),
        "frames": frames,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flame_params.json").write_text(json.dumps(doc))
