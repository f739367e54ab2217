"""Geometry metrics of the papers: normal angle error in the face region and keypoint error.

Methods that render no normals of their own (the volumetric ones) are measured on the normals of
their rendered depth (:func:`depth_normals`), so every method gets a normal error from one function.

Ground-truth normal maps exist for synthetic subjects (``hs-synth``): ``gt/<sequence>/normal/
<stem>.png``, 16-bit, ``(n + 1) / 2`` in OpenCV camera coordinates, 0 on the background; test
frames also have ``gt/<sequence>/mesh/<stem>.ply`` (:func:`gt_mesh_path`; measured against a
reconstruction by :func:`headstudio.metrics.depth_geometry.mesh_geometry`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

OPENCV_FROM_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


def gt_file(image: Path, kind: str, suffix: str = ".png") -> Optional[Path]:
    """``gt/<sequence>/<kind>/<stem><suffix>`` of a subject's image, if the subject has one.

    The sequence is the folder on the image's path below the subject that ``gt/`` has
    (``<seq>/image/`` in IMavatar's nested layout, ``<split>/`` in NerFace's, ...).
    """
    image = Path(image)
    for root in image.parents:
        if (root / "gt").is_dir():
            for part in image.relative_to(root).parts[:-1]:
                candidate = root / "gt" / part / kind / f"{image.stem}{suffix}"
                if candidate.exists():
                    return candidate
            return None
    return None


def gt_normal_path(image: Path) -> Optional[Path]:
    """``gt/<sequence>/normal/<stem>.png`` of a subject's image, if the subject has one."""
    return gt_file(image, "normal")


def gt_mesh_path(image: Path) -> Optional[Path]:
    """``gt/<sequence>/mesh/<stem>.ply`` (synthetic test frames; the synthetic world: camera fixed, head posed)."""
    return gt_file(image, "mesh", ".ply")


def load_gt_normal(path: Path, height: int, width: int) -> Float[Tensor, "H W 3"]:
    """Unit normals (OpenCV camera coordinates) resized to the image, zero where there is none."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 3:
        raise ValueError(f"{path}: not a 3-channel normal map")
    raw = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    if raw.shape[:2] != (height, width):
        raw = cv2.resize(raw, (width, height), interpolation=cv2.INTER_NEAREST)
    valid = raw.astype(np.int64).sum(-1) > 0
    n = raw.astype(np.float32) / 65535.0 * 2.0 - 1.0
    n[~valid] = 0.0
    return torch.from_numpy(n)


def camera_normals_to_world(normals: Float[Tensor, "H W 3"], c2w: Float[Tensor, "3 4"]) -> Float[Tensor, "H W 3"]:
    """OpenCV camera-space normals to world space with a nerfstudio (OpenGL) camera-to-world."""
    rot = c2w[:3, :3].to(normals) @ OPENCV_FROM_OPENGL.to(normals)
    return normals @ rot.T


def normal_angle_error(
    pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"], region: Bool[Tensor, "H W"]
) -> float:
    """Mean angle in degrees between normals over ``region`` (where both exist); NaN if empty."""
    valid = region & (gt.norm(dim=-1) > 0.5) & (pred.norm(dim=-1) > 0.5)
    if not valid.any():
        return float("nan")
    cos = (torch.nn.functional.normalize(pred[valid], dim=-1) * torch.nn.functional.normalize(gt[valid], dim=-1)).sum(-1)
    return float(torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))).mean())


def project(points: Float[Tensor, "N 3"], c2w: Float[Tensor, "3 4"], fx, fy, cx, cy) -> Float[Tensor, "N 2"]:
    """Pixel coordinates of world points in a nerfstudio (OpenGL) pinhole camera."""
    rot, t = c2w[:3, :3].to(points), c2w[:3, 3].to(points)
    cam = (points - t) @ rot  # world -> camera: R^T (p - t)
    depth = (-cam[:, 2]).clamp_min(1e-6)
    return torch.stack([cx + fx * cam[:, 0] / depth, cy - fy * cam[:, 1] / depth], dim=-1)


def depth_normals(
    origins: Float[Tensor, "H W 3"],
    directions: Float[Tensor, "H W 3"],
    depth: Float[Tensor, "H W 1"],
    valid: Bool[Tensor, "H W"],
    max_jump: float = 0.05,
) -> Float[Tensor, "H W 3"]:
    """World normals of a rendered depth map (distance along unit ray directions), facing the camera.

    Central differences of the back-projected points; zero where a pixel or one of its four
    neighbours is not ``valid`` or the depth jumps by more than ``max_jump`` (relative) between
    neighbours (silhouettes)."""
    points = origins + directions * depth
    d = depth[..., 0]
    ok = valid.clone()
    ok[0, :] = ok[-1, :] = ok[:, 0] = ok[:, -1] = False
    inner = ok[1:-1, 1:-1]
    for a, b in ((d[1:-1, 2:], d[1:-1, :-2]), (d[2:, 1:-1], d[:-2, 1:-1])):
        inner &= (a - b).abs() <= max_jump * d[1:-1, 1:-1].abs().clamp_min(1e-6)
    for v in (valid[1:-1, 2:], valid[1:-1, :-2], valid[2:, 1:-1], valid[:-2, 1:-1]):
        inner &= v
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    n = torch.nn.functional.normalize(torch.cross(du, dv, dim=-1), dim=-1)
    flip = (n * directions[1:-1, 1:-1]).sum(-1, keepdim=True) > 0  # face the camera
    n = torch.where(flip, -n, n)
    out = torch.zeros_like(points)
    out[1:-1, 1:-1] = torch.where(inner[..., None], n, torch.zeros_like(n))
    return out


def rendered_depth_normal_error(outputs: dict, batch: dict) -> Optional[float]:
    """Normal angle error (degrees, face region) of the normals of a rendered depth map, or None where the
    batch has no ground-truth normals or camera (``batch`` as ``HeadPipeline.eval_inputs`` makes it)."""
    if "gt_normal_world" not in batch or "camera" not in batch or "depth" not in outputs:
        return None
    depth = outputs["depth"]
    camera = batch["camera"].to(depth.device)
    rays = camera.generate_rays(camera_indices=0, keep_shape=True)
    hit = outputs["accumulation"][..., 0] > 0.5 if "accumulation" in outputs else torch.ones_like(depth[..., 0], dtype=torch.bool)
    normals = depth_normals(rays.origins, rays.directions, depth, hit)
    region = batch["face_mask"][..., 0].to(depth.device).bool() & hit if "face_mask" in batch else hit
    return normal_angle_error(normals, batch["gt_normal_world"].to(depth.device), region)
