"""Procedural appearance of the synthetic head: albedo and semantic labels per surface point.

Both are functions of the *canonical* (neutral template) position and the mesh part, so
the texture sticks to the skin as the head deforms. Labels follow the CelebAMask-HQ
face-parsing classes (as MonoNPHM's segmentation uses: 11 = mouth interior).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from headstudio.flame import procedural as P

LABELS = (
    "background", "neck", "face", "cloth", "right_ear", "left_ear", "right_brow", "left_brow", "right_eye",
    "left_eye", "nose", "mouth_interior", "lower_lip", "upper_lip", "hair",
)  # fmt: skip
L = {name: i for i, name in enumerate(LABELS)}
FACE_LABELS = tuple(L[n] for n in ("face", "right_brow", "left_brow", "right_eye", "left_eye", "nose", "mouth_interior", "lower_lip", "upper_lip"))
"""Labels that make up the face region used for masked metrics."""


@dataclass
class Look:
    """Colours of one synthetic subject."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]

    @classmethod
    def from_seed(cls, seed: int) -> "Look":
        rng = np.random.default_rng(seed + 7919)
        t = rng.uniform(0.0, 1.0)
        light, dark = np.array([0.90, 0.72, 0.62]), np.array([0.48, 0.33, 0.24])
        skin = light * (1 - t) + dark * t
        hair = [np.array([0.10, 0.07, 0.05]), np.array([0.30, 0.18, 0.10]), np.array([0.62, 0.48, 0.28])][rng.integers(3)]
        iris = [np.array([0.35, 0.20, 0.10]), np.array([0.25, 0.45, 0.65]), np.array([0.30, 0.45, 0.25])][rng.integers(3)]
        lips = skin * np.array([0.85, 0.55, 0.55])
        return cls(tuple(skin), tuple(hair), tuple(iris), tuple(lips))


def _s(x: Tensor) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3 - 2 * x)


def _noise(p: Tensor, scale: float) -> Tensor:
    """Cheap smooth pseudo-noise in [-1, 1] from a few incommensurate sinusoids."""
    q = p / scale
    n = (
        torch.sin(q[:, 0] * 1.7 + q[:, 1] * 2.3 + 0.5)
        + torch.sin(q[:, 1] * 3.1 - q[:, 2] * 1.3 + 1.1)
        + torch.sin(q[:, 2] * 2.7 + q[:, 0] * 0.9 + 2.3)
    )
    return n / 3.0


def hairline(p: Tensor) -> Tensor:
    """Soft hair mask on the skin from the canonical position."""
    az = torch.atan2(p[:, 0], p[:, 2]).abs()
    knots_a = torch.tensor([0.0, 0.8, 1.35, 1.9, math.pi], dtype=p.dtype)
    knots_y = torch.tensor([0.088, 0.074, 0.034, -0.020, -0.075], dtype=p.dtype)
    idx = torch.bucketize(az, knots_a).clamp(1, len(knots_a) - 1)
    a0, a1 = knots_a[idx - 1], knots_a[idx]
    y0, y1 = knots_y[idx - 1], knots_y[idx]
    y_h = y0 + (y1 - y0) * (az - a0) / (a1 - a0)
    y_h = y_h + 0.004 * torch.sin(az * 9.0)
    return _s((p[:, 1] - y_h) / 0.006 + 0.5)


