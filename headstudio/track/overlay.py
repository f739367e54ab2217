"""hs-track's overlay video: the fitted FLAME mesh, shaded and half transparent, over each crop, with the
detected (green) and fitted (red) iBUG landmarks."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from headstudio.data.raster import interpolate, rasterize
from headstudio.ops.mesh import vertex_normals
from headstudio.track.fit import opencv_camera


def mesh_overlay(
    rgb: np.ndarray, vertices_gl: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"], focal: float,
    detected: np.ndarray, fitted: np.ndarray, principal: Optional[tuple[float, float]] = None, alpha: float = 0.4,
) -> np.ndarray:  # fmt: skip
    """One overlay frame. ``vertices_gl``: the posed mesh in the camera's OpenGL frame (camera at the origin
    looking along -z; ``focal`` and ``principal`` in pixels, the principal point by default at the image
    centre); ``detected`` / ``fitted``: (N, 2) pixels (NaN rows are skipped)."""
    h, w = rgb.shape[:2]
    pts, K = opencv_camera(vertices_gl, focal, principal if principal is not None else (w / 2, h / 2))
    frags = rasterize(pts, faces, K, h, w)
    normals = interpolate(vertex_normals(pts, faces), faces, frags)
    shade = (0.25 + 0.75 * normals[..., 2].abs()).clamp(0, 1).numpy()
    img = rgb.astype(np.float32)
    cover = frags.mask.numpy()
    tint = np.array([150.0, 190.0, 255.0]) * shade[..., None]
    img[cover] = (1 - alpha) * img[cover] + alpha * tint[cover]
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    for points, colour in ((detected, (0, 200, 0)), (fitted, (230, 30, 30))):
        for x, y in points:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(img, (int(round(x)), int(round(y))), 2, colour, -1, lineType=cv2.LINE_AA)
    return img
