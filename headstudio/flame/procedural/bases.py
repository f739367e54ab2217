"""Skinning, joints and blendshapes of the procedural FLAME-format model.

Given the :class:`~headstudio.flame.procedural.template.Template`, these functions build
the arrays of the official FLAME layout that drive the mesh: linear-blend skinning weights
over FLAME's five joints (global, neck, jaw, left and right eye), the joint regressor,
small pose correctives driven by ``(R - I)``, and the shape and expression bases, whose
first components are named, designed local actions (:data:`SHAPE_NAMES`,
:data:`EXPRESSION_NAMES`) followed by seeded random local actions of decaying magnitude.
"""

from __future__ import annotations

import numpy as np

from headstudio.flame.procedural.template import (
    APERTURE_DEPTH,
    EAR_L,
    EAR_R,
    EYE_L,
    EYE_R,
    EYE_X,
    EYE_Y,
    GLOBAL_JOINT_Y,
    MOUTH,
    MOUTH_HALF_WIDTH,
    NECK_JOINT_Y,
    SKIN,
    TEETH_LOW,
    TEETH_UP,
    Template,
    _almond,
    _gauss,
    _smoothstep,
)

NUM_SHAPE = 300
NUM_EXPRESSION = 100

# Named expression components (the first components of the expression basis).
EXPRESSION_NAMES = (
    "smile",
    "lips_apart",
    "lip_pucker",
    "lip_stretch",
    "smile_left",
    "smile_right",
    "brow_raise_left",
    "brow_raise_right",
    "brow_furrow",
    "blink_left",
    "blink_right",
    "cheek_puff",
    "nose_wrinkle",
    "mouth_left",
    "frown",
    "upper_lip_raise",
    "lower_lip_depress",
    "chin_raise",
    "squint",
    "sneer_left",
)
SHAPE_NAMES = (
    "head_width",
    "head_height",
    "head_depth",
    "face_length",
    "nose_length",
    "nose_width",
    "jaw_width",
    "chin_forward",
    "eye_spacing",
    "brow_ridge",
    "lip_fullness",
    "cheek_fullness",
    "ear_size",
    "neck_width",
)


def _skinning_weights(t: Template) -> np.ndarray:
    v, part = t.vertices, t.part
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    my = t.mouth_y
    # Jaw: below a line from the mouth back up to the jaw hinge, above the throat.
    y_line = my + (0.0 - my) * _smoothstep((0.075 - z) / 0.075)
    jaw = _smoothstep((y_line - y) / 0.012 + 0.15) * _smoothstep(z / 0.03 + 0.3) * _smoothstep((y + 0.118) / 0.03)
    inside = _smoothstep((MOUTH_HALF_WIDTH + 0.003 - np.abs(x)) / 0.008)
    jaw = np.where(t.lip_side > 0, jaw * (1 - inside), jaw)
    jaw = np.where(t.lip_side < 0, np.maximum(jaw, inside), jaw)
    jaw[part == MOUTH] = _smoothstep((t.mouth_y - 0.002 - y[part == MOUTH]) / 0.012 + 0.5)
    jaw[part == TEETH_LOW] = 1.0
    jaw[np.isin(part, (TEETH_UP, EYE_L, EYE_R, EAR_L, EAR_R))] = 0.0
    head = _smoothstep((y + 0.140) / 0.065)
    head[part != SKIN] = 1.0
    w = np.zeros((len(v), 5))
    w[:, 0] = 1 - head
    w[:, 1] = head * (1 - jaw)
    w[:, 2] = head * jaw
    for pid, j in ((EYE_L, 3), (EYE_R, 4)):
        w[part == pid] = 0.0
        w[part == pid, j] = 1.0
    return w


