"""headstudio's procedural FLAME-format head model.

FLAME is licensed, so tests, benchmarks and the README's default run use this model: a
human head built from a parametric surface with hand-placed features (skull, brow ridge,
eye sockets with eyeballs, nose, lips around a mouth slit with an interior and teeth,
chin, jaw, ears, neck). It is written with the official file's keys, dtypes and layouts
(chumpy-style arrays, a sparse ``J_regressor``) so it loads through the same code path as
the real ``generic_model.pkl``, with a DECA-style landmark embedding and region masks.

Coordinates are FLAME's: metres, y up, the face looking along +z, the subject's left at
+x. The mesh is made of parts (``part_ids``): skin, left/right eyeball, mouth interior,
upper/lower teeth, left/right ear. The part ids are not part of the FLAME layout; the
synthetic renderer recomputes them with :func:`build_template` (deterministic).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstudio.flame.constants import LANDMARK_FILENAME, MASKS_FILENAME, NUM_CONTOUR, NUM_DYNAMIC_BINS

# Parts of the procedural mesh.
SKIN, EYE_L, EYE_R, MOUTH, TEETH_UP, TEETH_LOW, EAR_L, EAR_R = range(8)

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

# Anatomy of the neutral template (metres).
HEAD_CENTER = np.array([0.0, 0.01, 0.0])
EYE_Y, EYE_X = 0.030, 0.032
EYE_RADIUS = 0.0122
MOUTH_HALF_WIDTH = 0.024
NOSE_TIP_Y = -0.008
NECK_BOTTOM_Y = -0.17
GLOBAL_JOINT_Y = -0.150
"""Height of the ring the global (root) joint is regressed from: the neck base."""
NECK_JOINT_Y = -0.060
"""Height of the slab the neck joint is regressed from: the head-neck pivot."""
# The jaw joint is regressed from vertices near both jaw hinges (in front of the ears), the
# eye joints from the eyeball centres.


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _gauss(d2: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * d2 / sigma**2)


def _uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit UV sphere with poles on +-z (the 'forward' axis for eyeballs)."""
    verts = [[0.0, 0.0, 1.0]]
    for i in range(1, n_lat):
        t = math.pi * i / n_lat
        for j in range(n_lon):
            p = 2 * math.pi * j / n_lon
            verts.append([math.sin(t) * math.cos(p), math.sin(t) * math.sin(p), math.cos(t)])
    verts.append([0.0, 0.0, -1.0])
    faces = []
    for j in range(n_lon):
        faces.append([0, 1 + j, 1 + (j + 1) % n_lon])
    for i in range(n_lat - 2):
        for j in range(n_lon):
            a = 1 + i * n_lon + j
            b = 1 + i * n_lon + (j + 1) % n_lon
            c = a + n_lon
            d = b + n_lon
            faces += [[a, c, d], [a, d, b]]
    last = len(verts) - 1
    base = 1 + (n_lat - 2) * n_lon
    for j in range(n_lon):
        faces.append([base + j, last, base + (j + 1) % n_lon])
    return np.array(verts), np.array(faces, dtype=np.int64)


@dataclass
class Template:
    """The neutral mesh and the per-vertex attributes the bases are built from."""

    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3)
    part: np.ndarray  # (V,) part id
    face_part: np.ndarray  # (F,) part id
    lip_side: np.ndarray  # (V,) +1 upper side of the mouth slit, -1 lower side, 0 elsewhere
    grid_index: np.ndarray  # (n_rows, n_cols) skin vertex ids of the head grid
    grid_theta: np.ndarray  # (n_cols,) azimuth of grid columns (0 = front, + = subject's left)
    grid_phi: np.ndarray  # (n_rows,) polar angle of grid rows (0 = top)
    mouth_row: int
    mouth_lower_ids: dict = field(default_factory=dict)  # grid column -> lower-lip copy of the slit vertex
    eye_centers: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))
    mouth_y: float = 0.0


