"""hs-track's masks: the person in front (head, hair, neck) and the face region.

The foreground is mediapipe's selfie segmentation (its model is in the wheel) joined with the filled
face-mesh hull, so the face itself is never cut out by a segmentation miss; the face region is the
hull of mediapipe's face oval.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
    149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
"""mediapipe face-mesh indices of the face's outline (forehead, temples, jaw), in order around it."""


def hull_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: the filled convex hull of pixel points."""
    mask = np.zeros(shape, dtype=np.uint8)
    hull = cv2.convexHull(np.round(points).astype(np.int32).reshape(-1, 1, 2))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def face_region(mesh_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: inside the face oval."""
    return hull_mask(mesh_px[list(FACE_OVAL)], shape)


class Foreground:
    """mediapipe's selfie segmentation, joined with the face hull."""

    def __init__(self, threshold: float = 0.5) -> None:
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self.threshold = threshold

    def __call__(self, rgb: np.ndarray, mesh_px: Optional[np.ndarray]) -> np.ndarray:
        """bool [H, W] of one frame (``mesh_px``: its 478 face-mesh points, or None)."""
        prob = self._seg.process(np.ascontiguousarray(rgb)).segmentation_mask
        mask = prob > self.threshold
        if mesh_px is not None:
            mask |= hull_mask(mesh_px, rgb.shape[:2])
        # the largest connected part: stray blobs of the background go
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        if count > 2:
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            mask = labels == largest
        return mask

    def close(self) -> None:
        self._seg.close()
