"""The neutral head mesh of the procedural FLAME-format model.

:func:`build_template` builds, deterministically, a human head from a parametric surface
(a skull ellipsoid united with a neck cylinder) displaced by hand-placed facial features,
plus separate parts for the eyeballs, mouth interior, teeth and ears; the result is a
:class:`Template` carrying the per-vertex attributes the bases are built from. The part
ids, the anatomy constants (metres, FLAME's axes) and the smooth surface helpers shared by
the other modules of :mod:`headstudio.flame.procedural` live here too, as does
:func:`vertex_normals` for numpy meshes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Parts of the procedural mesh.
SKIN, EYE_L, EYE_R, MOUTH, TEETH_UP, TEETH_LOW, EAR_L, EAR_R = range(8)

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
    """Unit vertex normals of a numpy mesh (headstudio.ops.mesh.vertex_normals)."""
    import torch

    from headstudio.ops.mesh import vertex_normals as normals_t

    return normals_t(torch.from_numpy(np.asarray(vertices, dtype=np.float64)), torch.from_numpy(faces)).numpy()