def _head_surface(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Base head-and-neck surface: skull ellipsoid united with a neck cylinder (no features)."""
    d = np.stack([np.sin(phi) * np.sin(theta), np.cos(phi), np.sin(phi) * np.cos(theta)], -1)
    az = np.where(d[..., 2] > 0, 0.092, 0.102)  # the back of the skull is deeper than the face
    ay = np.where(d[..., 1] > 0, 0.110, 0.108)
    ax = 0.077 - 0.012 * _smoothstep((-d[..., 1] - 0.1) / 0.8) * (d[..., 2] > 0)  # narrower jaw
    r_head = 1.0 / np.sqrt((d[..., 0] / ax) ** 2 + (d[..., 1] / ay) ** 2 + (d[..., 2] / az) ** 2)
    # Distance along d from the head centre to a vertical neck cylinder (radius 0.056, axis z=-0.018).
    rn, cz = 0.056, -0.018
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = 2 * d[..., 2] * (HEAD_CENTER[2] - cz)
    c = (HEAD_CENTER[2] - cz) ** 2 - rn**2
    r_neck = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * np.maximum(a, 1e-9))
    r_neck = np.where(d[..., 1] < -0.2, r_neck, 0.0)  # the cylinder only exists below the head
    # Smooth union (max of radii) with a soft blend so the jaw flows into the neck.
    k = 0.012
    h = np.clip(0.5 + 0.5 * (r_head - r_neck) / k, 0.0, 1.0)
    r = r_head * h + r_neck * (1 - h) + k * h * (1 - h)
    return HEAD_CENTER + r[..., None] * d


APERTURE_DEPTH = 0.006


def _almond(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Soft almond-shaped eye aperture around an eye centre (dx measured outward)."""
    tilt = dy - 0.06 * dx
    return _gauss((dx / 0.0125) ** 4 * 0.5 + (tilt / 0.0052) ** 2 * 0.5, 1.0 / math.sqrt(2.0))


def _face_features(p: np.ndarray, mouth_y: float) -> np.ndarray:
    """Displacements (along +z and outward) that turn the ellipsoid into a face."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    front = _smoothstep((z - 0.02) / 0.04)
    disp = np.zeros_like(p)
    ax_ = np.abs(x)
    # Flatten the face a little and push the cheekbones out.
    disp[..., 2] += front * (-0.006 * _gauss(x**2 + (y - 0.0) ** 2, 0.05))
    disp[..., 2] += front * 0.006 * _gauss((ax_ - 0.045) ** 2 + (y - 0.008) ** 2, 0.014)
    # Brow ridge.
    disp[..., 2] += front * 0.006 * _gauss((y - 0.050) ** 2, 0.007) * _gauss(x**2, 0.045)
    # Eye sockets.
    disp[..., 2] -= front * 0.012 * _gauss((ax_ - EYE_X) ** 2 + ((y - EYE_Y) * 1.3) ** 2, 0.013)
    # Eye apertures: an almond-shaped recess behind the eyeball front (blink fills it).
    disp[..., 2] -= front * APERTURE_DEPTH * _almond(ax_ - EYE_X, y - EYE_Y)
    # Nose: bridge to tip, with alae.
    t = np.clip((EYE_Y + 0.004 - y) / (EYE_Y + 0.004 - NOSE_TIP_Y), 0.0, 1.2)
    prof = 0.009 + 0.019 * t**1.4
    width = 0.006 + 0.007 * t
    below_tip = _smoothstep((NOSE_TIP_Y - y) / 0.018)
    nose = prof * _gauss(x**2, width) * (1 - below_tip) * (y < EYE_Y + 0.012) * _smoothstep((EYE_Y + 0.012 - y) / 0.01)
    disp[..., 2] += front * nose
    disp[..., 2] += front * 0.010 * _gauss((ax_ - 0.015) ** 2 + ((y - NOSE_TIP_Y + 0.004) * 1.5) ** 2, 0.007)
    # Muzzle, lips and chin.
    disp[..., 2] += front * 0.006 * _gauss((x * 0.8) ** 2 + (y - mouth_y) ** 2, 0.025)
    lip_w = _gauss(x**2, 0.017) * (ax_ < MOUTH_HALF_WIDTH + 0.008)
    disp[..., 2] += front * 0.0055 * lip_w * _gauss((y - mouth_y - 0.0045) ** 2, 0.0035)
    disp[..., 2] += front * 0.0060 * lip_w * _gauss((y - mouth_y + 0.0055) ** 2, 0.0040)
    disp[..., 2] -= front * 0.0035 * _gauss(x**2 + (y - mouth_y + 0.016) ** 2, 0.006)  # mentolabial fold
    disp[..., 2] += front * 0.011 * _gauss((x * 0.7) ** 2 + (y - mouth_y + 0.042) ** 2, 0.013)  # chin
    return disp


def build_template(n_cols: int = 88, n_rows: int = 52) -> Template:
    """Build the neutral head mesh (deterministic)."""
    # Columns: azimuth, denser at the front. Rows: polar angle, denser over the face.
    s = np.linspace(-1.0, 1.0, n_cols, endpoint=False)
    theta = math.pi * (s - 0.62 * np.sin(math.pi * s) / math.pi)
    phi_max = 3.02
    u = np.linspace(0.0, 1.0, n_rows + 1)[1:]
    g = lambda t: t - 0.55 * np.sin(2 * math.pi * (t - 0.55)) / (2 * math.pi)  # noqa: E731
    phi = phi_max * (g(u) - g(0.0))

    # Put the mouth slit exactly on a grid row.
    mouth_phi_target = 2.06
    mouth_row = int(np.argmin(np.abs(phi - mouth_phi_target)))
    tt, pp = np.meshgrid(theta, phi)
    base = _head_surface(tt, pp)
    mouth_y = float(_head_surface(np.array(0.0), phi[mouth_row])[1])
    verts = base + _face_features(base, mouth_y)
    # A horizontal cut at the bottom of the neck.
    low = verts[..., 1] < NECK_BOTTOM_Y
    verts[..., 1] = np.where(low, NECK_BOTTOM_Y - 0.002 * (1 - np.exp((verts[..., 1] - NECK_BOTTOM_Y) / 0.01)), verts[..., 1])

    top = _head_surface(np.array(0.0), np.array(0.0))[None]
    grid_index = 1 + np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    vertices = [top, verts.reshape(-1, 3)]
    nv = 1 + n_rows * n_cols
    # Lower-lip copies of the slit vertices (strictly inside the mouth corners).
    mouth_cols = [j for j in range(n_cols) if abs(verts[mouth_row, j, 0]) < MOUTH_HALF_WIDTH and verts[mouth_row, j, 2] > 0]
    lower_ids = {}
    for j in mouth_cols:
        lower_ids[j] = nv
        vertices.append(verts[mouth_row, j][None])
        nv += 1
    skin_faces = []
    for j in range(n_cols):
        skin_faces.append([0, grid_index[0, (j + 1) % n_cols], grid_index[0, j]])
    for i in range(n_rows - 1):
        for j in range(n_cols):
            jn = (j + 1) % n_cols
            a, b = grid_index[i, j], grid_index[i, jn]
            if i == mouth_row:
                a = lower_ids.get(j, a)
                b = lower_ids.get(jn, b)
            c, d = grid_index[i + 1, j], grid_index[i + 1, jn]
            skin_faces += [[a, c, d], [a, d, b]]
    # Faces wind so normals point outward (checked below and flipped if needed).
    vertices = np.concatenate(vertices, 0)
    faces = np.array(skin_faces, dtype=np.int64)
    if _mean_outward(vertices, faces) < 0:
        faces = faces[:, [0, 2, 1]]
    part = np.full(len(vertices), SKIN)
    face_part = np.full(len(faces), SKIN)
    lip_side = np.zeros(len(vertices))
    near_mouth = (np.abs(vertices[:, 0]) < MOUTH_HALF_WIDTH + 0.01) & (np.abs(vertices[:, 1] - mouth_y) < 0.03) & (
        vertices[:, 2] > 0.03
    )
    lip_side[near_mouth] = np.where(vertices[near_mouth, 1] >= mouth_y - 1e-6, 1.0, -1.0)
    lip_side[list(lower_ids.values())] = -1.0

    parts_v = [vertices]
    parts_f = [faces]
    part_list = [part]
    fpart_list = [face_part]
    offset = len(vertices)

    def add(v: np.ndarray, f: np.ndarray, pid: int) -> None:
        nonlocal offset
        parts_v.append(v)
        parts_f.append(f + offset)
        part_list.append(np.full(len(v), pid))
        fpart_list.append(np.full(len(f), pid))
        offset += len(v)

    # Eyeballs: the front pokes 2.5 mm out of the (socketed) skin at the eye centre.
    eye_centers = []
    sv, sf = _uv_sphere(14, 24)
    for sign, pid in ((1.0, EYE_L), (-1.0, EYE_R)):
        cx = sign * EYE_X
        col = int(np.argmin(np.abs(theta - math.atan2(cx, 0.08))))
        row = int(np.argmin(np.abs(verts[:, col, 1] - EYE_Y)))
        skin_z = verts[row, col, 2]
        center = np.array([cx, EYE_Y, skin_z + 0.0035 - EYE_RADIUS])
        eye_centers.append(center)
        add(center + EYE_RADIUS * sv, sf, pid)
    # Mouth interior: a flattened ellipsoid behind the slit, seen from inside.
    mv, mf = _uv_sphere(10, 20)
    mouth_front = verts[mouth_row, np.argmin(np.abs(theta)), 2]
    m_center = np.array([0.0, mouth_y - 0.003, mouth_front - 0.036])
    add(m_center + mv * np.array([0.022, 0.013, 0.022]), mf, MOUTH)
    # Teeth: two curved strips just behind the lips.
    for pid, y0, y1 in ((TEETH_UP, mouth_y - 0.0045, mouth_y + 0.008), (TEETH_LOW, mouth_y - 0.009, mouth_y - 0.001)):
        n_a, ang = 12, np.linspace(-0.9, 0.9, 12)
        ring = np.stack([0.021 * np.sin(ang), np.zeros_like(ang), mouth_front - 0.008 - 0.021 * (1 - np.cos(ang))], -1)
        tv = np.concatenate([ring + [0, y0, 0], ring + [0, y1, 0]], 0)
        tf = [[a, a + n_a, a + 1] for a in range(n_a - 1)] + [[a + 1, a + n_a, a + n_a + 1] for a in range(n_a - 1)]
        add(tv, np.array(tf), pid)
    # Ears: flattened half shells on the sides of the head.
    ev, ef = _uv_sphere(8, 14)
    for sign, pid in ((1.0, EAR_L), (-1.0, EAR_R)):
        e = ev * np.array([0.006, 0.030, 0.018])
        # Tilt the ear back slightly and push its outer side away from the head.
        side = _head_surface(np.array(sign * math.pi / 2 + sign * 0.12), np.array(1.55))
        add(e + side + np.array([sign * 0.006, 0.0, -0.004]), ef, pid)

    template = Template(
        vertices=np.concatenate(parts_v, 0),
        faces=np.concatenate(parts_f, 0),
        part=np.concatenate(part_list),
        face_part=np.concatenate(fpart_list),
        lip_side=np.concatenate([lip_side, np.zeros(offset - len(lip_side))]),
        grid_index=grid_index,
        grid_theta=theta,
        grid_phi=phi,
        mouth_row=mouth_row,
        mouth_lower_ids=lower_ids,
        eye_centers=np.stack(eye_centers),
        mouth_y=mouth_y,
    )
    return template


def _mean_outward(vertices: np.ndarray, faces: np.ndarray) -> float:
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return float((n * (tri.mean(1) - HEAD_CENTER)).sum(-1).mean())


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals of a numpy mesh (headstudio.mesh.vertex_normals)."""
    import torch

    from headstudio.mesh import vertex_normals as normals_t

    return normals_t(torch.from_numpy(np.asarray(vertices, dtype=np.float64)), torch.from_numpy(faces)).numpy()


# ---------------------------------------------------------------------------------------
# Skinning, joints, correctives, blendshapes, landmarks, masks.


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


def _surface_point(
    vertices: np.ndarray, faces: np.ndarray, allowed: np.ndarray, x: float, y: float
) -> tuple[int, np.ndarray]:
    """Front-most point of the allowed faces seen along -z at (x, y): face id and barycentrics."""
    tri = vertices[faces[allowed]]
    a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    p = np.array([x, y])

    def cross(u, w):
        return u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]

    area = cross(b - a, c - a)
    ok = np.abs(area) > 1e-14
    w0 = cross(b - p, c - p) / np.where(ok, area, 1.0)
    w1 = cross(c - p, a - p) / np.where(ok, area, 1.0)
    w2 = 1.0 - w0 - w1
    inside = ok & (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
    if not inside.any():
        raise RuntimeError(f"no surface point at ({x:.3f}, {y:.3f})")
    zs = np.where(inside, w0 * tri[:, 0, 2] + w1 * tri[:, 1, 2] + w2 * tri[:, 2, 2], -np.inf)
    k = int(np.argmax(zs))
    return int(np.nonzero(allowed)[0][k]), np.array([w0[k], w1[k], w2[k]])


def _vertex_face(faces: np.ndarray, allowed: np.ndarray, vid: int) -> tuple[int, np.ndarray]:
    rows = np.nonzero(allowed & (faces == vid).any(1))[0]
    f = int(rows[0])
    bary = (faces[f] == vid).astype(float)
    return f, bary


def _landmark_embedding(t: Template, normals: np.ndarray) -> dict:
    v, faces = t.vertices, t.faces
    skin_faces = t.face_part == SKIN
    my, ex = t.mouth_y, EYE_X
    targets = []
    for s, xs in ((-1, (0.056, 0.046, 0.036, 0.026, 0.016)), (1, (0.016, 0.026, 0.036, 0.046, 0.056))):
        for xx in xs:
            targets.append((s * xx, 0.048 + 0.008 * math.exp(-((xx - 0.036) / 0.015) ** 2)))  # brows 17-26
    for yy in (EYE_Y, 0.017, 0.004, NOSE_TIP_Y + 0.002):  # nose bridge 27-30
        targets.append((0.0, yy))
    for xx in (-0.011, -0.0055, 0.0, 0.0055, 0.011):  # nostrils 31-35
        targets.append((xx, NOSE_TIP_Y - 0.011 + 0.002 * abs(xx) / 0.011))
    for s in (-1, 1):  # eyes 36-41 (right), 42-47 (left), each starting at its outer/inner corner
        cx = s * ex
        ring = [(-0.0125, 0.0015), (-0.005, 0.0048), (0.005, 0.0048), (0.0125, 0.0), (0.005, -0.0040), (-0.005, -0.0040)]
        # iBUG order runs left to right in the image: the right eye (x < 0) starts at its
        # outer corner, the left eye at its inner corner; both are cx - 0.0125.
        for dx, dy in ring:
            targets.append((cx + dx, EYE_Y + dy))
    outer = [(-0.024, 0.0), (-0.016, 0.0065), (-0.007, 0.0085), (0.0, 0.0075), (0.007, 0.0085), (0.016, 0.0065),
             (0.024, 0.0), (0.016, -0.0075), (0.007, -0.0095), (0.0, -0.0105), (-0.007, -0.0095), (-0.016, -0.0075)]
    for dx, dy in outer:  # 48-59
        targets.append((dx, my + dy))
    inner = [(-0.0205, 0.0005), (-0.008, 0.0005), (0.0, 0.0005), (0.008, 0.0005), (0.0205, 0.0005),
             (0.008, -0.0005), (0.0, -0.0005), (-0.008, -0.0005)]
    for dx, dy in inner:  # 60-67
        targets.append((dx, my + dy))
    static_f, static_b = [], []
    for xx, yy in targets:
        f, b = _surface_point(v, faces, skin_faces, xx, yy)
        static_f.append(f)
        static_b.append(b)
    # Dynamic contour: for each yaw bin, the silhouette point along a path per landmark.
    grid = t.grid_index
    theta, phi = t.grid_theta, t.grid_phi
    paths = []
    chin_y = my - 0.045
    for k in range(NUM_CONTOUR):
        tt = (k - 8) / 8.0
        if abs(tt) < 0.3:
            # Near the chin: walk down a column from the chin's front.
            col = int(np.argmin(np.abs(theta - tt * 0.55)))
            rows = [i for i in range(len(phi)) if v[grid[i, col], 1] < chin_y + 0.012 and v[grid[i, col], 1] > chin_y - 0.035]
            paths.append([grid[i, col] for i in rows])
        else:
            level = (EYE_Y - 0.010) + (chin_y + 0.004 - (EYE_Y - 0.010)) * math.cos(tt * math.pi / 2)
            col0 = int(np.argmin(np.abs(theta - np.sign(tt) * 0.25)))
            row = int(np.argmin(np.abs(v[grid[:, col0], 1] - level)))
            cols = [j for j in range(len(theta)) if 0.25 <= np.sign(tt) * theta[j] <= 2.0]
            cols.sort(key=lambda j: abs(theta[j]))
            paths.append([grid[row, j] for j in cols])
    dyn_f = np.zeros((NUM_DYNAMIC_BINS, NUM_CONTOUR), dtype=np.int64)
    dyn_b = np.zeros((NUM_DYNAMIC_BINS, NUM_CONTOUR, 3))
    for b in range(NUM_DYNAMIC_BINS):
        yaw = -b if b <= 39 else b - 39  # degrees; see headstudio.flame.model.dynamic_contour_bins
        a = math.radians(yaw)
        rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        nz = normals @ rot.T
        for k, path in enumerate(paths):
            pick = path[-1]
            for vid in path:
                if nz[vid, 2] <= 0.02:
                    pick = vid
                    break
            dyn_f[b, k], dyn_b[b, k] = _vertex_face(faces, skin_faces, pick)
    full_f = np.concatenate([dyn_f[0], np.array(static_f)])
    full_b = np.concatenate([dyn_b[0], np.array(static_b)])
    return {
        "static_lmk_faces_idx": np.array(static_f, dtype=np.int64),
        "static_lmk_bary_coords": np.array(static_b),
        "dynamic_lmk_faces_idx": dyn_f,
        "dynamic_lmk_bary_coords": dyn_b,
        "full_lmk_faces_idx": full_f[None],
        "full_lmk_bary_coords": full_b[None],
    }


def _region_masks(t: Template, weights: np.ndarray) -> dict[str, np.ndarray]:
    v, part = t.vertices, t.part
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    skin = part == SKIN
    ids = lambda m: np.nonzero(m)[0].astype(np.int64)  # noqa: E731
    face = skin & (z > 0.025) & (y < 0.075) & (y > t.mouth_y - 0.06) & (np.abs(x) < 0.066)
    eye_l = skin & (np.abs(x - EYE_X) < 0.022) & (np.abs(y - EYE_Y) < 0.016) & (z > 0.03)
    eye_r = skin & (np.abs(x + EYE_X) < 0.022) & (np.abs(y - EYE_Y) < 0.016) & (z > 0.03)
    lips = skin & (np.abs(x) < MOUTH_HALF_WIDTH + 0.004) & (np.abs(y - t.mouth_y) < 0.012) & (z > 0.04)
    nose = skin & (np.abs(x) < 0.022) & (y < EYE_Y + 0.005) & (y > NOSE_TIP_Y - 0.016) & (z > 0.06)
    forehead = skin & (z > 0.02) & (y >= 0.058) & (y < 0.095) & (np.abs(x) < 0.06)
    neck = skin & (weights[:, 0] > 0.05) & ~face
    scalp = skin & ~face & ~neck & ~forehead & ((y > 0.07) | (z < -0.02))
    boundary = t.grid_index[-1].astype(np.int64)
    return {
        "face": ids(face),
        "lips": ids(lips),
        "nose": ids(nose),
        "eye_region": ids(eye_l | eye_r),
        "left_eye_region": ids(eye_l),
        "right_eye_region": ids(eye_r),
        "left_eyeball": ids(part == EYE_L),
        "right_eyeball": ids(part == EYE_R),
        "left_ear": ids(part == EAR_L),
        "right_ear": ids(part == EAR_R),
        "forehead": ids(forehead),
        "neck": ids(neck),
        "scalp": ids(scalp),
        "boundary": boundary,
    }


@dataclass
class ProceduralFlame:
    model: dict  # official generic_model.pkl layout
    landmarks: dict  # DECA landmark_embedding.npy layout
    masks: dict  # FLAME_masks.pkl layout
    template: Template


def make_procedural_flame(seed: int = 0, num_shape: int = NUM_SHAPE, num_expression: int = NUM_EXPRESSION) -> ProceduralFlame:
    """Build the procedural model; the seed varies the random tails of the bases."""
    if num_expression < len(EXPRESSION_NAMES) or num_shape < len(SHAPE_NAMES):
        raise ValueError(f"need at least {len(SHAPE_NAMES)} shape and {len(EXPRESSION_NAMES)} expression components")
    t = build_template()
    rng = np.random.default_rng(seed)
    normals = vertex_normals(t.vertices, t.faces)
    weights = _skinning_weights(t)
    regressor = _joint_regressor(t)
    posedirs = _pose_correctives(t, weights, normals)
    shapedirs = np.concatenate([_shape_basis(t, rng, num_shape), _expression_basis(t, rng, num_expression)], axis=2)
    import scipy.sparse

    model = {
        "v_template": t.vertices.astype(np.float64),
        "f": t.faces.astype(np.uint32),
        "weights": weights.astype(np.float64),
        "posedirs": posedirs.astype(np.float64),
        "shapedirs": shapedirs.astype(np.float64),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": (regressor @ t.vertices).astype(np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    return ProceduralFlame(model, _landmark_embedding(t, normals), _region_masks(t, weights), t)


def write_procedural_flame(out_path: os.PathLike | str, seed: int = 0, overwrite: bool = False) -> list[Path]:
    """Write ``generic_model.pkl``-style model, ``landmark_embedding.npy`` and ``FLAME_masks.pkl``.

    The companions are written beside ``out_path`` with their official names. Every file
    is written to a temporary name first, then renamed.
    """
    import pickle

    from headstudio.flame.safe_pickle import dump_official_style
    from headstudio.io import atomic_path

    out_path = Path(out_path)
    targets = [out_path, out_path.with_name(LANDMARK_FILENAME), out_path.with_name(MASKS_FILENAME)]
    if not overwrite:
        for p in targets:
            if p.exists():
                raise FileExistsError(f"{p}: already exists; choose another path or remove it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    flame = make_procedural_flame(seed)
    dump_official_style(flame.model, out_path)
    with atomic_path(targets[1]) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(flame.landmarks, dtype=object), allow_pickle=True)
    with atomic_path(targets[2]) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(flame.masks, fh, protocol=2)
    return targets
