"""The prior as one module: canonical ensemble, backward deformation and the auto-decoder's codes.

Whole story (Giebenhain et al. 2024, §3, supp. B):

1. A posed point ``x_p`` of scan ``s`` (identity ``i``, expression ``e``) is warped backwards into
   canonical space with hyper-dimensions: ``(x_c, omega) = D_exp(x_p; z_exp[s], z_geo[i])``
   (:mod:`headstudio.deformers.nphm_backward`).
2. The canonical SDF and colour come from the local ensemble on the anchors ``A(z_geo[i])``
   (:mod:`headstudio.fields.nphm`, blending of :mod:`headstudio.fields.anchor_blend`), the
   colour with the appearance code ``z_app[i]``.
3. The codes are learnt with the networks (an auto-decoder): one geometry and one appearance
   code per identity, one expression code per scan, all starting at zero (as the public code).
4. The losses of supp. B.3.2 (:mod:`headstudio.prior.losses`) supervise the zero level set,
   normals, eikonal, correspondences, anchors (against the registration's anchor vertices),
   colours, and regularise the deformation, the hyper-dimensions and the codes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from headstudio.deformers.nphm_backward import BackwardDeformation, DeformationSizes
from headstudio.fields.nphm import EnsembleSizes, LocalEnsembleField
from headstudio.fields.nphm_anchors import AnchorLayout


@dataclass
class PriorSizes:
    ensemble: EnsembleSizes = field(default_factory=EnsembleSizes)
    deformation: DeformationSizes = field(default_factory=DeformationSizes)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PriorSizes":
        return cls(EnsembleSizes(**d["ensemble"]), DeformationSizes(**d["deformation"]))


CPU_PRESET = PriorSizes(
    EnsembleSizes(global_code=32, local_code=8, hidden=64, layers=3, feature_hidden=32, feature=16, anchor_hidden=64),
    DeformationSizes(expression_code=32, hidden=128, layers=4),
)
"""Narrower, shallower networks and shorter codes that train on 2 CPU cores (a headstudio deviation)."""


class NPHMPrior(nn.Module):
    def __init__(
        self,
        layout: AnchorLayout,
        mean_anchors: Float[Tensor, "A 3"],
        num_identities: int,
        num_scans: int,
        sizes: PriorSizes = PriorSizes(),
    ) -> None:
        super().__init__()
        self.sizes = sizes
        self.register_buffer("anchor_vertices", torch.as_tensor(np.asarray(layout.vertex_ids), dtype=torch.long))
        self.num_pairs = layout.num_pairs
        self.field = LocalEnsembleField(layout, mean_anchors, sizes.ensemble)
        self.deformation = BackwardDeformation(self.field.code_dim, sizes.deformation)
        dim = self.field.code_dim
        self.z_geo = nn.Embedding(num_identities, dim)
        self.z_app = nn.Embedding(num_identities, dim)
        self.z_exp = nn.Embedding(num_scans, sizes.deformation.expression_code)
        for emb in (self.z_geo, self.z_app, self.z_exp):
            nn.init.zeros_(emb.weight)

    @property
    def layout(self) -> AnchorLayout:
        return AnchorLayout(self.anchor_vertices.cpu().numpy(), self.num_pairs)

    def codes(self, identity: Int[Tensor, "B"], scan: Int[Tensor, "B"]) -> dict[str, Tensor]:
        return {"geo": self.z_geo(identity), "app": self.z_app(identity), "exp": self.z_exp(scan)}

    def posed(
        self, x_p: Float[Tensor, "B N 3"], codes: dict[str, Tensor], colour: bool = True
    ) -> dict[str, Tensor]:
        """SDF (and colour) at posed points, with the canonical points and hyper-dimensions."""
        x_c, omega = self.deformation(x_p, codes["exp"], codes["geo"])
        out = self.field(x_c, omega, codes["geo"], codes["app"] if colour else None)
        out.update(canonical=x_c, omega=omega)
        return out

    def network_parameters(self) -> list[nn.Parameter]:
        return list(self.field.parameters()) + list(self.deformation.parameters())
