"""MonoNPHM's canonical head fields: an ensemble of local MLPs on predicted anchors (Giebenhain et
al. 2024, §3.1-3.2, supp. B.1-B.2, building on NPHM, Giebenhain et al. 2023).

- ``F_geo``: the SDF at a canonical point ``x_c`` (with the 2 hyper-dimensions ``omega`` of the
  backward deformation) is the blend over the query's 8 nearest anchors of local MLPs,
  ``sum_k w_k f_geo^k([x_c - a_k, omega]; z_geo)`` (eq. 2), with the weights of
  :mod:`headstudio.fields.anchor_blend` (supp. eq. 14-15). A mirror pair of anchors shares one MLP;
  the partner's local coordinates are mirrored in x. Each anchor has its own local code; the
  MLP sees ``[z_glob, z_loc_k, delta]``.
- The anchors ``a = mean + A(z_glob)`` come from a 3-layer, 64-wide MLP on the global part of
  ``z_geo`` (supp. B.1); the mean is the layout of :mod:`headstudio.fields.nphm_anchors` on the
  neutral mesh.
- ``F_app``: local MLPs of the same structure on 16-d geometry features ``h_geo`` (a 2-layer
  100/16 head on the last hidden layer of the geometry MLPs) with the appearance code, blended
  with the same weights (eq. 3). Colours are in [0, 1] (the paper's [0, 255] scaled).
- As in the authors' public code, an extra global MLP centred at the origin joins every blend
  at a fixed distance (``global_distance``); ``global_mlp=False`` leaves it out.

Units: headstudio's world units (FLAME metres x 4), which is NPHM's space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from headstudio.fields.anchor_blend import NUM_NEIGHBOURS, SIGMA_FRACTION, blend_weights, nearest_anchors, neighbourhood_scale
from headstudio.fields.nphm_anchors import AnchorLayout


@dataclass
class EnsembleSizes:
    """Sizes of the ensemble; defaults are MonoNPHM's (Giebenhain et al. 2024, supp. B.1 and §5)."""

    global_code: int = 64
    """Global part of z_geo and of z_app (NPHM's 64, MonoNPHM §5)."""
    local_code: int = 32
    """Per-anchor part of z_geo and of z_app (MonoNPHM §5)."""
    hidden: int = 200
    """Width of the local geometry and appearance MLPs (supp. B.1)."""
    layers: int = 4
    """Hidden layers of the local MLPs (supp. B.1)."""
    feature_hidden: int = 100
    """First layer of the h_geo head (supp. B.1: widths 100 and 16)."""
    feature: int = 16
    """Width of h_geo (supp. B.1)."""
    anchor_hidden: int = 64
    """Width of the anchor MLP A (3 linear layers, supp. B.1)."""
    hyper: int = 2
    """Hyper-dimensions appended to the canonical point (§3.3)."""
    neighbours: int = NUM_NEIGHBOURS
    """Anchors each query evaluates (supp. B.2)."""
    sigma_fraction: float = SIGMA_FRACTION
    """Blend scale as a fraction of the farthest neighbour's distance (supp. eq. 15)."""
    global_mlp: bool = True
    """An extra MLP at the origin in every blend (the authors' public code; not in the paper)."""
    global_distance: float = 0.75
    """Distance at which the global MLP enters the blend (public code), world units."""
    softplus_beta: float = 100.0
    """Softplus sharpness of the geometry MLPs (NPHM / DeepSDF)."""


