"""Canonical NeRF MLP field with per-frame conditioning of its colour head (rignerf-star).

NeRF's field (8x256 ReLU trunk with a skip at layer 4, positional encodings of 10 position
and 4 direction frequencies) built from nerfstudio's ``MLP``, ``NeRFEncoding`` and field
heads, with the colour head also reading a per-frame appearance code and (RigNeRF, Fig. 2)
the frame's expression and pose. Density does not see the frame: shape changes come from
the deformation only. Positions come from the ray samples, so a deformation enters through
``Frustums.set_offsets`` and conditioning through ``RaySamples.metadata``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import DensityFieldHead, FieldHeadNames, RGBFieldHead
from nerfstudio.field_components.mlp import MLP
from nerfstudio.fields.base_field import Field
from torch import Tensor, nn

APPEARANCE = "appearance_code"
CONDITION = "condition"


class ConditionedNeRFField(Field):
    """NeRF MLP over the scene box; colour conditioned on ``RaySamples.metadata`` codes."""

    def __init__(
        self,
        aabb: Float[Tensor, "2 3"],
        appearance_dim: int = 32,
        condition_dim: int = 0,
        num_layers: int = 8,
        layer_width: int = 256,
        skip_connections: Tuple[int, ...] = (4,),
        head_num_layers: int = 2,
        head_layer_width: int = 128,
        position_frequencies: int = 10,
        direction_frequencies: int = 4,
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.float().clone())
        self.appearance_dim = appearance_dim
        self.condition_dim = condition_dim
        self.position_encoding = NeRFEncoding(
            in_dim=3, num_frequencies=position_frequencies, min_freq_exp=0.0,
            max_freq_exp=position_frequencies - 2.0, include_input=True,
        )  # fmt: skip
        self.direction_encoding = NeRFEncoding(
            in_dim=3, num_frequencies=direction_frequencies, min_freq_exp=0.0,
            max_freq_exp=float(direction_frequencies), include_input=True,
        )  # fmt: skip
        self.mlp_base = MLP(
            in_dim=self.position_encoding.get_out_dim(),
            num_layers=num_layers,
            layer_width=layer_width,
            skip_connections=skip_connections,
            out_activation=nn.ReLU(),
        )
        self.field_output_density = DensityFieldHead(in_dim=self.mlp_base.get_out_dim())
        self.mlp_head = MLP(
            in_dim=self.mlp_base.get_out_dim() + self.direction_encoding.get_out_dim() + appearance_dim + condition_dim,
            num_layers=head_num_layers,
            layer_width=head_layer_width,
            out_activation=nn.ReLU(),
        )
        self.field_output_rgb = RGBFieldHead(in_dim=self.mlp_head.get_out_dim())

    def normalize(self, positions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
        lo, hi = self.aabb[0], self.aabb[1]
        return (positions - lo) / (hi - lo) * 2.0 - 1.0

    def density_at(self, positions: Float[Tensor, "*batch 3"]) -> Tuple[Tensor, Tensor]:
        """(density, trunk features) at world positions."""
        features = self.mlp_base(self.position_encoding(self.normalize(positions)))
        return self.field_output_density(features), features

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        return self.density_at(ray_samples.frustums.get_positions())

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        meta = ray_samples.metadata or {}
        for key, dim in ((APPEARANCE, self.appearance_dim), (CONDITION, self.condition_dim)):
            if dim and key not in meta:
                raise KeyError(f"ConditionedNeRFField needs RaySamples.metadata['{key}'] ({dim} values per sample)")
        rgb = self.color_at(density_embedding, ray_samples.frustums.directions, meta.get(APPEARANCE), meta.get(CONDITION))
        return {FieldHeadNames.RGB: rgb}

    def color_at(
        self,
        features: Float[Tensor, "*batch F"],
        directions: Float[Tensor, "*batch 3"],
        appearance: Optional[Tensor] = None,
        condition: Optional[Tensor] = None,
    ) -> Float[Tensor, "*batch 3"]:
        """Colour from trunk features, view directions and the conditioning (broadcast over the batch)."""
        shape = features.shape[:-1]
        parts = [features, self.direction_encoding(directions)]
        for value, dim in ((appearance, self.appearance_dim), (condition, self.condition_dim)):
            if dim:
                parts.append(value.expand(*shape, dim))
        return self.field_output_rgb(self.mlp_head(torch.cat(parts, dim=-1)))
