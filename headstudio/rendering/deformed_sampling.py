"""Sampling a deformed radiance field along rays (shared by the volumetric methods).

The uniform pass of coarse-to-fine sampling only feeds the importance sampler: it runs
without autograd and evaluates the deformation on every ``stride``-th sample of a ray,
interpolating the offsets linearly in between (offsets vary slowly along a ray).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


@torch.no_grad()
def strided_offsets(
    positions: Float[Tensor, "R S 3"],
    ray_row: Int[Tensor, "R"],
    offset_fn: Callable[[Float[Tensor, "N 3"], Int[Tensor, "N"]], Float[Tensor, "N 3"]],
    stride: int,
) -> Float[Tensor, "R S 3"]:
    """Deformation offsets of all samples from ``offset_fn`` on every ``stride``-th one.

    ``offset_fn(points, row)`` deforms points whose ray has frame row ``row``; the first and
    last samples are always evaluated.
    """
    r, s, _ = positions.shape
    n_sparse = max(2, (s - 1) // max(1, stride) + 1)
    sparse = positions
    if n_sparse < s:
        sparse = F.interpolate(positions.permute(0, 2, 1), size=n_sparse, mode="linear", align_corners=True)
        sparse = sparse.permute(0, 2, 1)
    point_row = ray_row[:, None].expand(-1, sparse.shape[1]).reshape(-1)
    off = offset_fn(sparse.reshape(-1, 3), point_row).reshape(r, -1, 3)
    if n_sparse < s:
        off = F.interpolate(off.permute(0, 2, 1), size=s, mode="linear", align_corners=True).permute(0, 2, 1)
    return off
