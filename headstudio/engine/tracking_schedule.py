"""The frame schedule of photometric head tracking (MonoNPHM, Giebenhain et al. 2024, §4.6).

Stage ``first``: the first frame alone; stage ``sequential``: each following frame in order,
with the identity, appearance and lighting frozen; stage ``joint``: everything, one random frame
per step, until training ends. The datamanager serves the frame of each step from it and the
model reads from it which parameters train, the learning rates and the loss weights of the step,
so the stage of a step is a pure function of the step (resuming a run lands in the same stage).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

StageName = Literal["first", "sequential", "joint"]


@dataclass
class TrackingScheduleConfig:
    first_frame_steps: int = 250
    """Steps on the first frame alone (Giebenhain et al. 2024, §5 "Tracking": 250)."""
    per_frame_steps: int = 60
    """Steps on each following frame, identity frozen (Giebenhain et al. 2024, §5: 60)."""
    joint_steps_per_frame: float = 62.75
    """Length of the joint stage per tracked frame (the paper gives none; the authors' code: 251 x 0.25 steps per
    frame). It sets the joint stage's learning-rate halvings; training continues until --max-num-iterations."""
    step_scale: float = 1.0
    """Multiplies every step count above (and the model's step-based schedules), for short CPU runs."""
    seed: int = 0
    """Seed of the joint stage's random frame order."""


@dataclass(frozen=True)
class Stage:
    name: StageName
    position: int
    """Which tracked frame (0 = the first) the step renders; -1 in the joint stage (random)."""
    step: int
    """Step within the stage (within the current frame in the sequential stage)."""
    length: int
    """Steps of the stage (of one frame in the sequential stage)."""

    @property
    def progress(self) -> float:
        return min(self.step / max(self.length, 1), 1.0)


class TrackingSchedule:
    """Stage and frame of every step for ``num_frames`` tracked frames."""

    def __init__(self, config: TrackingScheduleConfig, num_frames: int) -> None:
        if num_frames < 1:
            raise ValueError("tracking needs at least one frame")
        self.config = config
        self.num_frames = num_frames
        s = config.step_scale
        self.first = max(1, round(config.first_frame_steps * s))
        self.per_frame = max(1, round(config.per_frame_steps * s))
        self.joint = max(1, round(config.joint_steps_per_frame * num_frames * s))

    def scaled(self, steps: float) -> int:
        """A step count of the papers at this schedule's scale (at least 1)."""
        return max(1, round(steps * self.config.step_scale))

    @property
    def joint_start(self) -> int:
        return self.first + self.per_frame * (self.num_frames - 1)

    @property
    def total_steps(self) -> int:
        return self.joint_start + self.joint

    def stage(self, step: int) -> Stage:
        if step < self.first:
            return Stage("first", 0, step, self.first)
        if step < self.joint_start:
            k, r = divmod(step - self.first, self.per_frame)
            return Stage("sequential", k + 1, r, self.per_frame)
        return Stage("joint", -1, step - self.joint_start, self.joint)

    def position(self, step: int) -> int:
        """The tracked frame (0..num_frames-1) step ``step`` renders (joint: random, reproducible per step)."""
        stage = self.stage(step)
        if stage.position >= 0:
            return stage.position
        return random.Random(self.config.seed * 1_000_003 + step).randrange(self.num_frames)

    def describe(self) -> str:
        if self.num_frames == 1:
            return f"frame 1 alone for steps 0-{self.first - 1}; joint from step {self.joint_start}"
        return (
            f"first frame: steps 0-{self.first - 1}; frames 2-{self.num_frames} sequentially, {self.per_frame} steps each, "
            f"identity frozen: steps {self.first}-{self.joint_start - 1}; all frames jointly from step {self.joint_start} "
            f"({self.joint} steps set its rate halvings; it lasts until --max-num-iterations)"
        )