def shade_material(
    canon: Float[Tensor, "N 3"], part: Int[Tensor, "N"], look: Look, template: P.Template
) -> tuple[Float[Tensor, "N 3"], Int[Tensor, "N"]]:
    """Albedo and semantic label of canonical surface points."""
    n = canon.shape[0]
    x, y, z = canon[:, 0], canon[:, 1], canon[:, 2]
    my = float(template.mouth_y)
    c = lambda rgb: torch.tensor(rgb, dtype=canon.dtype)  # noqa: E731
    albedo = torch.zeros(n, 3, dtype=canon.dtype)
    label = torch.full((n,), L["face"], dtype=torch.long)

    # Skin with pores-scale variation, blush and a darker neck.
    skin = c(look.skin)[None] * (1.0 + 0.05 * _noise(canon, 0.004)[:, None] + 0.03 * _noise(canon, 0.0015)[:, None])
    blush = sum(torch.exp(-((x - s * 0.042) ** 2 + (y - my - 0.02) ** 2) / (2 * 0.014**2)) for s in (1, -1))
    skin = skin * (1 - 0.10 * blush[:, None] * torch.tensor([0.0, 1.0, 0.8]))
    albedo[:] = skin
    # Lips.
    hy = torch.where(y >= my, torch.full_like(y, 0.0085), torch.full_like(y, 0.0105))
    lip_d = (x / (P.MOUTH_HALF_WIDTH + 0.002)) ** 2 + ((y - my) / hy) ** 2
    lips = _s((1.0 - lip_d) / 0.25) * (z > 0.04)
    albedo = albedo * (1 - lips[:, None]) + c(look.lips)[None] * lips[:, None]
    label = torch.where(lips > 0.5, torch.where(y >= my, L["upper_lip"], L["lower_lip"]), label)
    # Nostrils.
    nostril = sum(torch.exp(-((x - s * 0.0065) ** 2 / 0.0028**2 + (y - P.NOSE_TIP_Y + 0.010) ** 2 / 0.0018**2) / 2) for s in (1, -1))
    albedo = albedo * (1 - 0.7 * nostril[:, None])
    nose = (x.abs() < 0.017) & (y < P.EYE_Y - 0.004) & (y > P.NOSE_TIP_Y - 0.014) & (z > 0.092)
    label = torch.where(nose & (lips < 0.5), L["nose"], label)
    # Eyebrows: arcs above the eyes with hair-like streaks.
    ax = x.abs()
    brow_y = 0.049 + 0.008 * torch.exp(-(((ax - 0.036) / 0.015) ** 2))
    brow = _s((0.0035 - (y - brow_y).abs()) / 0.0015) * _s((ax - 0.013) / 0.004) * _s((0.060 - ax) / 0.004) * (z > 0.04)
    brow = brow * (0.8 + 0.2 * torch.sin(x * 2500.0 + y * 900.0))
    albedo = albedo * (1 - brow[:, None]) + c(look.hair)[None] * brow[:, None]
    label = torch.where(brow > 0.4, torch.where(x > 0, L["left_brow"], L["right_brow"]), label)
    # Lash line along the upper edge of each eye aperture.
    dx = ax - P.EYE_X
    tilt = (y - P.EYE_Y) - 0.06 * dx
    ring = (dx / 0.0125) ** 4 * 0.5 + (tilt / 0.0052) ** 2 * 0.5
    lash = torch.exp(-((ring - 0.75) ** 2) / 0.05) * (tilt > -0.001) * (z > 0.04)
    albedo = albedo * (1 - 0.6 * lash[:, None])
    # Hair cap.
    hair = hairline(canon) * (part == P.SKIN)
    strands = 0.85 + 0.15 * torch.sin(torch.atan2(x, z) * 180.0 + y * 300.0)
    albedo = albedo * (1 - hair[:, None]) + (c(look.hair)[None] * strands[:, None]) * hair[:, None]
    label = torch.where(hair > 0.5, L["hair"], label)
    # Neck below the jaw line and away from the face.
    neck = (y < my - 0.055) & (z < 0.06) | (y < -0.12)
    label = torch.where(neck & (part == P.SKIN) & (hair <= 0.5), L["neck"], label)

    # Eyeballs: sclera, iris, pupil, in the eyeball's own canonical frame.
    for pid, center, name in ((P.EYE_L, template.eye_centers[0], "left_eye"), (P.EYE_R, template.eye_centers[1], "right_eye")):
        m = part == pid
        if m.any():
            d = canon[m] - c(center)[None]
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-9)
            ang = torch.acos(d[:, 2].clamp(-1, 1))
            iris = c(look.iris)[None] * (0.75 + 0.25 * torch.sin(torch.atan2(d[:, 1], d[:, 0]) * 23.0))[:, None]
            col = torch.where((ang < 0.17)[:, None], c((0.03, 0.03, 0.03))[None], torch.where((ang < 0.43)[:, None], iris, c((0.93, 0.9, 0.88))[None]))
            albedo[m] = col
            label[m] = L[name]
    m = part == P.MOUTH
    albedo[m] = torch.where((y[m] < my - 0.008)[:, None], c((0.55, 0.22, 0.22))[None], c((0.22, 0.06, 0.06))[None])
    label[m] = L["mouth_interior"]
    for pid in (P.TEETH_UP, P.TEETH_LOW):
        m = part == pid
        gaps = 0.9 + 0.1 * torch.cos(torch.atan2(x[m], 0.03 + 0 * x[m]) * 60.0)
        albedo[m] = c((0.95, 0.93, 0.85))[None] * gaps[:, None]
        label[m] = L["mouth_interior"]
    for pid, name in ((P.EAR_L, "left_ear"), (P.EAR_R, "right_ear")):
        m = part == pid
        albedo[m] = c(look.skin)[None] * 0.93
        label[m] = L[name]
    return albedo.clamp(0.0, 1.0), label