class LocalMLPs(nn.Module):
    """``M`` small MLPs with the same shape, evaluated on rows grouped by which MLP they use."""

    def __init__(self, count: int, d_in: int, hidden: int, layers: int, d_out: int, activation: nn.Module) -> None:
        super().__init__()
        dims = [d_in] + [hidden] * layers + [d_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            w = torch.empty(count, a, b)
            for m in range(count):
                nn.init.kaiming_uniform_(w[m].T, a=5**0.5)  # nn.Linear's default, per MLP
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(count, b).uniform_(-(a**-0.5), a**-0.5)))
        self.activation = activation

    @property
    def count(self) -> int:
        return self.weights[0].shape[0]

    def forward(
        self, x: Float[Tensor, "R D"], which: Int[Tensor, "R"], keep_hidden: bool = True
    ) -> tuple[Float[Tensor, "R O"], Float[Tensor, "R H"] | None]:
        """Outputs and (with ``keep_hidden``) the last hidden layer, before its activation, of MLP
        ``which[r]`` on row ``r``.

        Rows are sorted by MLP once, each MLP runs on its contiguous block, and the result is
        put back in the original order: one gather and one scatter however many MLPs there are.
        """
        order = torch.argsort(which)
        counts = torch.bincount(which, minlength=self.count).tolist()
        xs = x[order]
        # One unbind per layer: slicing the stacked parameters per MLP would make every slice's
        # backward allocate a gradient the size of all MLPs' weights.
        weights = [w.unbind(0) for w in self.weights]
        biases = [b.unbind(0) for b in self.biases]
        outs, lasts = [], []
        for m, h in enumerate(xs.split(counts)):  # split, not slices: one gradient buffer, not one per MLP
            if h.shape[0] == 0:
                continue
            for layer in range(len(weights)):
                h = torch.addmm(biases[layer][m], h, weights[layer][m])
                if keep_hidden and layer == len(weights) - 2:
                    lasts.append(h)
                if layer < len(weights) - 1:
                    h = self.activation(h)
            outs.append(h)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(outs)[inverse], torch.cat(lasts)[inverse] if keep_hidden else None


class AnchorPredictor(nn.Module):
    """``A(z_glob)``: the mean anchors plus offsets from a 3-layer MLP (supp. B.1)."""

    def __init__(self, mean: Float[Tensor, "A 3"], code: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.mlp = nn.Sequential(
            nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, mean.numel())
        )
        nn.init.zeros_(self.mlp[-1].weight)  # z = 0 starts at the mean layout
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, z_glob: Float[Tensor, "B C"]) -> Float[Tensor, "B A 3"]:
        return self.mean + self.mlp(z_glob).view(-1, *self.mean.shape)


