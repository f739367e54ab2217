"""IMavatar's three canonical fields (Zheng et al. 2022, §3.2, supplement §2.2, Fig. 7).

- :class:`GeometryNetwork`: canonical surface, positional encoding (6 frequencies) and a
  per-frame latent code (32), softplus(beta=100) layers with weight normalisation, a skip
  to the input at the middle layer, geometric initialisation to a sphere (Atzmon & Lipman).
  Output: the signed distance (surface at 0; occupancy is ``sigmoid(-alpha * sdf)``, so the
  paper's occupancy level 0.5 is the same surface) and a feature vector for the texture.
- :class:`DeformationNetwork`: on the canonical point only, expression blendshapes
  ``E`` (n_e x 3), pose correctives ``P`` (4 joints x 9 x 3) and skinning weights ``W`` (5),
  initialised to zero blendshapes and uniform weights.
- :class:`TextureNetwork`: colour from the canonical point, the deformed normal (eq. 6),
  jaw pose and expression, and the geometry feature; ReLU layers.
- :class:`CanonicalHeadField`: geometry and texture as a nerfstudio ``Field``.

Points enter the networks divided by ``scene_scale`` (the head fits the unit sphere); the
blendshapes and correctives are in world units per unit coefficient.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _encoding(frequencies: int) -> Optional[NeRFEncoding]:
    if frequencies <= 0:
        return None
    return NeRFEncoding(
        in_dim=3, num_frequencies=frequencies, min_freq_exp=0.0, max_freq_exp=frequencies - 1.0, include_input=True
    )


def _encode(encoding: Optional[NeRFEncoding], x: Tensor) -> Tensor:
    """``[x, sin/cos features]``: the raw point first (nerfstudio appends it last)."""
    if encoding is None:
        return x
    return torch.cat([x, encoding(x)[..., :-3]], dim=-1)


def _linear(in_dim: int, out_dim: int, use_weight_norm: bool, init=None) -> nn.Module:
    lin = nn.Linear(in_dim, out_dim)
    if init is not None:
        init(lin)
    return weight_norm(lin) if use_weight_norm else lin


class GeometryNetwork(nn.Module):
    """Canonical SDF with a feature vector: ``(x, l) -> (sdf, z)``."""

    def __init__(
        self,
        latent_dim: int = 32,
        feature_dim: int = 256,
        dims: Sequence[int] = (512,) * 8,
        skip_in: Sequence[int] = (4,),
        frequencies: int = 6,
        radius: float = 0.6,
        scene_scale: float = 1.0,
        use_weight_norm: bool = True,
    ) -> None:
        super().__init__()
        self.scene_scale, self.latent_dim, self.feature_dim = scene_scale, latent_dim, feature_dim
        self.encoding = _encoding(frequencies)
        enc_dim = self.encoding.get_out_dim() if self.encoding is not None else 3
        in_dim = enc_dim + latent_dim
        sizes = [in_dim, *dims, 1 + feature_dim]
        self.skip_in = tuple(skip_in)
        for i in self.skip_in:
            if not 0 < i < len(sizes) - 1 or sizes[i] <= in_dim:
                raise ValueError(
                    f"geometry skip at layer {i} needs a layer wider than the input ({in_dim}); got widths {list(dims)}"
                )
        layers = []
        for i in range(len(sizes) - 1):
            out_dim = sizes[i + 1] - in_dim if (i + 1) in self.skip_in else sizes[i + 1]
            last = i == len(sizes) - 2

            def init(lin: nn.Linear, i=i, last=last, out_dim=out_dim) -> None:
                if last:  # the sphere of the given radius: sdf(x) ~ |x| - r
                    nn.init.normal_(lin.weight, mean=math.sqrt(math.pi) / math.sqrt(sizes[i]), std=1e-4)
                    nn.init.constant_(lin.bias, -radius)
                    return
                nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
                nn.init.zeros_(lin.bias)
                if i == 0:  # only xyz counts at the start: encodings and latent begin silent
                    nn.init.zeros_(lin.weight[:, 3:])
                elif i in self.skip_in:  # the skipped-in encodings and latent, too
                    nn.init.zeros_(lin.weight[:, -(in_dim - 3) :])

            layers.append(_linear(sizes[i], out_dim, use_weight_norm, init))
        self.layers = nn.ModuleList(layers)
        self.softplus = nn.Softplus(beta=100)

    def forward(
        self, points: Float[Tensor, "N 3"], latent: Optional[Float[Tensor, "N L"]] = None
    ) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N F"]]:
        x = points / self.scene_scale
        h = _encode(self.encoding, x)
        if self.latent_dim:
            latent = h.new_zeros(h.shape[0], self.latent_dim) if latent is None else latent.expand(h.shape[0], -1)
            h = torch.cat([h, latent], dim=-1)
        inp, y = h, h
        for i, layer in enumerate(self.layers):
            if i in self.skip_in:
                y = torch.cat([y, inp], dim=-1) / math.sqrt(2.0)
            y = layer(y)
            if i < len(self.layers) - 1:
                y = self.softplus(y)
        return y[:, 0] * self.scene_scale, y[:, 1:]

    def sdf(self, points: Float[Tensor, "N 3"], latent: Optional[Tensor] = None) -> Float[Tensor, "N"]:
        return self.forward(points, latent)[0]

    def gradient(
        self, points: Float[Tensor, "N 3"], latent: Optional[Tensor] = None, create_graph: bool = True
    ) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N F"], Float[Tensor, "N 3"]]:
        """SDF, feature and d sdf / d x (the canonical normal direction).

        With autograd on outside, the forward graph is kept for a later backward through the SDF and
        feature (``create_graph`` also makes the gradient itself differentiable); with it off, all three
        come back detached."""
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            x = points if points.requires_grad else points.detach().requires_grad_(True)
            sdf, feat = self.forward(x, latent)
            (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=create_graph, retain_graph=create_graph or outer)
        if not outer:
            return sdf.detach(), feat.detach(), grad.detach()
        return sdf, feat, grad


def _he_init(lin: nn.Linear) -> None:
    nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(lin.out_features))
    nn.init.zeros_(lin.bias)


class _Trunk(nn.Module):
    """Softplus(beta=100) MLP with weight normalisation on a point (and an optional condition)."""

    def __init__(self, dims: Sequence[int], frequencies: int = 0, condition_dim: int = 0, use_weight_norm: bool = True):
        super().__init__()
        self.encoding = _encoding(frequencies)
        in_dim = (self.encoding.get_out_dim() if self.encoding is not None else 3) + condition_dim
        sizes = [in_dim, *dims]

        self.layers = nn.ModuleList(_linear(sizes[i], sizes[i + 1], use_weight_norm, _he_init) for i in range(len(dims)))
        self.softplus = nn.Softplus(beta=100)

    def forward(self, x: Tensor, condition: Optional[Tensor] = None) -> Tensor:
        h = _encode(self.encoding, x)
        if condition is not None:
            h = torch.cat([h, condition], dim=-1)
        for layer in self.layers:
            h = self.softplus(layer(h))
        return h


class DisplacementNetwork(nn.Module):
    """D-Net ablation (Zheng et al. 2022, §4.2): deformed point, expression and pose -> displacement to canonical space."""

    def __init__(self, condition_dim: int, dims: Sequence[int] = (128,) * 4, scene_scale: float = 1.0,
                 use_weight_norm: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.scene_scale = scene_scale
        self.trunk = _Trunk(dims, 0, condition_dim, use_weight_norm)
        self.out = nn.Linear(dims[-1], 3)
        nn.init.zeros_(self.out.weight)  # supp. 2.2: the displacement starts at zero
        nn.init.zeros_(self.out.bias)

    def forward(self, points: Float[Tensor, "N 3"], condition: Float[Tensor, "N C"]) -> Float[Tensor, "N 3"]:
        return self.out(self.trunk(points / self.scene_scale, condition)) * self.scene_scale


class DeformationNetwork(nn.Module):
    """Canonical point -> expression blendshapes, pose correctives and skinning weights."""

    def __init__(
        self,
        num_expression: int = 50,
        num_pose_features: int = 36,
        num_joints: int = 5,
        dims: Sequence[int] = (128,) * 4,
        frequencies: int = 0,
        weight_temperature: float = 20.0,
        scene_scale: float = 1.0,
        use_weight_norm: bool = True,
        condition_dim: int = 0,
    ) -> None:
        super().__init__()
        self.num_expression, self.num_pose_features, self.num_joints = num_expression, num_pose_features, num_joints
        self.scene_scale, self.weight_temperature = scene_scale, weight_temperature
        self.trunk = _Trunk(dims, frequencies, condition_dim, use_weight_norm)
        width = dims[-1]
        self.blendshapes = nn.Linear(width, 3 * (num_expression + num_pose_features))
        self.skinning_hidden = _linear(width, width, use_weight_norm, _he_init)
        self.skinning = nn.Linear(width, num_joints)
        for lin in (self.blendshapes, self.skinning):  # zero blendshapes, uniform weights
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.softplus = nn.Softplus(beta=100)

    def forward(
        self, points: Float[Tensor, "N 3"], condition: Optional[Float[Tensor, "N C"]] = None
    ) -> Tuple[Float[Tensor, "N 3 E"], Float[Tensor, "N 3 P"], Float[Tensor, "N J"]]:
        """``(E, P, W)``: expression dirs, pose-corrective dirs (FLAME layout) and skinning weights.
        ``condition`` only for the B-Morph ablation (deformed point plus expression and pose)."""
        h = self.trunk(points / self.scene_scale, condition)
        shapes = self.blendshapes(h) * self.scene_scale
        n_e = self.num_expression
        expr_dirs = shapes[:, : 3 * n_e].reshape(-1, 3, n_e)
        pose_dirs = shapes[:, 3 * n_e :].reshape(-1, 3, self.num_pose_features)
        logits = self.skinning(self.softplus(self.skinning_hidden(h)))
        return expr_dirs, pose_dirs, F.softmax(self.weight_temperature * logits, dim=-1)


class TextureNetwork(nn.Module):
    """Colour from canonical point, deformed normal, jaw pose, expression and geometry feature."""

    def __init__(
        self,
        condition_dim: int = 53,
        feature_dim: int = 256,
        dims: Sequence[int] = (512,) * 4,
        frequencies: int = 4,
        scene_scale: float = 1.0,
        use_weight_norm: bool = True,
    ) -> None:
        super().__init__()
        self.scene_scale = scene_scale
        self.encoding = _encoding(frequencies)
        enc_dim = self.encoding.get_out_dim() if self.encoding is not None else 3
        sizes = [enc_dim + 3 + condition_dim + feature_dim, *dims, 3]
        self.layers = nn.ModuleList(
            _linear(sizes[i], sizes[i + 1], use_weight_norm and i < len(sizes) - 2) for i in range(len(sizes) - 1)
        )

    def forward(
        self,
        points: Float[Tensor, "N 3"],
        normals: Float[Tensor, "N 3"],
        condition: Float[Tensor, "N C"],
        feature: Float[Tensor, "N F"],
    ) -> Float[Tensor, "N 3"]:
        x = points / self.scene_scale
        h = _encode(self.encoding, x)
        h = torch.cat([h, normals, condition, feature], dim=-1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return torch.sigmoid(h)


NORMAL = "deformed_normal"
CONDITION = "condition"


class CanonicalHeadField(Field):
    """The canonical geometry (density side) and texture (output side) as one nerfstudio Field.

    Positions of the ray samples are *canonical* points (the renderer found them); the deformed
    normal and the frame's jaw/expression condition travel in ``RaySamples.metadata``. Also the
    ``forward_geonetwork`` that ``ns-export marching-cubes`` reads: ``[sdf, feature]`` under the
    default frame's latent code.
    """

    def __init__(
        self, geometry: GeometryNetwork, texture: TextureNetwork, latent_codes: nn.Module, default_frame: int,
        occupancy_sharpness: float = 50.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.geometry, self.texture, self.latent_codes = geometry, texture, latent_codes
        self.default_frame, self.occupancy_sharpness = default_frame, occupancy_sharpness

    def code(self, frame: Optional[Tensor], n: int, device) -> Tensor:
        if frame is None:
            frame = torch.full((n,), self.default_frame, dtype=torch.long, device=device)
        return self.latent_codes(frame.reshape(-1))

    def forward_geonetwork(self, points: Float[Tensor, "N 3"], frame: Optional[Tensor] = None) -> Float[Tensor, "N 1+F"]:
        sdf, feat = self.geometry(points, self.code(frame, points.shape[0], points.device))
        return torch.cat([sdf[:, None], feat], dim=-1)

    def occupancy(self, sdf: Tensor) -> Tensor:
        """The paper's occupancy: sigmoid(-alpha sdf), 0.5 on the surface."""
        return torch.sigmoid(-self.occupancy_sharpness * sdf / self.geometry.scene_scale)

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        pts = ray_samples.frustums.get_positions()
        flat = pts.reshape(-1, 3)
        frame = None if ray_samples.metadata is None else ray_samples.metadata.get("frame_index")
        if frame is not None:
            frame = frame.expand(*pts.shape[:-1], 1)
        out = self.forward_geonetwork(flat, frame)
        return self.occupancy(out[:, :1]).reshape(*pts.shape[:-1], 1), out[:, 1:].reshape(*pts.shape[:-1], -1)

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None) -> Dict:
        pts = ray_samples.frustums.get_positions()
        meta = ray_samples.metadata or {}
        shape = pts.shape[:-1]
        rgb = self.texture(
            pts.reshape(-1, 3),
            meta[NORMAL].expand(*shape, 3).reshape(-1, 3),
            meta[CONDITION].expand(*shape, -1).reshape(int(pts[..., 0].numel()), -1),
            density_embedding.reshape(int(pts[..., 0].numel()), -1),
        )
        return {FieldHeadNames.RGB: rgb.reshape(*shape, 3)}
