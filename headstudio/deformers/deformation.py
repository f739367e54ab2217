"""What a deformation gives at a set of points (shared by every deformer and the render paths)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from jaxtyping import Float
from torch import Tensor


@dataclass
class Deformation:
    """Observed-to-canonical offsets of points, and an optional per-point penalty for a loss
    (tensorf-local-deform: the local control penalty)."""

    offset: Float[Tensor, "N 3"]
    penalty: Optional[Float[Tensor, "N"]] = None
