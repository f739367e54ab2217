"""Small triangle-mesh helpers shared by the engine."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def vertex_normals(verts: Float[Tensor, "*batch V 3"], faces: Int[Tensor, "F 3"]) -> Float[Tensor, "*batch V 3"]:
    """Area-weighted unit vertex normals (counter-clockwise faces point outward)."""
    tri = verts[..., faces, :]  # *batch F 3 3
    n = torch.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :], dim=-1)
    vn = torch.zeros_like(verts)
    for k in range(3):
        vn.index_add_(-2, faces[:, k], n)
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sample_surface(
    verts: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"], count: int, generator: torch.Generator | None = None
) -> tuple[Int[Tensor, "N"], Float[Tensor, "N 3"], Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
    """Points uniform by area on a triangle mesh.

    Returns the face of each sample, its barycentric coordinates (so the same samples can be
    placed on another mesh of the same topology), its position and the unit face normal
    (counter-clockwise faces point outward).
    """
    tri = verts[faces]  # F 3 3
    cross = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    area = cross.norm(dim=-1)
    face = torch.multinomial(area / area.sum(), count, replacement=True, generator=generator)
    u, v = torch.rand(2, count, dtype=verts.dtype, device=verts.device, generator=generator)
    flip = u + v > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    bary = torch.stack([1 - u - v, u, v], -1)
    points = (tri[face] * bary[..., None]).sum(-2)
    normals = cross[face] / area[face, None].clamp_min(1e-20)
    return face, bary, points, normals