def _joint_regressor(t: Template) -> np.ndarray:
    v, part = t.vertices, t.part
    skin = part == SKIN
    reg = np.zeros((5, len(v)))

    def average(mask: np.ndarray, j: int) -> None:
        ids = np.nonzero(mask)[0]
        assert len(ids) > 0, f"no vertices for joint {j}"
        reg[j, ids] = 1.0 / len(ids)

    def box_center(mask: np.ndarray, j: int) -> None:
        # The centre of the slab's bounding box: its four extreme vertices, a quarter each.
        ids = np.nonzero(mask)[0]
        assert len(ids) > 0, f"no vertices for joint {j}"
        for axis in (0, 2):
            for pick in (np.argmin, np.argmax):
                reg[j, ids[pick(v[ids, axis])]] += 0.25

    box_center(skin & (np.abs(v[:, 1] - GLOBAL_JOINT_Y) < 0.006), 0)
    box_center(skin & (np.abs(v[:, 1] - NECK_JOINT_Y) < 0.006), 1)
    hinge = np.array([[0.066, -0.004, -0.004], [-0.066, -0.004, -0.004]])
    near = np.min(np.linalg.norm(v[:, None, :] - hinge[None], axis=-1), axis=1) < 0.02
    average(skin & near & (np.abs(np.abs(v[:, 0]) - 0.066) < 0.02), 2)
    average(part == EYE_L, 3)
    average(part == EYE_R, 4)
    return reg


