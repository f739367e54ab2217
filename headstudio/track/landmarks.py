"""Face landmarks for hs-track: mediapipe's 478-point face mesh, mapped to the 68 iBUG points and the irises.

mediapipe (``mediapipe==0.10.9``, the ``track`` extra) ships its face-mesh and iris models inside the
wheel, so nothing is downloaded. Its legacy ``solutions.face_mesh`` with ``refine_landmarks=True`` gives
478 points: 468 of the face mesh and 10 of the irises (468 and 473 are the iris centres of the subject's
right and left eye).

The iBUG-68 table (:data:`MEDIAPIPE_TO_IBUG68`) is ours. Eyes, nose, brows and lips take the face-mesh
vertices at those features (the eye corners and lids of mediapipe's eye contours, its lip contours, the
nose ridge and nostril base), checked against the ground-truth landmarks of an ``hs-synth subject``
(seed 0, 20 frames at 512 px): per point the nearest mesh vertex, kept symmetric. The 17 contour points
are spaced along mediapipe's face oval from ear to chin; they are the least reliable (10-20 px from the
synthetic ground truth, whose contour is FLAME's), and the fit weights them down
(:class:`~headstudio.track.fit.LandmarkFitConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

MEDIAPIPE_TO_IBUG68 = (
    # 0-16 contour, subject's right ear -> chin -> left ear (along the face oval)
    234, 93, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 323, 454,
    # 17-21 right brow (outer -> inner), 22-26 left brow (inner -> outer)
    70, 53, 105, 66, 55, 285, 296, 334, 283, 300,
    # 27-30 nose ridge (nasion -> tip), 31-35 nostril base (right -> left)
    6, 195, 5, 1, 98, 97, 2, 326, 327,
    # 36-41 right eye, 42-47 left eye (from the outer / inner corner, upper lid first)
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # 48-59 outer lips (right corner, upper lip, left corner, lower lip), 60-67 inner lips
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 81, 13, 311, 308, 402, 14, 178,
)  # fmt: skip
"""mediapipe face-mesh index of each iBUG-68 landmark (0-based iBUG order)."""

IRIS_CENTRES = (468, 473)
"""mediapipe's iris centres: the subject's right eye, then the left (the order of IMavatar's 70-point files)."""


@dataclass
class FaceLandmarks:
    """One frame's detection (pixels, x right, y down; our convention: pixel centres at +0.5)."""

    ibug68: np.ndarray
    """(68, 2)"""
    iris: np.ndarray
    """(2, 2)"""
    mesh: np.ndarray
    """(478, 2) every mediapipe point."""
    faces_found: int
    """How many faces the detector saw (the largest is kept)."""


def to_ibug68(mesh_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(68, 2) iBUG landmarks and (2, 2) iris centres from mediapipe's (478, 2) points."""
    if mesh_px.shape[0] < 478:
        raise ValueError(f"need mediapipe's 478 points (refine_landmarks=True), got {mesh_px.shape[0]}")
    return mesh_px[list(MEDIAPIPE_TO_IBUG68)], mesh_px[list(IRIS_CENTRES)]


class MediapipeDetector:
    """mediapipe's face mesh over the frames of one clip (video mode: it tracks between frames)."""

    def __init__(self, max_faces: int = 3, static: bool = False, min_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "hs-track needs mediapipe 0.10.9: pip install -e '.[track]' && pip install --no-deps mediapipe==0.10.9"
            ) from exc
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=max_faces, refine_landmarks=True,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence,
        )  # fmt: skip

    def __call__(self, rgb: np.ndarray) -> Optional[FaceLandmarks]:
        """Landmarks of the largest face in an RGB uint8 image, or None without a face."""
        h, w = rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = result.multi_face_landmarks or []
        if not faces:
            return None
        meshes = [np.array([[p.x * w, p.y * h] for p in face.landmark]) for face in faces]
        areas = [np.prod(m.max(0) - m.min(0)) for m in meshes]
        mesh = meshes[int(np.argmax(areas))]
        ibug, iris = to_ibug68(mesh)
        return FaceLandmarks(ibug68=ibug, iris=iris, mesh=mesh, faces_found=len(faces))

    def close(self) -> None:
        self._mesh.close()
