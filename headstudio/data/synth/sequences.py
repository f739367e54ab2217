"""Per-frame FLAME parameters of the synthetic training and test sequences.

Following IMavatar's protocol, training frames show mild, talking-like, symmetric
expressions with moderate jaw motion and head rotation; test frames show stronger,
unseen and asymmetric expressions and wider jaw openings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from headstudio.flame.procedural import EXPRESSION_NAMES

IDX = {name: i for i, name in enumerate(EXPRESSION_NAMES)}
SYMMETRIC = ("smile", "lips_apart", "lip_pucker", "lip_stretch", "brow_furrow", "cheek_puff", "nose_wrinkle",
             "frown", "upper_lip_raise", "lower_lip_depress", "chin_raise", "squint")  # fmt: skip
"""Expression actions seen in training (brow raise and blink only on both sides at once)."""


@dataclass
class Sequence:
    name: str
    expression: np.ndarray  # (T, E)
    pose: np.ndarray  # (T, 15): global, neck, jaw, left eye, right eye (axis-angle)

    def __len__(self) -> int:
        return self.expression.shape[0]


def _smooth(rng: np.random.Generator, n: int, fps: float, low: float = 0.08, high: float = 0.45, k: int = 3) -> np.ndarray:
    """A smooth signal in [-1, 1]: a few sinusoids with random frequencies and phases."""
    t = np.arange(n) / fps
    sig = np.zeros(n)
    for _ in range(k):
        f = rng.uniform(low, high)
        sig += rng.uniform(0.5, 1.0) * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
    return sig / max(np.abs(sig).max(), 1e-9)


def _keyframes(rng: np.random.Generator, n: int, keys: list[np.ndarray], hold: int) -> np.ndarray:
    """Smoothstep interpolation between random choices of key vectors every ``hold`` frames."""
    picks = [keys[rng.integers(len(keys))] for _ in range(n // hold + 2)]
    out = np.zeros((n, len(keys[0])))
    for i in range(n):
        k, r = divmod(i, hold)
        s = r / hold
        s = s * s * (3 - 2 * s)
        out[i] = picks[k] * (1 - s) + picks[k + 1] * s
    return out


def _head_motion(rng: np.random.Generator, n: int, fps: float, pose: np.ndarray) -> None:
    yaw, pitch, roll = (math.radians(a) for a in (30.0, 15.0, 5.0))
    pose[:, 0] = pitch * _smooth(rng, n, fps)
    pose[:, 1] = yaw * _smooth(rng, n, fps)
    pose[:, 2] = roll * _smooth(rng, n, fps)
    pose[:, 3:6] = math.radians(6.0) * np.stack([_smooth(rng, n, fps) for _ in range(3)], -1)  # neck
    gaze = math.radians(10.0) * np.stack([_smooth(rng, n, fps, 0.2, 0.8), _smooth(rng, n, fps, 0.2, 0.8)], -1)
    for eye in (9, 12):
        pose[:, eye] = gaze[:, 0]
        pose[:, eye + 1] = gaze[:, 1]


def _blinks(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    out = np.zeros(n)
    t = rng.uniform(0.5, 3.0)
    while t * fps < n:
        c = int(t * fps)
        for d in range(-3, 4):
            if 0 <= c + d < n:
                out[c + d] = max(out[c + d], 1.0 - abs(d) / 4.0)
        t += rng.uniform(2.0, 5.0)
    return out


def training_sequence(n: int, num_expression: int, seed: int, fps: float = 25.0) -> Sequence:
    rng = np.random.default_rng(seed * 1000 + 1)
    expr = np.zeros((n, num_expression))
    pose = np.zeros((n, 15))
    _head_motion(rng, n, fps, pose)
    keys = [np.zeros(len(SYMMETRIC))]
    for name_i in range(len(SYMMETRIC)):
        key = np.zeros(len(SYMMETRIC))
        key[name_i] = rng.uniform(0.4, 1.0)
        if rng.random() < 0.5:
            key[rng.integers(len(SYMMETRIC))] += rng.uniform(0.2, 0.6)
        keys.append(key)
    sym = _keyframes(rng, n, keys, hold=int(fps))
    for j, name in enumerate(SYMMETRIC):
        expr[:, IDX[name]] = sym[:, j]
    brows = 0.8 * np.clip(_smooth(rng, n, fps, 0.1, 0.3), 0, None)
    expr[:, IDX["brow_raise_left"]] = brows
    expr[:, IDX["brow_raise_right"]] = brows
    blink = _blinks(rng, n, fps)
    expr[:, IDX["blink_left"]] = blink
    expr[:, IDX["blink_right"]] = blink
    # Talking: syllable-rate jaw and lip motion within speech bursts.
    t = np.arange(n) / fps
    envelope = np.clip(_smooth(rng, n, fps, 0.05, 0.2) + 0.4, 0, 1)
    syllables = np.abs(np.sin(2 * math.pi * 2.6 * t + rng.uniform(0, 6))) * envelope
    pose[:, 6] = 0.20 * syllables  # jaw pitch (radians), mouth opens with positive rotation about x
    expr[:, IDX["lips_apart"]] += 0.5 * syllables
    # The rest of the components: a little smooth variation.
    for k in range(len(EXPRESSION_NAMES), num_expression):
        expr[:, k] = 0.3 * _smooth(rng, n, fps)
    return Sequence("train", expr, pose)


def test_sequence(n: int, num_expression: int, seed: int, fps: float = 25.0) -> Sequence:
    rng = np.random.default_rng(seed * 1000 + 2)
    expr = np.zeros((n, num_expression))
    pose = np.zeros((n, 15))
    _head_motion(rng, n, fps, pose)
    names = list(EXPRESSION_NAMES)

    def key(**kw: float) -> np.ndarray:
        v = np.zeros(len(names) + 1)
        for k, a in kw.items():
            if k == "jaw":
                v[-1] = a
            else:
                v[names.index(k)] = a
        return v

    keys = [
        key(smile_left=2.2, brow_raise_right=1.0),
        key(smile_right=2.0, squint=1.0),
        key(blink_left=1.0, smile_left=1.0),  # wink
        key(brow_raise_left=2.0, jaw=0.42, lips_apart=1.5),  # surprise, one brow
        key(sneer_left=2.2, nose_wrinkle=1.5, brow_furrow=1.2),  # disgust
        key(mouth_left=2.0, lip_pucker=1.8),
        key(jaw=0.45, lip_stretch=1.5, frown=1.0),  # scream
        key(cheek_puff=2.0, blink_right=1.0),
        key(frown=2.0, brow_furrow=2.0, chin_raise=1.5),
        key(smile=2.0, jaw=0.30, upper_lip_raise=1.0),  # laugh
    ]
    seq = _keyframes(rng, n, keys, hold=int(fps * 0.8))
    expr[:, : len(names)] = seq[:, : len(names)]
    pose[:, 6] = seq[:, -1]
    for k in range(len(EXPRESSION_NAMES), num_expression):
        expr[:, k] = 0.6 * _smooth(rng, n, fps)
    return Sequence("test", expr, pose)
