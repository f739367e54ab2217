"""Rendering a posed procedural head: colour, mask, depth, normals and labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headstudio.data.raster import interpolate, rasterize
from headstudio.data.synth.texture import Look, shade_material
from headstudio.flame import procedural as P
from headstudio.ops.mesh import vertex_normals


@dataclass
class PinholeCamera:
    """OpenCV pinhole camera: x_cam = R x_world + t (x right, y down, z forward)."""

    K: np.ndarray  # (3, 3)
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)
    width: int
    height: int

    @classmethod
    def looking_at_origin(cls, size: int, focal: float, distance: float) -> "PinholeCamera":
        """A camera on the +z axis looking at the origin; ``focal`` in units of the image size."""
        K = np.array([[focal * size, 0, size / 2], [0, focal * size, size / 2], [0, 0, 1.0]])
        R = np.diag([1.0, -1.0, -1.0])
        t = -R @ np.array([0.0, 0.0, distance])
        return cls(K, R, t, size, size)

    def world_to_camera(self, pts: Tensor) -> Tensor:
        R = torch.as_tensor(self.R, dtype=pts.dtype)
        t = torch.as_tensor(self.t, dtype=pts.dtype)
        return pts @ R.T + t

    def project(self, pts: Tensor) -> Tensor:
        """World points to pixel coordinates (x right, y down; pixel centres at +0.5)."""
        cam = self.world_to_camera(pts)
        K = torch.as_tensor(self.K, dtype=pts.dtype)
        uv = cam @ K.T
        return uv[..., :2] / uv[..., 2:3]


@dataclass
class Frame:
    rgb: Float[Tensor, "H W 3"]
    mask: Bool[Tensor, "H W"]
    depth: Float[Tensor, "H W"]
    """Camera-space z (world units); 0 on background."""
    normal: Float[Tensor, "H W 3"]
    """Unit normals in OpenCV camera coordinates; 0 on background."""
    label: Int[Tensor, "H W"]
    face_id: Optional[Int[Tensor, "H W"]] = None
    """The visible mesh face per pixel (-1: background)."""
    bary: Optional[Float[Tensor, "H W 3"]] = None
    """Barycentric coordinates of the visible point in it."""


class HeadRenderer:
    """Shades the procedural head with a fixed light seen by one fixed camera."""

    light_dir_world = np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])
    ambient = 0.38
    diffuse = 0.72
    background = (1.0, 1.0, 1.0)

    def __init__(self, template: P.Template, look: Look, camera: PinholeCamera) -> None:
        self.template = template
        self.look = look
        self.camera = camera
        self.faces = torch.as_tensor(template.faces, dtype=torch.long)
        self.face_part = torch.as_tensor(template.face_part, dtype=torch.long)
        self.canon = torch.as_tensor(template.vertices, dtype=torch.float32)
        self.light_cam = torch.as_tensor(camera.R @ self.light_dir_world, dtype=torch.float32)
        self.spec_parts = torch.zeros(8, dtype=torch.float32)
        self.spec_parts[[P.EYE_L, P.EYE_R]] = 0.6
        self.spec_parts[[P.TEETH_UP, P.TEETH_LOW]] = 0.2

    def render(self, verts_world: Float[Tensor, "V 3"]) -> Frame:
        cam = self.camera
        pts = cam.world_to_camera(verts_world.float())
        frags = rasterize(pts, self.faces, torch.as_tensor(cam.K, dtype=torch.float32), cam.height, cam.width)
        mask = frags.face_id >= 0
        vn = vertex_normals(pts, self.faces)
        attrs = interpolate(torch.cat([vn, self.canon, pts], -1), self.faces, frags)
        fg = mask.nonzero(as_tuple=True)
        normal = attrs[..., :3][fg]
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        point = attrs[..., 6:9][fg]
        view = -point / point.norm(dim=-1, keepdim=True)
        facing = (normal * view).sum(-1, keepdim=True)
        normal = torch.where(facing < 0, -normal, normal)  # surfaces seen from behind (mouth, neck)
        part = self.face_part[frags.face_id[fg]]
        albedo, label = shade_material(attrs[..., 3:6][fg], part, self.look, self.template)
        lam = (normal @ self.light_cam).clamp_min(0.0)
        half = self.light_cam[None] + view
        half = half / half.norm(dim=-1, keepdim=True)
        spec = self.spec_parts[part] * (normal * half).sum(-1).clamp_min(0.0) ** 40
        color = albedo * (self.ambient + self.diffuse * lam)[:, None] + spec[:, None]
        rgb = torch.empty(cam.height, cam.width, 3).copy_(torch.tensor(self.background))
        rgb[fg] = color.clamp(0.0, 1.0)
        normal_map = torch.zeros(cam.height, cam.width, 3)
        normal_map[fg] = normal
        label_map = torch.zeros(cam.height, cam.width, dtype=torch.long)
        label_map[fg] = label
        return Frame(rgb=rgb, mask=mask, depth=frags.depth.where(mask, torch.zeros(())), normal=normal_map, label=label_map,
                     face_id=frags.face_id, bary=frags.bary)
