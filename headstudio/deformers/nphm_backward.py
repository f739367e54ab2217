"""MonoNPHM's backward deformation ``D_exp`` (Giebenhain et al. 2024, §3.3, supp. B.1).

An MLP maps a posed point ``x_p``, the expression code ``z_exp`` and the geometry code ``z_geo``
(bottlenecked by a linear projection to 16 dimensions, as NPHM does) to the canonical point
``x_c = x_p + offset`` and 2 hyper-dimensions ``omega``. 6 hidden layers of 400; as in the
authors' public code, the input is concatenated again before the middle layer and the
activation is a softplus (beta 100). The last layer starts at zero: at initialisation the
deformation is the identity and ``omega`` is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn


@dataclass
class DeformationSizes:
    """Defaults are MonoNPHM's (Giebenhain et al. 2024, supp. B.1)."""

    expression_code: int = 100
    """Length of z_exp (supp. B.1)."""
    geometry_projection: int = 16
    """z_geo is projected linearly to this many dimensions (supp. B.1, after NPHM)."""
    hidden: int = 400
    """Width (supp. B.1)."""
    layers: int = 6
    """Hidden layers (supp. B.1)."""
    hyper: int = 2
    """Hyper-dimensions (§3.3)."""
    softplus_beta: float = 100.0


class BackwardDeformation(nn.Module):
    """``D_exp(x_p; z_exp, z_geo) = (x_c, omega)``."""

    def __init__(self, geometry_code: int, sizes: DeformationSizes = DeformationSizes()) -> None:
        super().__init__()
        self.sizes = s = sizes
        self.project = nn.Linear(geometry_code, s.geometry_projection)
        d_in = 3 + s.geometry_projection + s.expression_code
        self.skip = s.layers // 2
        dims_in = [d_in] + [s.hidden] * s.layers
        dims_in[self.skip] += d_in
        self.linears = nn.ModuleList(nn.Linear(a, s.hidden) for a in dims_in[:-1])
        self.out = nn.Linear(s.hidden, 3 + s.hyper)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.activation = nn.Softplus(beta=s.softplus_beta)

    def forward(
        self, x_p: Float[Tensor, "B N 3"], z_exp: Float[Tensor, "B E"], z_geo: Float[Tensor, "B C"]
    ) -> tuple[Float[Tensor, "B N 3"], Float[Tensor, "B N H"]]:
        B, N, _ = x_p.shape
        cond = torch.cat([self.project(z_geo), z_exp], -1)[:, None].expand(-1, N, -1)
        inp = torch.cat([x_p, cond], -1)
        h = inp
        for k, lin in enumerate(self.linears):
            if k == self.skip:
                h = torch.cat([h, inp], -1) / 2**0.5
            h = self.activation(lin(h))
        out = self.out(h)
        return x_p + out[..., :3], out[..., 3:]
