"""Driving the avatar: FLAME parameters from a tracked frame or from manual controls.

The state a method renders is always a FLAME expression and pose (global, neck, jaw, left eye,
right eye; axis-angle). *Manual* drive starts from a base frame's parameters and replaces the
components the controls hold: the first K expression coefficients, jaw opening and sideways
motion, neck yaw / pitch / roll and eye gaze (both eyes alike). Components no control holds
(expression K and beyond, eye roll) keep the base frame's values, so "reset to frame" followed by
no change renders exactly that frame.

Angles are axis-angle components, as the synthetic sequences drive them: x is pitch (jaw: opening),
y is yaw (jaw: sideways), z is roll; for small angles these are the Euler angles.

Per-frame latent codes (appearance, deformation, expression codes of the methods) exist only for
tracked frames; a manual state uses the codes of the tracked frame nearest to it in expression
space (expression coefficients and jaw pose, Euclidean), see :func:`nearest_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

NECK = slice(3, 6)
JAW = slice(6, 9)
LEFT_EYE = slice(9, 12)
RIGHT_EYE = slice(12, 15)


@dataclass
class DriveValues:
    """What the manual controls hold (radians for angles)."""

    expression: Float[Tensor, "K"]
    jaw_open: float = 0.0
    jaw_sideways: float = 0.0
    neck_yaw: float = 0.0
    neck_pitch: float = 0.0
    neck_roll: float = 0.0
    gaze_yaw: float = 0.0
    gaze_pitch: float = 0.0


def compose_drive(
    base_expression: Float[Tensor, "E"], base_pose: Float[Tensor, "15"], values: DriveValues
) -> tuple[Float[Tensor, "E"], Float[Tensor, "15"]]:
    """The base frame's parameters with the controls' components replaced."""
    expression = base_expression.detach().clone()
    k = min(len(values.expression), expression.shape[0])
    expression[:k] = values.expression[:k].to(expression)
    pose = base_pose.detach().clone()
    pose[JAW.start] = values.jaw_open
    pose[JAW.start + 1] = values.jaw_sideways
    pose[NECK.start] = values.neck_pitch
    pose[NECK.start + 1] = values.neck_yaw
    pose[NECK.start + 2] = values.neck_roll
    for eye in (LEFT_EYE, RIGHT_EYE):
        pose[eye.start] = values.gaze_pitch
        pose[eye.start + 1] = values.gaze_yaw
    return expression, pose


def drive_values_of(expression: Float[Tensor, "E"], pose: Float[Tensor, "15"], k: int) -> DriveValues:
    """The control values that reproduce a frame (the inverse of :func:`compose_drive` on its components)."""
    return DriveValues(
        expression=expression[:k].detach().clone(),
        jaw_open=float(pose[JAW.start]),
        jaw_sideways=float(pose[JAW.start + 1]),
        neck_pitch=float(pose[NECK.start]),
        neck_yaw=float(pose[NECK.start + 1]),
        neck_roll=float(pose[NECK.start + 2]),
        gaze_pitch=float(pose[LEFT_EYE.start]),
        gaze_yaw=float(pose[LEFT_EYE.start + 1]),
    )


def nearest_frame(
    expressions: Float[Tensor, "F E"],
    poses: Float[Tensor, "F 15"],
    candidates: Sequence[int],
    expression: Float[Tensor, "E"],
    pose: Float[Tensor, "15"],
) -> int:
    """The candidate frame closest to a state in expression space (coefficients and jaw pose)."""
    idx = torch.as_tensor(list(candidates), dtype=torch.long, device=expressions.device)
    table = torch.cat([expressions[idx], poses[idx][:, JAW]], dim=-1)
    query = torch.cat([expression.to(table), pose[JAW].to(table)])
    return int(idx[torch.argmin(((table - query) ** 2).sum(-1))])


def transfer_expression(
    driver_expression: Float[Tensor, "T E1"],
    driver_neutral: Float[Tensor, "E1"],
    target_neutral: Float[Tensor, "E2"],
) -> tuple[Float[Tensor, "T E2"], str]:
    """Cross-reenactment: the driver's expressions as offsets from its neutral, added to the target's.

    Dimensions that differ are padded with zeros or cut; the second value is a warning naming both
    sizes ('' when they agree)."""
    e1, e2 = driver_expression.shape[1], target_neutral.shape[0]
    offsets = driver_expression - driver_neutral[None]
    warning = ""
    if e1 < e2:
        offsets = torch.cat([offsets, offsets.new_zeros(offsets.shape[0], e2 - e1)], dim=1)
        warning = f"the driver has {e1} expression coefficients and the avatar {e2}: padded the driver's with zeros"
    elif e1 > e2:
        offsets = offsets[:, :e2]
        warning = f"the driver has {e1} expression coefficients and the avatar {e2}: kept the driver's first {e2}"
    return target_neutral[None].to(offsets) + offsets, warning
