"""Local deformation fields on facial keypoints (Chen et al. 2023, "Controllable Local Deformation Fields").

The observed-to-canonical offset is a blend of small MLPs ``t_l``, one per keypoint ``c_l``:
``x_can = x_obs + sum_l w_l(x) t_l(x - c_l, A_l * [e, jaw], z_def, head/neck pose)``.
Keypoints follow the frame's FLAME landmarks; the attention mask ``A_l`` says which
expression components (and jaw axes) move the mesh near ``c_l``; blend weights fall off with
distance to the keypoints. Each field is a 3-layer, 40-neuron LeakyReLU MLP (Chen et al. 2023).

For speed each point evaluates only its ``top_k`` nearest fields (weights renormalised over
them); ``top_k=None`` evaluates every field. Fields run as one batched loop over keypoints.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from headstudio.deformers.deformation import Deformation

#: DECA's 68 landmarks: 0-16 contour, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth.
LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
MOUTH_CORNERS = (48, 54)
LOWER_LIP_MIDDLE = 57


def keypoint_selection(num_keypoints: int, num_landmarks: int = 68) -> Float[Tensor, "K L"]:
    """Rows that make keypoints from the 68 landmarks (Chen et al. 2023, Fig. 10).

    34: every other landmark. 5: the two eye centres, the two mouth corners and the
    lower-lip midpoint. 1: the landmarks' centroid (one global field).
    """
    if num_keypoints == 34:
        sel = torch.zeros(34, num_landmarks)
        sel[torch.arange(34), torch.arange(0, 68, 2)] = 1.0
    elif num_keypoints == 5:
        sel = torch.zeros(5, num_landmarks)
        sel[0, list(LEFT_EYE)] = 1.0 / len(LEFT_EYE)
        sel[1, list(RIGHT_EYE)] = 1.0 / len(RIGHT_EYE)
        sel[2, MOUTH_CORNERS[0]] = 1.0
        sel[3, MOUTH_CORNERS[1]] = 1.0
        sel[4, LOWER_LIP_MIDDLE] = 1.0
    elif num_keypoints == 1:
        sel = torch.full((1, num_landmarks), 1.0 / num_landmarks)
    else:
        raise ValueError(f"num_keypoints must be 34, 5 or 1 (Chen et al. 2023's variants), got {num_keypoints}")
    return sel


@torch.no_grad()
def attention_mask(
    flame_eval,
    keypoints: Float[Tensor, "K 3"],
    num_expression: int,
    radius: float,
    jaw_angle: float = 0.2,
) -> Float[Tensor, "K C"]:
    """How strongly each expression component and jaw axis moves the mesh near each keypoint.

    ``flame_eval(expression [B E], pose [B 15]) -> vertices [B V 3]`` is evaluated for unit
    expression coefficients and for ``jaw_angle`` rotations about each jaw axis (per radian).
    The mean displacement of the vertices, Gaussian-weighted by distance ``radius`` to the
    keypoint, is normalised per component by its largest value over keypoints, so each
    component reaches 1 where it acts most. Returns ``C = num_expression + 3`` columns.
    """
    c = num_expression + 3
    expr = torch.zeros(c + 1, num_expression)
    pose = torch.zeros(c + 1, 15)
    expr[torch.arange(num_expression), torch.arange(num_expression)] = 1.0
    for axis in range(3):
        pose[num_expression + axis, 6 + axis] = jaw_angle
    verts = flame_eval(expr, pose)  # c+1 V 3, last row neutral
    disp = (verts[:-1] - verts[-1:]).norm(dim=-1)  # c V
    disp[num_expression:] /= jaw_angle
    d2 = ((verts[-1][None] - keypoints[:, None].to(verts)) ** 2).sum(-1)  # K V
    g = torch.exp(-d2 / (2 * radius**2))
    act = (g @ disp.T) / g.sum(-1, keepdim=True).clamp_min(1e-12)  # K c
    return act / act.max(dim=0, keepdim=True).values.clamp_min(1e-12)


def mean_neighbour_distance(points: Float[Tensor, "K 3"]) -> float:
    """Mean distance from each keypoint to its nearest other keypoint."""
    if points.shape[0] < 2:
        return float("nan")
    d = torch.cdist(points, points)
    d.fill_diagonal_(float("inf"))
    return float(d.min(dim=1).values.mean())


def matched_global_width(in_dim: int, hidden: int, layers: int, num_fields: int) -> int:
    """Hidden width of one field with about as many parameters as ``num_fields`` local ones."""

    def params(w: int) -> int:
        return (in_dim + 1) * w + (layers - 1) * (w + 1) * w + (w + 1) * 3

    target = num_fields * params(hidden)
    w = hidden
    while params(w + 1) <= target:
        w += 1
    return w


class LocalDeformationFields(nn.Module):
    """K small MLPs on keypoints, blended by distance (see module docstring)."""

    def __init__(
        self,
        attention: Float[Tensor, "K C"],
        latent_dim: int,
        pose_dim: int = 6,
        hidden_dim: int = 40,
        num_layers: int = 3,
        blend_sigma: float = 0.1,
        top_k: Optional[int] = 4,
        negative_slope: float = 0.01,
        out_init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        k, c = attention.shape
        self.register_buffer("attention", attention.float().clone())
        self.num_fields = k
        self.hidden_dim = hidden_dim
        self.blend_sigma = blend_sigma
        self.top_k = None if top_k is None else min(top_k, k)
        self.act = nn.LeakyReLU(negative_slope)
        self.negative_slope = negative_slope
        frame_dim = c + latent_dim + pose_dim
        h = hidden_dim

        def init(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        self.w_point = init(k, 3, h, fan_in=3 + frame_dim)
        self.w_frame = init(k, frame_dim, h, fan_in=3 + frame_dim)
        self.b_in = nn.Parameter(torch.zeros(k, h))
        self.w_hidden = nn.ParameterList([init(k, h, h, fan_in=h) for _ in range(num_layers - 1)])
        self.b_hidden = nn.ParameterList([nn.Parameter(torch.zeros(k, h)) for _ in range(num_layers - 1)])
        self.w_out = nn.Parameter(out_init_scale * torch.randn(k, h, 3))
        self.b_out = nn.Parameter(torch.zeros(k, 3))

    def frame_features(
        self, cond: Float[Tensor, "R C"], latent: Float[Tensor, "R D"], pose: Float[Tensor, "R P"]
    ) -> Float[Tensor, "R K H"]:
        """First-layer pre-activation of the per-frame inputs (shared by all points of a row)."""
        k = self.num_fields
        masked = self.attention[None] * cond[:, None]  # R K C
        frame_in = torch.cat(
            [masked, latent[:, None].expand(-1, k, -1), pose[:, None].expand(-1, k, -1)], dim=-1
        )
        return torch.einsum("rkf,kfh->rkh", frame_in, self.w_frame) + self.b_in[None]

    def forward(
        self,
        points: Float[Tensor, "N 3"],
        row: Int[Tensor, "N"],
        keypoints: Float[Tensor, "R K 3"],
        cond: Float[Tensor, "R C"],
        latent: Float[Tensor, "R D"],
        pose: Float[Tensor, "R P"],
    ) -> Deformation:
        """Offsets at ``points``; ``row`` picks each point's frame row of the conditioning."""
        n, k = points.shape[0], self.num_fields
        with torch.no_grad():  # blend weights do not pass gradients (distances of detached points)
            d2 = (points.detach()[:, None] - keypoints[row].detach()).square_().sum(-1)  # N K
            w_full = torch.softmax(d2.mul_(-0.5 / self.blend_sigma**2), dim=-1)
            if self.top_k is not None and self.top_k < k:
                w_sel, fid = torch.topk(w_full, self.top_k, dim=-1)
                w_blend = w_sel / w_sel.sum(-1, keepdim=True).clamp_min(1e-12)
            else:
                fid = torch.arange(k, device=points.device).expand(n, k)
                w_sel = w_blend = w_full
        h_frame = self.frame_features(cond, latent, pose)  # R K H
        kk = fid.shape[1]
        # Group (point, field) pairs by field so each field runs on one contiguous block: gathers and a
        # split in, one cat and a gather out (their backward passes are single scatters and cats, not one
        # full-size zero buffer per field as slicing would give).
        pair_field, order = torch.sort(fid.reshape(-1), stable=True)
        pair_point = torch.div(order, kk, rounding_mode="floor")
        pair_row = row[pair_point] * k + pair_field
        x = points.index_select(0, pair_point) - keypoints.reshape(-1, 3).index_select(0, pair_row)  # P 3
        h0 = h_frame.reshape(-1, self.hidden_dim).index_select(0, pair_row)  # P H
        counts = torch.bincount(pair_field, minlength=k).tolist()
        w_point, w_out, b_out = self.w_point.unbind(0), self.w_out.unbind(0), self.b_out.unbind(0)
        hidden = [(w.unbind(0), b.unbind(0)) for w, b in zip(self.w_hidden, self.b_hidden)]
        chunks = []
        for f, (xf, hf) in enumerate(zip(torch.split(x, counts), torch.split(h0, counts))):
            if counts[f] == 0:
                continue
            h = F.leaky_relu(torch.addmm(hf, xf, w_point[f]), self.negative_slope)
            for w, b in hidden:
                h = F.leaky_relu(torch.addmm(b[f], h, w[f]), self.negative_slope)
            chunks.append(torch.addmm(b_out[f], h, w_out[f]))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        out = torch.cat(chunks).index_select(0, inverse).reshape(n, kk, 3)
        offset = (w_blend[..., None] * out).sum(1)
        control = ((1.0 - w_sel) * (out**2).sum(-1)).sum(-1)
        return Deformation(offset=offset, penalty=control)
