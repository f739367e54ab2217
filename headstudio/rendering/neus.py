"""NeuS volume rendering of a signed distance field (Wang et al. 2021), shared by the SDF methods.

The discrete NeuS opacity of the interval between consecutive samples is
``alpha = clip((Phi_s(f_prev) - Phi_s(f_next)) / Phi_s(f_prev), 0, 1)`` with ``Phi_s`` the
sigmoid of ``s * f`` and ``s`` the inverse standard deviation; the SDF values at the two ends
of a sample's interval come from its SDF and the slope along the ray (``f -/+ cos * dt / 2``).
Weights are ``alpha`` times the transmittance, so they are non-negative, sum to at most one and
peak where the SDF crosses zero. ``upsample`` places importance samples by the same weights
(the coarse pass, without gradients). MonoNPHM (Giebenhain et al. 2024, §4.1) renders its
tracked heads this way; its inverse standard deviation is ``exp(10 * variance)`` as in NeuS's code.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def inverse_std(variance: float) -> float:
    """NeuS's parameterisation of the sharpness: ``s = exp(10 * variance)``."""
    return math.exp(10.0 * variance)


def neus_alpha(
    sdf: Float[Tensor, "R S"], slope: Float[Tensor, "R S"], deltas: Float[Tensor, "R S"], inv_std: float | Tensor
) -> Float[Tensor, "R S"]:
    """Opacity of each sample's interval from its SDF, its slope ``d sdf / d t`` and its length."""
    prev = sdf - slope * deltas * 0.5
    nxt = sdf + slope * deltas * 0.5
    c_prev = torch.sigmoid(prev * inv_std)
    c_next = torch.sigmoid(nxt * inv_std)
    return ((c_prev - c_next) / (c_prev + 1e-5)).clamp(0.0, 1.0)


def alpha_weights(alpha: Float[Tensor, "R S"]) -> Float[Tensor, "R S"]:
    """``w_i = alpha_i prod_{j<i} (1 - alpha_j)``."""
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], -1), -1)[:, :-1]
    return alpha * trans


def neus_weights(
    sdf: Float[Tensor, "R S"], slope: Float[Tensor, "R S"], deltas: Float[Tensor, "R S"], inv_std: float | Tensor
) -> Float[Tensor, "R S"]:
    return alpha_weights(neus_alpha(sdf, slope, deltas, inv_std))


def section_slopes(sdf: Float[Tensor, "R S"], t: Float[Tensor, "R S"]) -> Float[Tensor, "R S"]:
    """Slope estimate ``d sdf / d t`` from neighbouring samples (the coarse pass, no gradients):
    the smaller of the two one-sided differences, at most 0 (NeuS's up-sampling rule)."""
    d = (sdf[:, 1:] - sdf[:, :-1]) / (t[:, 1:] - t[:, :-1]).clamp_min(1e-8)
    left = torch.cat([d[:, :1], d], -1)
    right = torch.cat([d, d[:, -1:]], -1)
    return torch.minimum(left, right).clamp(-1e3, 0.0)


def sample_pdf(
    t: Float[Tensor, "R S"], weights: Float[Tensor, "R S"], num: int, deterministic: bool = True
) -> Float[Tensor, "R num"]:
    """``num`` distances drawn from the piecewise-constant density ``weights`` over the bins centred at ``t``."""
    edges = torch.cat([t[:, :1], 0.5 * (t[:, 1:] + t[:, :-1]), t[:, -1:]], -1)
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    if deterministic:
        u = torch.linspace(0.5 / num, 1.0 - 0.5 / num, num, device=t.device).expand(t.shape[0], num).contiguous()
    else:
        u = torch.rand(t.shape[0], num, device=t.device)
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    e0, e1 = edges.gather(-1, idx - 1), edges.gather(-1, idx)
    frac = (u - c0) / (c1 - c0).clamp_min(1e-8)
    return e0 + frac * (e1 - e0)


@torch.no_grad()
def upsample(
    t: Float[Tensor, "R S"], sdf: Float[Tensor, "R S"], num: int, inv_std: float, deterministic: bool = True
) -> Float[Tensor, "R num"]:
    """Importance samples of a coarse pass: NeuS weights of the coarse SDF (slopes from neighbours)."""
    deltas = torch.cat([t[:, 1:] - t[:, :-1], (t[:, -1:] - t[:, -2:-1])], -1)
    w = neus_weights(sdf, section_slopes(sdf, t), deltas, inv_std)
    return sample_pdf(t, w, num, deterministic)
