"""Shading by 3-band spherical harmonics lighting (Ramamoorthi and Hanrahan 2001).

The irradiance at a surface with unit normal ``n`` is ``sum_k zeta_k c_k Y_k(n)`` over the 9
real SH basis functions of bands 0-2, with the clamped-cosine convolution folded into ``c_k``
(pi, 2 pi / 3 and pi / 4 per band). MonoNPHM (Giebenhain et al. 2024, §4.2) multiplies its
albedo by this term, with one set of 9 coefficients per colour channel as in the authors' code.
``uniform_light`` gives coefficients whose shading is 1 for every normal.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

_Y0 = 0.5 * math.sqrt(1.0 / math.pi)
_Y1 = math.sqrt(3.0 / (4.0 * math.pi))
_Y2 = 0.5 * math.sqrt(15.0 / math.pi)
_Y20 = 0.25 * math.sqrt(5.0 / math.pi)
_Y22 = 0.25 * math.sqrt(15.0 / math.pi)
BAND_CONVOLUTION = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)
NUM_COEFFICIENTS = 9


def sh_basis(normals: Float[Tensor, "N 3"]) -> Float[Tensor, "N 9"]:
    """The 9 irradiance basis values ``c_k Y_k(n)``, order: 1, y, z, x, xy, yz, 3z^2-1, xz, x^2-y^2."""
    x, y, z = normals.unbind(-1)
    a0, a1, a2 = BAND_CONVOLUTION
    return torch.stack(
        [
            torch.full_like(x, a0 * _Y0),
            a1 * _Y1 * y,
            a1 * _Y1 * z,
            a1 * _Y1 * x,
            a2 * _Y2 * x * y,
            a2 * _Y2 * y * z,
            a2 * _Y20 * (3.0 * z * z - 1.0),
            a2 * _Y2 * x * z,
            a2 * _Y22 * (x * x - y * y),
        ],
        -1,
    )


def uniform_light(channels: int = 3) -> Float[Tensor, "9 C"]:
    """Coefficients of light equal from every direction: shading exactly 1."""
    out = torch.zeros(NUM_COEFFICIENTS, channels)
    out[0] = 1.0 / (BAND_CONVOLUTION[0] * _Y0)
    return out


def sh_shading(normals: Float[Tensor, "N 3"], coefficients: Float[Tensor, "9 C"]) -> Float[Tensor, "N C"]:
    """Irradiance per channel at unit ``normals``."""
    return sh_basis(normals) @ coefficients
