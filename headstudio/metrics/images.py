"""Image metrics of the papers (PSNR, SSIM, L1, LPIPS), one implementation for every method."""

from __future__ import annotations

from typing import Dict

import torch
from jaxtyping import Float
from torch import Tensor
from torchmetrics.functional import structural_similarity_index_measure

from headstudio.metrics.lpips import LazyLPIPS

_LPIPS = LazyLPIPS()


def lpips_unavailable_reason() -> str | None:
    """Why LPIPS is not computed here (None when it is)."""
    return None if _LPIPS.available else _LPIPS.reason


def image_metrics(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> Dict[str, float]:
    """PSNR (dB), SSIM, mean L1 and LPIPS (omitted when its weights are not available offline)."""
    pred = pred.clamp(0.0, 1.0)
    a = pred.permute(2, 0, 1)[None]
    b = gt.permute(2, 0, 1)[None].to(a)
    mse = torch.mean((a - b) ** 2).clamp_min(1e-10)
    out = {
        "psnr": float(-10.0 * torch.log10(mse)),
        "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0)),
        "l1": float(torch.mean(torch.abs(a - b))),
    }
    if _LPIPS.available:
        with torch.no_grad():
            out["lpips"] = float(_LPIPS(a, b))
    return out
