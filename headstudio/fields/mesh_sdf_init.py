"""Start an SDF network from a mesh instead of a sphere (ours; an option of imavatar-surface).

IMavatar (Zheng et al. 2022) starts its geometry as a sphere (geometric initialisation) that the
mask loss shrinks onto the head over many GPU epochs. On a CPU budget of a few hundred
iterations the sphere is still a blob; starting from the subject's canonical FLAME mesh gives the
short runs a head to refine.

The target is the signed distance to the mesh's outer surface: area samples of what a scanner sees
of it (``headstudio.data.scans.observed_surface_samples``: no eyeball backs or closed mouth
interior, which would put pockets of "outside" inside the head), the distance to the nearest
sample, signed by that sample's outward normal (:func:`surface_signed_distance`). It is computed
once for a pool of points, half near the surface and half uniform in the box;
:func:`fit_sdf_to_surface` regresses the network onto it.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from headstudio.ops.nearest import NearestVertex


def surface_signed_distance(
    points: Float[Tensor, "N 3"], samples: Float[Tensor, "S 3"], normals: Float[Tensor, "S 3"]
) -> Float[Tensor, "N"]:
    """Distance to the nearest surface sample (the project's nearest-vertex search), negative where the
    point lies behind that sample's outward normal (inside)."""
    idx, dist = NearestVertex()(points, torch.zeros(points.shape[0], dtype=torch.long, device=points.device), samples[None])
    side = ((points - samples[idx]) * normals[idx]).sum(-1)
    return torch.where(side < 0, -dist, dist).to(points.dtype)


def fit_sdf_to_surface(
    sdf_fn: Callable[[Tensor], Tensor],
    parameters,
    samples: Float[Tensor, "S 3"],
    normals: Float[Tensor, "S 3"],
    lo: Float[Tensor, "3"],
    hi: Float[Tensor, "3"],
    steps: int = 300,
    batch: int = 4096,
    lr: float = 1e-3,
    pool: int = 65536,
    seed: int = 0,
) -> list[float]:
    """Fit ``sdf_fn`` (points -> signed distances) to the surface's signed distance by L1 over ``steps`` Adam
    steps of ``batch`` points drawn from a pool of ``pool``: half the surface samples moved by noise of
    1 % and 5 % of the surface's size, half uniform in the box ``lo``..``hi``. Returns the losses."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    size = float((samples.amax(0) - samples.amin(0)).norm())
    half = pool // 2
    idx = torch.randint(0, samples.shape[0], (half,), generator=gen).to(samples.device)
    scale = torch.where(torch.arange(half) % 2 == 0, 0.01, 0.05)[:, None] * size
    near = samples[idx] + (torch.randn(half, 3, generator=gen) * scale).to(samples)
    uniform = lo.to(samples) + (hi - lo).to(samples) * torch.rand(pool - half, 3, generator=gen).to(samples)
    points = torch.cat([near, uniform])
    with torch.no_grad():
        target = surface_signed_distance(points, samples, normals)
    opt = torch.optim.Adam(parameters, lr=lr)
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, pool, (batch,), generator=gen).to(samples.device)
        loss = (sdf_fn(points[pick]) - target[pick]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
