"""hs-track's optional photometric refinement: the colour under each face vertex should not change over the clip.

After the landmark fit, every face-region vertex is projected into every frame and the (blurred) crop is
sampled there, bilinearly, so the samples are differentiable in the vertex positions. The loss is the L1
distance of each sample to the vertex's reference colour, its mean over the frames in which it is seen
(recomputed as the fit moves, without gradient). Landmarks place the mesh where the detector thinks the
features are; this term moves it to where the pixels agree from frame to frame, which corrects errors
that change over the clip (expression- and pose-dependent detector errors). A constant offset of the
detector stays: texture constancy cannot see it. Visibility: the vertex's face is the one the rasterizer
sees at its pixel (or a neighbour of it), the surface faces the camera, and the pixel is in the frame's
face region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headstudio.data.raster import rasterize
from headstudio.ops.mesh import vertex_normals
from headstudio.track.fit import opencv_camera


@dataclass
class PhotometricTarget:
    """The frames the photometric term compares, at a reduced size."""

    images: Float[Tensor, "T 3 h w"]
    """Crops in [0, 1], resized (and blurred) for the term."""
    regions: Bool[Tensor, "T h w"]
    """Each frame's face region at that size."""
    crop_size: int
    """Pixels of the crop the fit's coordinates are in (the images are ``h / crop_size`` of it)."""

    @classmethod
    def from_crops(cls, crops: list[np.ndarray], regions: list[np.ndarray], crop_size: int, size: int = 256,
                   blur_px: float = 1.0) -> "PhotometricTarget":  # fmt: skip
        """From uint8 RGB crops and bool face-region masks of ``crop_size`` px."""
        import cv2

        imgs, masks = [], []
        for rgb, region in zip(crops, regions):
            small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA) if rgb.shape[0] != size else rgb
            if blur_px > 0:
                small = cv2.GaussianBlur(small, (0, 0), blur_px)
            imgs.append(torch.from_numpy(np.ascontiguousarray(small)))
            masks.append(torch.from_numpy(cv2.resize(region.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0))
        images = torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0
        return cls(images=images, regions=torch.stack(masks), crop_size=crop_size)


def vertex_faces(faces: Int[Tensor, "F 3"], num_vertices: int) -> tuple[Int[Tensor, "V"], Float[Tensor, "V 3"]]:
    """One face holding each vertex and the barycentric coordinates that pick the vertex in it (vertices in no
    face get face 0 and are never used)."""
    face_of = torch.zeros(num_vertices, dtype=torch.long)
    corner = torch.zeros(num_vertices, dtype=torch.long)
    for k in range(3):
        face_of[faces[:, k]] = torch.arange(len(faces))
        corner[faces[:, k]] = k
    return face_of, F.one_hot(corner, 3).float()


def sample_colours(
    images: Float[Tensor, "T 3 h w"], points_px: Float[Tensor, "T N 2"], crop_size: int
) -> Float[Tensor, "T N 3"]:
    """Bilinear samples of each frame at crop pixels (centres at +0.5), differentiable in the points."""
    grid = (points_px / crop_size * 2.0 - 1.0)[:, None]  # T 1 N 2, align_corners=False: -1 is the left edge
    out = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].permute(0, 2, 1)


def visible_vertices(
    verts_gl: Float[Tensor, "T V 3"], faces: Int[Tensor, "F 3"], focal: float, crop_size: int,
    target: PhotometricTarget, candidates: Int[Tensor, "N"], principal: Optional[tuple[float, float]] = None,
    min_facing: float = 0.3,
) -> Bool[Tensor, "T N"]:  # fmt: skip
    """Which candidate vertices each frame sees (see the module docstring); ``verts_gl`` in the camera's
    OpenGL frame (camera at the origin looking along -z), ``focal`` and ``principal`` in crop pixels
    (default principal point: the crop's centre)."""
    t_count, _, h, w = target.images.shape
    principal = principal if principal is not None else (crop_size / 2, crop_size / 2)
    seen = torch.zeros(t_count, len(candidates), dtype=torch.bool)
    for t in range(t_count):
        pts, K = opencv_camera(verts_gl[t], focal, principal, scale=h / crop_size)
        frags = rasterize(pts, faces, K, h, w)
        normals = vertex_normals(pts, faces)[candidates]
        p = pts[candidates]
        facing = (normals * (-p / p.norm(dim=-1, keepdim=True))).sum(-1) > min_facing
        uv = p @ K.T
        col = (uv[:, 0] / uv[:, 2]).floor().long().clamp(0, w - 1)
        row = (uv[:, 1] / uv[:, 2]).floor().long().clamp(0, h - 1)
        depth = frags.depth[row, col]
        front = (frags.face_id[row, col] >= 0) & (p[:, 2] <= depth + 0.01 * depth.clamp_min(1e-6))
        seen[t] = facing & front & target.regions[t, row, col]
    return seen


def reference_colours(samples: Float[Tensor, "T N 3"], seen: Bool[Tensor, "T N"]) -> Float[Tensor, "N 3"]:
    """Each vertex's mean colour over the frames that see it."""
    w = seen.to(samples.dtype)[..., None]
    return (samples * w).sum(0) / w.sum(0).clamp_min(1.0)


def photometric_loss(
    samples: Float[Tensor, "T N 3"], reference: Float[Tensor, "N 3"], seen: Bool[Tensor, "T N"]
) -> Tensor:
    """Mean L1 colour difference over the seen (frame, vertex) pairs."""
    diff = (samples - reference[None]).abs().sum(-1)
    w = seen.to(samples.dtype)
    return (diff * w).sum() / w.sum().clamp_min(1.0)