def _pose_correctives(t: Template, weights: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Small volume-preserving bulges where joints blend, driven by (R - I)."""
    v = t.vertices
    posedirs = np.zeros((len(v), 3, 36))
    skin = (t.part == SKIN).astype(float)
    for j in (1, 2):
        wj = weights[:, j]
        band = 4.0 * wj * (1.0 - wj) * skin  # 1 where the weight is 0.5
        col = 9 * (j - 1)
        # Diagonal entries of (R - I) are -(1 - cos) for bending: push the band out.
        for k in (0, 4, 8):
            posedirs[:, :, col + k] = -0.02 * band[:, None] * normals
        if j == 2:  # opening the jaw stretches the cheeks inward a little
            posedirs[:, 0, col + 7] = -0.01 * band * np.sign(v[:, 0])
    return posedirs


def _region(v: np.ndarray, center, sigma) -> np.ndarray:
    d = (v - np.asarray(center)) / np.asarray(sigma)
    return np.exp(-0.5 * (d**2).sum(-1))


def _surface_frame(t: Template) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y, z of the template, its skin indicator, and a soft 'front of the face' weight."""
    v = t.vertices
    skin = (t.part == SKIN).astype(float)
    return v[:, 0], v[:, 1], v[:, 2], skin, _smoothstep((v[:, 2] - 0.03) / 0.03) * skin


def _rigidify(t: Template, disp: np.ndarray, scale_parts: tuple = ()) -> np.ndarray:
    """Rigid parts (eyeballs, teeth, mouth interior) move as wholes with the skin around them."""
    out = disp.copy()
    for pid in (EYE_L, EYE_R, TEETH_UP, TEETH_LOW, MOUTH, EAR_L, EAR_R):
        if pid in scale_parts:
            continue
        ids = t.part == pid
        out[ids] = disp[ids].mean(0)
    return out


def _expression_basis(t: Template, rng: np.random.Generator, n: int) -> np.ndarray:
    v, my = t.vertices, t.mouth_y
    x, y, z, skin, front = _surface_frame(t)
    upper = (t.lip_side > 0).astype(float)
    lower = (t.lip_side < 0).astype(float)
    lip_w = _gauss(x**2, 0.016) * front
    zc = 0.07
    corner = {s: _region(v, [s * MOUTH_HALF_WIDTH, my, zc], [0.011, 0.011, 0.03]) * front for s in (1, -1)}
    eye = {s: (s * EYE_X, EYE_Y) for s in (1, -1)}
    basis = np.zeros((len(v), 3, n))

    def smile(side: int) -> np.ndarray:
        d = np.zeros_like(v)
        g = corner[side]
        d[:, 0] += side * 0.0025 * g
        d[:, 1] += 0.0045 * g
        d[:, 2] -= 0.002 * g
        cheek = _region(v, [side * 0.036, my + 0.022, zc], [0.014, 0.012, 0.03]) * front
        d[:, 1] += 0.0022 * cheek
        d[:, 2] += 0.0012 * cheek
        return d

    def brow_raise(side: int) -> np.ndarray:
        d = np.zeros_like(v)
        g = _region(v, [side * 0.034, 0.054, 0.08], [0.018, 0.012, 0.04]) * front
        d[:, 1] += 0.0055 * g
        return d

    def blink(side: int) -> np.ndarray:
        d = np.zeros_like(v)
        ex, ey = eye[side]
        lid = _almond(side * (x - ex), y - ey) ** 0.5 * front
        upper_lid = _region(v, [ex, ey + 0.007, 0.08], [0.012, 0.008, 0.05]) * front
        d[:, 2] += (APERTURE_DEPTH + 0.004) * lid
        d[:, 1] -= 0.003 * upper_lid
        return d

    def lift(center, sigma, amount, weight=None) -> np.ndarray:
        d = np.zeros_like(v)
        g = _region(v, center, sigma) * (front if weight is None else weight)
        d += g[:, None] * np.asarray(amount)[None]
        return d

    designed = {
        "smile": smile(1) + smile(-1),
        "lips_apart": (upper * 0.0030 - lower * 0.0045)[:, None] * np.array([0, 1, 0]) * _gauss(x**2, 0.014)[:, None],
        "lip_pucker": (
            _region(v, [0, my, zc], [0.02, 0.012, 0.05])[:, None] * front[:, None] * np.stack([-0.25 * x, -0.1 * (y - my), 0.006 + 0 * x], -1)
        ),
        "lip_stretch": (corner[1] - corner[-1])[:, None] * np.array([0.005, 0, -0.001])
        + (lip_w * (-(y - my)) * 0.25)[:, None] * np.array([0, 1, 0]),
        "smile_left": smile(1),
        "smile_right": smile(-1),
        "brow_raise_left": brow_raise(1),
        "brow_raise_right": brow_raise(-1),
        "brow_furrow": sum(
            lift([s * 0.018, 0.050, 0.085], [0.010, 0.010, 0.04], [-s * 0.003, -0.003, 0.001]) for s in (1, -1)
        ),
        "blink_left": blink(1),
        "blink_right": blink(-1),
        "cheek_puff": sum(
            lift([s * 0.045, my + 0.006, 0.05], [0.016, 0.016, 0.04], [s * 0.006, 0, 0.003]) for s in (1, -1)
        ),
        "nose_wrinkle": sum(lift([s * 0.011, 0.012, 0.1], [0.007, 0.01, 0.04], [0, 0.003, 0.001]) for s in (1, -1))
        + lift([0, 0.040, 0.09], [0.012, 0.008, 0.04], [0, -0.002, 0]),
        "mouth_left": lift([0, my, zc], [0.025, 0.018, 0.05], [0.005, 0, 0]),
        "frown": sum(lift([s * MOUTH_HALF_WIDTH, my - 0.002, zc], [0.01, 0.012, 0.03], [0, -0.0045, 0]) for s in (1, -1)),
        "upper_lip_raise": (upper * lip_w)[:, None] * np.array([0, 0.003, 0.001])
        + lift([0, my + 0.008, zc], [0.016, 0.006, 0.03], [0, 0.002, 0]),
        "lower_lip_depress": (lower * lip_w)[:, None] * np.array([0, -0.0035, 0.0015]),
        "chin_raise": lift([0, my - 0.035, 0.07], [0.02, 0.015, 0.04], [0, 0.003, 0.002])
        + (lower * lip_w)[:, None] * np.array([0, 0.0015, 0.0015]),
        "squint": sum(lift([s * EYE_X, EYE_Y - 0.010, 0.08], [0.012, 0.006, 0.04], [0, 0.0022, 0.001]) for s in (1, -1)),
        "sneer_left": lift([0.012, my + 0.012, 0.09], [0.009, 0.01, 0.04], [0.001, 0.0035, 0.0005]),
    }
    for k, name in enumerate(EXPRESSION_NAMES[:n]):
        basis[:, :, k] = designed[name]
    # Remaining components: random local actions on the face with decaying magnitude.
    face_pts = v[(front > 0.5)]
    for k in range(len(EXPRESSION_NAMES), n):
        d = np.zeros_like(v)
        for _ in range(2):
            c = face_pts[rng.integers(len(face_pts))]
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            d += _region(v, c, [0.012, 0.012, 0.03])[:, None] * front[:, None] * direction * 0.003
        basis[:, :, k] = d * 0.985 ** (k - len(EXPRESSION_NAMES))
    for k in range(n):
        basis[:, :, k] = _rigidify(t, basis[:, :, k])
    return basis


def _shape_basis(t: Template, rng: np.random.Generator, n: int) -> np.ndarray:
    v, my = t.vertices, t.mouth_y
    x, y, z, skin, front = _surface_frame(t)
    zero = np.zeros_like(x)
    nose = _region(v, [0, 0.0, 0.1], [0.012, 0.02, 0.04]) * front
    lower_face = _smoothstep((my + 0.01 - y) / 0.03) * _smoothstep((y + 0.12) / 0.02)
    ear = np.isin(t.part, (EAR_L, EAR_R)).astype(float)
    ear_c = np.where(x[:, None] > 0, v[t.part == EAR_L].mean(0), v[t.part == EAR_R].mean(0))
    designed = {
        "head_width": np.stack([0.05 * x, zero, zero], -1),
        "head_height": np.stack([zero, 0.05 * np.maximum(y - EYE_Y, 0), zero], -1),
        "head_depth": np.stack([zero, zero, 0.06 * np.minimum(z, 0)], -1),
        "face_length": np.stack([zero, 0.08 * np.minimum(y - 0.0, 0) * (z > -0.02), zero], -1),
        "nose_length": np.stack([zero, -0.001 * nose, 0.004 * nose], -1),
        "nose_width": np.stack([0.25 * x * nose, zero, zero], -1),
        "jaw_width": np.stack([0.08 * x * lower_face * skin, zero, zero], -1),
        "chin_forward": _region(v, [0, my - 0.04, 0.07], [0.02, 0.015, 0.04])[:, None] * front[:, None] * [0, 0, 0.004],
        "eye_spacing": np.stack([0.003 * np.sign(x) * _region(v, [0, EYE_Y, 0.07], [0.03, 0.02, 0.05]), zero, zero], -1),
        "brow_ridge": (_region(v, [0, 0.052, 0.08], [0.04, 0.008, 0.04]) * front)[:, None] * [0, 0, 0.003],
        "lip_fullness": (_region(v, [0, my, 0.08], [0.018, 0.008, 0.04]) * front)[:, None] * [0, 0, 0.002],
        "cheek_fullness": np.stack([0.003 * np.sign(x) * _region(v, [0, my + 0.01, 0.05], [0.05, 0.02, 0.05]) * skin, zero, zero], -1),
        "ear_size": 0.15 * (v - ear_c) * ear[:, None],
        "neck_width": np.stack([0.08 * x, zero, 0.08 * (z + 0.018)], -1) * (_smoothstep((-0.09 - y) / 0.03) * skin)[:, None],
    }
    basis = np.zeros((len(v), 3, n))
    for k, name in enumerate(SHAPE_NAMES[:n]):
        basis[:, :, k] = _rigidify(t, designed[name], scale_parts=(EAR_L, EAR_R))
    pts = v[t.part == SKIN]
    for k in range(len(SHAPE_NAMES), n):
        d = np.zeros_like(v)
        for _ in range(3):
            c = pts[rng.integers(len(pts))]
            direction = rng.normal(size=3)
            d += _region(v, c, [0.04, 0.04, 0.04])[:, None] * direction * 0.0015
        basis[:, :, k] = _rigidify(t, d * (len(SHAPE_NAMES) / k) ** 0.7)
    return basis
