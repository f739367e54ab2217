"""Per-frame latent codes (deformation, appearance, geometry), shared by every method.

A table with one row per frame of the subject (frame indices are global across splits).
Rows of frames never trained (test frames) resolve to a reference frame's row: Chen et al. 2023
renders unseen frames "with the latent codes of the first training frame" (Ours†), and
test-time optimisation (Ours) fits such a row and marks it as the frame's own.
"""

from __future__ import annotations

from typing import Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class FrameCodes(nn.Module):
    """``num_frames`` learned codes of size ``dim`` looked up by frame index."""

    def __init__(
        self, num_frames: int, dim: int, trained_frames: Iterable[int], init_std: float = 0.01, sparse: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.sparse = sparse
        """Sparse gradients (rows not looked up get none: for ``torch.optim.SparseAdam``, whose moments then
        leave the other frames' rows where they are)."""
        self.codes = nn.Parameter(init_std * torch.randn(num_frames, dim))
        trained = torch.zeros(num_frames, dtype=torch.bool)
        idx = torch.as_tensor(list(trained_frames), dtype=torch.long)
        trained[idx] = True
        self.register_buffer("own", trained)
        self.reference_frame = int(idx.min()) if len(idx) else 0
        self.followed: tuple[int, int] = (-1, -1)
        """``(row, source)``: frame index ``row`` (past the table: the subject's driven state) reads ``source``'s code."""

    @property
    def num_frames(self) -> int:
        return self.codes.shape[0]

    def resolve(self, frame_index: Int[Tensor, "*batch"]) -> Int[Tensor, "*batch"]:
        """Frames without a code of their own read the reference (first training) frame's."""
        idx = frame_index.long()
        row, source = self.followed
        if row >= 0:
            idx = torch.where(idx == row, torch.full_like(idx, source), idx)
        idx = idx.clamp(0, self.num_frames - 1)
        return torch.where(self.own[idx], idx, torch.full_like(idx, self.reference_frame))

    def forward(self, frame_index: Int[Tensor, "*batch"]) -> Float[Tensor, "*batch dim"]:
        idx = self.resolve(frame_index)
        if self.sparse:
            return torch.nn.functional.embedding(idx, self.codes, sparse=True)
        return self.codes[idx]

    def follow(self, row: int, source: int) -> None:
        """Let frame index ``row`` read the code of frame ``source`` (which resolves as usual)."""
        self.followed = (int(row), int(source))

    @torch.no_grad()
    def adopt(self, frame: int) -> None:
        """Give ``frame`` a row of its own, starting from the code it currently resolves to."""
        src = int(self.resolve(torch.tensor(frame)))
        self.codes[frame] = self.codes[src]
        self.own[frame] = True
