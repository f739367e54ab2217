"""The training losses of MonoNPHM's prior (Giebenhain et al. 2024, supp. B.3.2).

Weights default to the authors' public configuration (``scripts/configs/mononphm.yaml``) where it
states them; the paper gives the terms but not their weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from headstudio.prior.model import NPHMPrior


@dataclass
class LossWeights:
    level_set: float = 1.0
    """|F_geo(D_exp(x_p))| on surface points (eq. 16; public config surf_sdf 1.0)."""
    normals: float = 0.3
    """||grad - n|| on surface points (eq. 17; public config 0.3)."""
    eikonal: float = 0.15
    """| ||grad|| - 1 | on all points (eq. 18; public config 0.15)."""
    correspondence: float = 10.0
    """||D_exp(x_p) - x_c||_1 (eq. 19), first half of training. The public config weighs an MSE by 1000;
    this is the paper's L1 with a headstudio weight."""
    hyper: float = 0.05
    """||omega|| (eq. 20; public config 0.05)."""
    deformation: float = 0.0025
    """||D_exp(x_p) - x_p|| on surface points (eq. 21; public config loss_reg_zero 0.0025)."""
    code_geo: float = 0.01
    """Squared norm of z_geo (public config reg_shape 0.01)."""
    code_exp: float = 0.05
    """Squared norm of z_exp (public config reg_expr 0.05)."""
    code_app: float = 0.005
    """Squared norm of z_app (public config reg_app 0.005)."""
    symmetry: float = 0.01
    """Distance between mirror pairs' local z_geo codes (public config 0.01; z_app: 0.0001)."""
    anchors: float = 7.5
    """||a_gt - A(z_geo)|| (eq. 22; public config 7.5)."""
    colour: float = 1.0
    """|F_app - RGB|_1 on all points (eq. 23; public config 1.0)."""


def prior_losses(
    model: NPHMPrior,
    batch: dict[str, Tensor],
    weights: LossWeights,
    with_correspondences: bool,
    codes: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Every term of supp. B.3.2 for a batch of scans (tensors ``B x N x 3``; ``identity``, ``scan``: ``B``).

    ``codes`` replaces the model's trained codes of the batch (fitting a new scan)."""
    if codes is None:
        codes = model.codes(batch["identity"], batch["scan"])
    surf = batch["surface_points"].requires_grad_(True)
    near = batch["near_points"].requires_grad_(True)
    n_s = surf.shape[1]
    out = model.posed(torch.cat([surf, near], 1), codes)
    sdf, rgb = out["sdf"], out["rgb"]
    grads = torch.autograd.grad(sdf.sum(), [surf, near], create_graph=True)
    g_all = torch.cat(grads, 1)
    losses = {
        "level_set": weights.level_set * sdf[:, :n_s].abs().mean(),
        "normals": weights.normals * (grads[0] - batch["surface_normals"]).norm(dim=-1).mean(),
        "eikonal": weights.eikonal * (g_all.norm(dim=-1) - 1).abs().mean(),
        "hyper": weights.hyper * out["omega"].norm(dim=-1).mean(),
        "deformation": weights.deformation * (out["canonical"][:, :n_s] - surf).norm(dim=-1).mean(),
        "colour": weights.colour * (rgb - torch.cat([batch["surface_colors"], batch["near_colors"]], 1)).abs().mean(),
        "anchors": weights.anchors * (out["anchors"] - batch["anchors"]).norm(dim=-1).mean(),
        "code_geo": weights.code_geo * codes["geo"].pow(2).sum(-1).mean(),
        "code_exp": weights.code_exp * codes["exp"].pow(2).sum(-1).mean(),
        "code_app": weights.code_app * codes["app"].pow(2).sum(-1).mean(),
        "symmetry": weights.symmetry * model.field.symmetry_loss(codes["geo"])
        + 0.01 * weights.symmetry * model.field.symmetry_loss(codes["app"]),
    }
    if with_correspondences:
        x_c, _ = model.deformation(batch["corr_posed"], codes["exp"], codes["geo"])
        losses["correspondence"] = weights.correspondence * (x_c - batch["corr_canonical"]).abs().sum(-1).mean()
    return losses
