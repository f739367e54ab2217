"""Blending local fields centred on anchors: each query sees only its k nearest anchors.

MonoNPHM (Giebenhain et al. 2024, supp. B.2) evaluates NPHM's local MLP ensemble only on the 8
nearest anchors of a query (instead of all of them) and blends with the weights of NPHM's
eq. 14, ``w*_k = exp(-||x - a_k|| / 2 sigma)``, normalised over the neighbourhood, where the scale
follows the neighbourhood (eq. 15): ``sigma(x) = 1/4 max_{k in N(x)} ||x - a_k||``. With that
scale the farthest neighbour always weighs ``exp(-2)`` of an anchor at the query itself, so an
anchor's weight is already small when it leaves the neighbourhood: when the neighbour set
changes the weights jump by at most that share, where a fixed scale leaves jumps as large as the
scale allows (supp. Fig. 7).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

NUM_NEIGHBOURS = 8
"""Anchors each query evaluates (MonoNPHM, Giebenhain et al. 2024, §3.1 and supp. B.2)."""
SIGMA_FRACTION = 0.25
"""sigma(x) = this x the largest query-to-neighbour distance (supp. eq. 15)."""


def nearest_anchors(
    points: Float[Tensor, "B N 3"], anchors: Float[Tensor, "B A 3"], k: int = NUM_NEIGHBOURS
) -> tuple[Int[Tensor, "B N k"], Float[Tensor, "B N k"]]:
    """Indices of and distances to the ``k`` nearest anchors of every query (per batch item)."""
    d = torch.cdist(points, anchors)  # B N A: 65 anchors, so brute force is the fast way
    dist, idx = d.topk(min(k, anchors.shape[1]), dim=-1, largest=False)
    return idx, dist


def neighbourhood_scale(dist: Float[Tensor, "B N k"], sigma_fraction: float = SIGMA_FRACTION) -> Float[Tensor, "B N 1"]:
    """sigma(x) of eq. 15: ``sigma_fraction`` times the farthest of the query's neighbours."""
    return sigma_fraction * dist.max(dim=-1, keepdim=True).values.clamp_min(1e-9)


def blend_weights(
    dist: Float[Tensor, "B N K"], sigma: Float[Tensor, "B N 1"] | float | None = None
) -> Float[Tensor, "B N K"]:
    """Normalised weights of eq. 14, ``exp(-d / 2 sigma)``; by default with eq. 15's scale of these distances
    (a float: NPHM's fixed scale)."""
    if sigma is None:
        sigma = neighbourhood_scale(dist)
    return torch.softmax(-dist / (2 * sigma), dim=-1)  # exp(.) normalised, computed stably


def dense_weights(idx: Int[Tensor, "B N k"], weights: Float[Tensor, "B N k"], num_anchors: int) -> Float[Tensor, "B N A"]:
    """The k weights of each query scattered into a row over all anchors (zeros elsewhere)."""
    out = weights.new_zeros(*weights.shape[:-1], num_anchors)
    return out.scatter(-1, idx, weights)
