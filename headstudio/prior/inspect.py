"""Looking at a trained prior: posed meshes by marching cubes, and codes fitted to a held-out scan.

Fitting follows the auto-decoder's test time (Park et al. 2019, as NPHM and MonoNPHM do): the
networks are frozen and only a new identity's geometry and appearance codes and the scan's
expression code are optimised, with the training losses on the scan's samples (no anchor or
correspondence supervision, which a new scan would not have). The result is judged by the
surface metrics of :mod:`headstudio.metrics.surface` between the marched mesh and the scan.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from headstudio.export.density_mesh import density_grid, mesh_from_grid
from headstudio.metrics.surface import SurfaceDistance, surface_distance
from headstudio.ops.mesh import sample_surface
from headstudio.prior.losses import LossWeights, prior_losses
from headstudio.prior.model import NPHMPrior

DEFAULT_BOX = ((-0.6, -0.95, -0.65), (0.6, 0.75, 0.7))
"""World-unit box around a head with its neck (the synthetic scan sets' box)."""


def posed_mesh(
    model: NPHMPrior,
    codes: dict[str, Tensor],
    resolution: int = 128,
    box: tuple = DEFAULT_BOX,
    progress: Optional[Callable[[int], None]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of the posed zero level set (world units)."""
    aabb = torch.tensor(box, dtype=torch.float32)
    one = {k: v[:1] for k, v in codes.items()}

    def sdf(points: Tensor) -> Tensor:
        with torch.no_grad():
            return -model.posed(points[None], one, colour=False)["sdf"][0]  # inside positive for the mesher

    values = density_grid(sdf, aabb, resolution, chunk=1 << 14, progress=progress)
    return mesh_from_grid(values, aabb, 0.0)


@contextmanager
def frozen_networks(model: NPHMPrior) -> Iterator[None]:
    """The prior's trainable parameters frozen for a code fit, and trainable again afterwards."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


@dataclass
class FitResult:
    codes: dict[str, Tensor]
    distance: SurfaceDistance
    losses: dict[str, float]


def fit_scan(
    model: NPHMPrior,
    scan: dict[str, np.ndarray],
    steps: int = 300,
    lr: float = 5e-3,
    points: int = 2000,
    resolution: int = 128,
    box: tuple = DEFAULT_BOX,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> FitResult:
    """Fit identity, appearance and expression codes to one scan with frozen networks; measure the mesh."""
    dim, e_dim = model.field.code_dim, model.sizes.deformation.expression_code
    codes = {k: torch.zeros(1, d, requires_grad=True) for k, d in (("geo", dim), ("app", dim), ("exp", e_dim))}
    opt = torch.optim.Adam(codes.values(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    arrays = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in scan.items() if v.ndim == 2 and v.shape[1] == 3}
    weights = LossWeights(anchors=0.0, correspondence=0.0)  # a new scan has neither
    last = {}
    with frozen_networks(model):
        for step in range(steps):
            batch = {"anchors": torch.zeros(1, model.field.num_anchors, 3)}  # unused: the anchor weight is 0
            for prefix, n in (("surface", points), ("near", points // 2)):
                keys = [k for k in arrays if k.startswith(prefix)]
                rows = torch.randint(0, arrays[keys[0]].shape[1], (n,), generator=gen)
                batch.update({k: arrays[k][:, rows] for k in keys})
            losses = prior_losses(model, batch, weights, with_correspondences=False, codes=codes)
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            last = {k: float(v.detach()) for k, v in losses.items()}
            if progress is not None:
                progress(step + 1, steps)
    fitted = {k: v.detach() for k, v in codes.items()}
    verts, faces = posed_mesh(model, fitted, resolution, box)
    n = len(scan["surface_points"])
    _, _, pts, nrm = sample_surface(torch.as_tensor(verts, dtype=torch.float64), torch.as_tensor(faces.astype(np.int64)), n, gen)
    dist = surface_distance(pts.numpy(), nrm.numpy(), scan["surface_points"], scan["surface_normals"], threshold=0.01)
    return FitResult(fitted, dist, last)


def fit_sequence_codes(
    model: NPHMPrior,
    surfaces: list[tuple[Tensor, Tensor]],
    steps: int = 300,
    lr: float = 5e-3,
    points: int = 2000,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, Tensor]:
    """Codes of a sequence fitted in 3-D to its surfaces with frozen networks: one ``z_geo`` (and
    ``z_app``) shared by all, one ``z_exp`` per surface, as tracking optimises them.

    ``surfaces``: per frame, surface points and outward normals (world units). Geometry only: the
    level-set, normal and eikonal terms and the code priors of the training losses (colour,
    anchors and correspondences weigh 0). This is what the prior can represent of a sequence, the
    ceiling of a photometric tracker that uses it. Returns codes with ``len(surfaces)`` rows."""
    n = len(surfaces)
    dim, e_dim = model.field.code_dim, model.sizes.deformation.expression_code
    geo = torch.zeros(1, dim, requires_grad=True)
    exp = torch.zeros(n, e_dim, requires_grad=True)
    app = torch.zeros(1, dim)
    opt = torch.optim.Adam([geo, exp], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    weights = LossWeights(anchors=0.0, correspondence=0.0, colour=0.0)
    pts = [torch.as_tensor(p, dtype=torch.float32) for p, _ in surfaces]
    nrm = [torch.as_tensor(q, dtype=torch.float32) for _, q in surfaces]
    with frozen_networks(model):
        for step in range(steps):
            rows = [torch.randint(0, len(p), (points,), generator=gen) for p in pts]
            surf = torch.stack([p[r] for p, r in zip(pts, rows)])
            near_rows = [torch.randint(0, len(p), (points // 2,), generator=gen) for p in pts]
            near = torch.stack([p[r] for p, r in zip(pts, near_rows)])
            near = near + 0.01 * torch.randn(near.shape, generator=gen)  # eikonal points about the surface
            batch = {
                "surface_points": surf,
                "surface_normals": torch.stack([q[r] for q, r in zip(nrm, rows)]),
                "near_points": near,
                "surface_colors": torch.zeros_like(surf),
                "near_colors": torch.zeros_like(near),
                "anchors": torch.zeros(n, model.field.num_anchors, 3),
            }
            codes = {"geo": geo.expand(n, -1), "app": app.expand(n, -1), "exp": exp}
            losses = prior_losses(model, batch, weights, with_correspondences=False, codes=codes)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            if progress is not None:
                progress(step + 1, steps)
    return {"geo": geo.detach().expand(n, -1), "app": app.expand(n, -1), "exp": exp.detach()}
