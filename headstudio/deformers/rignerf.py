"""RigNeRF's 3DMM-guided deformation field, as Chen et al. 2023 adapts it to monocular video (RigNeRF*).

An observed point ``x`` of frame ``i`` moves to canonical space by

    x_can = x + D_3DMM(x) + D_MLP(gamma_a(x), gamma_b(D_3DMM(x)), w_i)

- ``D_3DMM(x)`` (RigNeRF eq. 3): take the vertex ``v`` of frame i's guide mesh nearest to x;
  its displacement from the frame's mesh to the neutral mesh, ``v_neutral - v_frame``, damped
  by ``exp(-|x - v| / falloff)`` (RigNeRF divides by ``exp(DistToMesh(x))``: ``falloff`` = 1
  scene unit). RigNeRF* builds the guide mesh from the expression alone: the head pose is in
  the camera.
- ``D_MLP``: a residual MLP on positional encodings of the point and of the 3DMM
  displacement, plus the frame's deformation latent code ``w_i``.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.mlp import MLP
from torch import Tensor, nn

from headstudio.ops.nearest import NearestVertex


def guided_displacement(
    points: Float[Tensor, "N 3"],
    frame: Int[Tensor, "N"],
    guide_vertices: Float[Tensor, "F V 3"],
    neutral_vertices: Float[Tensor, "V 3"],
    nearest: NearestVertex,
    falloff: float = 1.0,
) -> Float[Tensor, "N 3"]:
    """3DMM-guided displacement (observed to canonical) of each point of its frame."""
    idx, dist = nearest(points.detach(), frame, guide_vertices)
    disp = neutral_vertices[idx] - guide_vertices[frame, idx]
    return disp * torch.exp(-dist / falloff)[:, None].to(disp)


class RigNeRFDeformation(nn.Module):
    """3DMM-guided displacement plus a residual MLP (see the module docstring)."""

    def __init__(
        self,
        latent_dim: int = 32,
        num_layers: int = 6,
        layer_width: int = 128,
        skip_connections: Tuple[int, ...] = (4,),
        point_frequencies: int = 8,
        displacement_frequencies: int = 4,
        scene_scale: float = 1.0,
        out_init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.scene_scale = scene_scale
        self.point_encoding = NeRFEncoding(
            in_dim=3, num_frequencies=point_frequencies, min_freq_exp=0.0,
            max_freq_exp=point_frequencies - 1.0, include_input=True,
        )  # fmt: skip
        self.displacement_encoding = NeRFEncoding(
            in_dim=3, num_frequencies=displacement_frequencies, min_freq_exp=0.0,
            max_freq_exp=displacement_frequencies - 1.0, include_input=True,
        )  # fmt: skip
        in_dim = self.point_encoding.get_out_dim() + self.displacement_encoding.get_out_dim() + latent_dim
        self.mlp = MLP(
            in_dim=in_dim, num_layers=num_layers, layer_width=layer_width, out_dim=3,
            skip_connections=skip_connections, activation=nn.ReLU(),
        )  # fmt: skip
        last = self.mlp.layers[-1]
        nn.init.uniform_(last.weight, -out_init_scale, out_init_scale)  # residual ~0 at the start (Nerfies)
        nn.init.zeros_(last.bias)

    def residual(
        self, points: Float[Tensor, "N 3"], guided: Float[Tensor, "N 3"], latent: Float[Tensor, "N D"]
    ) -> Float[Tensor, "N 3"]:
        """The MLP's correction to the 3DMM displacement."""
        s = self.scene_scale
        h = torch.cat([self.point_encoding(points / s), self.displacement_encoding(guided / s), latent], dim=-1)
        return self.mlp(h)

    def forward(
        self, points: Float[Tensor, "N 3"], guided: Float[Tensor, "N 3"], latent: Float[Tensor, "N D"]
    ) -> Float[Tensor, "N 3"]:
        """Offset to canonical space: the 3DMM displacement plus the residual."""
        return guided + self.residual(points, guided, latent)
