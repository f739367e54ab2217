"""Learning-rate schedule whose state survives ``torch.load(weights_only=True)``.

nerfstudio 1.1.5's ``ExponentialDecayScheduler`` computes rates with numpy, so the
scheduler state in every checkpoint holds numpy scalars, which ``weights_only`` loading (the
default since torch 2.6, used by ``ns-eval`` / ``ns-export`` / ``ns-viewer``) refuses. This is
the same schedule (no warm-up) in plain Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Type

from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig, Scheduler
from torch.optim import Optimizer, lr_scheduler


@dataclass
class ExponentialDecayConfig(ExponentialDecaySchedulerConfig):
    """Exponential decay from the optimizer's rate to ``lr_final`` over ``max_steps``."""

    _target: Type = field(default_factory=lambda: ExponentialDecay)


class ExponentialDecay(Scheduler):
    config: ExponentialDecayConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        lr_final = lr_init if self.config.lr_final is None else self.config.lr_final
        max_steps = max(1, self.config.max_steps)

        def factor(step: int) -> float:
            t = min(max(step / max_steps, 0.0), 1.0)
            return float(math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t) / lr_init)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


@dataclass
class StepDecayConfig(ExponentialDecaySchedulerConfig):
    """Constant rate multiplied by ``gamma`` once ``milestone_fraction`` of ``max_steps`` have passed."""

    _target: Type = field(default_factory=lambda: StepDecay)
    gamma: float = 0.5
    """Factor applied at the milestone (IMavatar supp. 2.6: halved)."""
    milestone_fraction: float = 2.0 / 3.0
    """Where the drop happens (IMavatar supp. 2.6: epoch 40 of 60)."""


class StepDecay(Scheduler):
    config: StepDecayConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        milestone = int(round(self.config.milestone_fraction * max(1, self.config.max_steps)))
        gamma = float(self.config.gamma)
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: gamma if step >= milestone else 1.0)
