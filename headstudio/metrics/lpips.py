"""LPIPS that never downloads: built on first use, unavailable (None) when its backbone
weights are not in the local torch cache, instead of raising or hanging on the network."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity as _TorchmetricsLPIPS


BACKBONE_FILES = {"alex": "alexnet-", "vgg": "vgg16-", "squeeze": "squeezenet1_1-"}
"""torchvision checkpoint names of the LPIPS backbones (torch hub cache)."""


class LazyLPIPS(nn.Module):
    """Drop-in for torchmetrics' ``LearnedPerceptualImagePatchSimilarity(normalize=True)``.

    Calling it returns the LPIPS score, or NaN when the weights cannot be loaded offline;
    ``available`` tells which. Nothing is constructed (or fetched) until the first call.
    """

    def __init__(self, net_type: str = "alex", normalize: bool = True, **kwargs) -> None:
        super().__init__()
        self.net_type, self.normalize, self.kwargs = net_type, normalize, kwargs
        self._metric: Optional[nn.Module] = None
        self._failed: Optional[str] = None

    @property
    def available(self) -> bool:
        self._build()
        return self._metric is not None

    @property
    def reason(self) -> Optional[str]:
        return self._failed

    def _build(self) -> None:
        if self._metric is not None or self._failed is not None:
            return
        prefix = BACKBONE_FILES.get(self.net_type, self.net_type)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        if not any(cache.glob(f"{prefix}*.pth")):  # never reach for the network
            self._failed = f"LPIPS weights unavailable: no {prefix}*.pth in {cache} (nothing is downloaded)"
            return
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(2.0)  # a blocked network fails fast instead of hanging
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._metric = _TorchmetricsLPIPS(net_type=self.net_type, normalize=self.normalize, **self.kwargs)
        except Exception as exc:  # offline: URLError, socket errors, missing cache
            self._failed = f"LPIPS weights unavailable offline ({type(exc).__name__})"
        finally:
            socket.setdefaulttimeout(previous)

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        self._build()
        if self._metric is None:
            return torch.tensor(float("nan"))
        self._metric = self._metric.to(preds.device)
        return self._metric(preds, target)


def patch_torchmetrics_lpips() -> None:
    """Make nerfstudio's built-in models (which build torchmetrics LPIPS eagerly) use LazyLPIPS."""
    import torchmetrics.image.lpip

    torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity = LazyLPIPS