class LocalEnsembleField(nn.Module):
    """Canonical SDF and colour of MonoNPHM as a blended ensemble of local MLPs."""

    def __init__(self, layout: AnchorLayout, mean_anchors: Float[Tensor, "A 3"], sizes: EnsembleSizes = EnsembleSizes()) -> None:
        super().__init__()
        self.sizes = s = sizes
        self.num_anchors = len(layout.vertex_ids)
        n_local = layout.num_mlps
        self.register_buffer("mlp_of_anchor", torch.as_tensor(layout.mlp_of_anchor, dtype=torch.long))
        self.register_buffer("mirrored", torch.as_tensor(layout.mirrored))
        self.global_index = n_local if s.global_mlp else -1
        count = n_local + int(s.global_mlp)
        d_in = s.global_code + s.local_code + 3 + s.hyper
        self.geometry = LocalMLPs(count, d_in, s.hidden, s.layers, 1, nn.Softplus(beta=s.softplus_beta))
        self.features = nn.Sequential(nn.Linear(s.hidden, s.feature_hidden), nn.ReLU(), nn.Linear(s.feature_hidden, s.feature))
        self.appearance = LocalMLPs(count, s.global_code + s.local_code + s.feature, s.hidden, s.layers, 3, nn.ReLU())
        self.anchors = AnchorPredictor(mean_anchors, s.global_code, s.anchor_hidden)

    @property
    def code_dim(self) -> int:
        """Length of z_geo (and of z_app): the global part, then one local part per anchor (and the global MLP)."""
        return self.sizes.global_code + self.sizes.local_code * (self.num_anchors + int(self.sizes.global_mlp))

    def split_code(self, z: Float[Tensor, "B C"]) -> tuple[Float[Tensor, "B G"], Float[Tensor, "B K L"]]:
        s = self.sizes
        return z[:, : s.global_code], z[:, s.global_code :].view(z.shape[0], -1, s.local_code)

    def neighbourhood(
        self, x: Float[Tensor, "B N 3"], anchors: Float[Tensor, "B A 3"]
    ) -> tuple[Int[Tensor, "B N K"], Float[Tensor, "B N K"], Float[Tensor, "B N K 3"]]:
        """Neighbour anchors (the global MLP last), blend weights and the local coordinates."""
        s = self.sizes
        idx, dist = nearest_anchors(x, anchors, s.neighbours)
        sigma = neighbourhood_scale(dist, s.sigma_fraction)  # from the anchors only, not the global MLP
        batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
        centres = anchors[batch, idx]  # advanced indexing: its backward accumulates into (B, A, 3), not (B, N, A, 3)
        delta = x[:, :, None] - centres
        delta = torch.where(self.mirrored[idx][..., None], delta * delta.new_tensor([-1.0, 1.0, 1.0]), delta)
        if s.global_mlp:
            g = torch.full_like(idx[..., :1], self.num_anchors)
            idx = torch.cat([idx, g], -1)
            dist = torch.cat([dist, torch.full_like(dist[..., :1], s.global_distance)], -1)
            delta = torch.cat([delta, x[:, :, None]], 2)  # the global MLP is centred at the origin
        weights = blend_weights(dist, sigma)
        return idx, weights, delta

    def forward(
        self,
        x: Float[Tensor, "B N 3"],
        omega: Float[Tensor, "B N H"],
        z_geo: Float[Tensor, "B C"],
        z_app: Float[Tensor, "B C"] | None = None,
    ) -> dict[str, Tensor]:
        """``sdf`` (B, N), ``anchors`` (B, A, 3) and, given ``z_app``, ``rgb`` (B, N, 3)."""
        B, N, _ = x.shape
        g_geo, l_geo = self.split_code(z_geo)
        anchors = self.anchors(g_geo)
        idx, weights, delta = self.neighbourhood(x, anchors)
        K = idx.shape[-1]
        which = torch.where(idx == self.num_anchors, self.global_index, self.mlp_of_anchor[idx.clamp_max(self.num_anchors - 1)])
        batch = torch.arange(B, device=x.device)[:, None, None]
        local = l_geo[batch, idx]
        rows = torch.cat(
            [g_geo[:, None, None].expand(-1, N, K, -1), local, delta, omega[:, :, None].expand(-1, -1, K, -1)], -1
        )
        sdf, hidden = self.geometry(rows.reshape(B * N * K, -1), which.reshape(-1), keep_hidden=z_app is not None)
        out = {"sdf": (sdf.view(B, N, K) * weights).sum(-1), "anchors": anchors, "weights": weights, "neighbours": idx}
        if z_app is not None:
            g_app, l_app = self.split_code(z_app)
            local_app = l_app[batch, idx]
            feats = self.features(hidden).view(B, N, K, -1)
            rows = torch.cat([g_app[:, None, None].expand(-1, N, K, -1), local_app, feats], -1)
            rgb, _ = self.appearance(rows.reshape(B * N * K, -1), which.reshape(-1), keep_hidden=False)
            out["rgb"] = (rgb.view(B, N, K, 3) * weights[..., None]).sum(-2)
        return out

    def symmetry_loss(self, z: Float[Tensor, "B C"]) -> Float[Tensor, ""]:
        """Mean distance between the local codes of each mirror pair (NPHM's symmetry regulariser)."""
        _, local = self.split_code(z)
        n = int(self.mirrored.sum())
        return (local[:, 0 : 2 * n : 2] - local[:, 1 : 2 * n : 2]).norm(dim=-1).mean()


def mean_anchor_positions(vertices: Float[np.ndarray, "V 3"], layout: AnchorLayout) -> Tensor:
    """The layout's anchors on a mesh (e.g. the neutral mean head), as the predictor's mean."""
    return torch.as_tensor(np.asarray(vertices)[layout.vertex_ids], dtype=torch.float32)
