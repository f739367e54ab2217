"""Meshes from a density field by marching cubes (shared by the volumetric methods)."""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np
import torch
from jaxtyping import Float
from skimage.measure import marching_cubes
from torch import Tensor


@torch.no_grad()
def density_grid(
    density_fn: Callable[[Float[Tensor, "N 3"]], Float[Tensor, "N 1"]],
    aabb: Float[Tensor, "2 3"],
    resolution: int,
    chunk: int = 1 << 16,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Sample ``density_fn`` on a ``resolution``^3 lattice spanning ``aabb`` (corners included)."""
    lo, hi = aabb[0].float(), aabb[1].float()
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution, device=aabb.device) for i in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    out = []
    for start in range(0, grid.shape[0], chunk):
        out.append(density_fn(grid[start : start + chunk]).reshape(-1).float().cpu())
        if progress is not None:
            progress(min(chunk, grid.shape[0] - start))
    return torch.cat(out).reshape(resolution, resolution, resolution).numpy()


def mesh_from_grid(values: np.ndarray, aabb: Float[Tensor, "2 3"], level: float) -> Tuple[np.ndarray, np.ndarray]:
    """Marching cubes at ``level`` in world coordinates; faces wind outward (high values inside)."""
    if not (values.min() < level < values.max()):
        raise ValueError(
            f"the field never crosses level {level:g} (range {values.min():.3g}..{values.max():.3g}); "
            "choose another --level or train longer"
        )
    lo = aabb[0].cpu().numpy().astype(np.float64)
    hi = aabb[1].cpu().numpy().astype(np.float64)
    spacing = (hi - lo) / (np.array(values.shape) - 1)
    verts, faces, _, _ = marching_cubes(values, level=level, spacing=tuple(spacing))
    return (verts + lo).astype(np.float32), faces[:, ::-1].astype(np.int32)
