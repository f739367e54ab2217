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
