"""Landmark embedding and region masks of the procedural FLAME-format model.

:func:`_landmark_embedding` places the 68 iBUG landmarks on the
:class:`~headstudio.flame.procedural.template.Template` as faces and barycentric
coordinates in DECA's ``landmark_embedding.npy`` layout, static points plus a dynamic
jaw contour per yaw bin; :func:`_region_masks` returns vertex-id masks of the face
regions (face, lips, nose, eyes, ears, forehead, neck, scalp, boundary) in the layout of
``FLAME_masks.pkl``.
"""

from __future__ import annotations

import math

import numpy as np

from headstudio.flame.constants import NUM_CONTOUR, NUM_DYNAMIC_BINS
from headstudio.flame.procedural.template import (
    EAR_L,
    EAR_R,
    EYE_L,
    EYE_R,
    EYE_X,
    EYE_Y,
    MOUTH_HALF_WIDTH,
    NOSE_TIP_Y,
    SKIN,
    Template,
)


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


def with_iris(embedding: dict, t: Template) -> dict:
    """IMavatar's ``landmark_embedding_with_eyes.npy`` layout: the 68-point embedding plus two iris
    points (the front of each eyeball, the subject's right eye first, as iBUG orders the eyes),
    appended to the static points (53) and the full points (70)."""
    v, faces = t.vertices, t.faces
    iris_f, iris_b = [], []
    for part, x in ((EYE_R, -EYE_X), (EYE_L, EYE_X)):
        f, b = _surface_point(v, faces, t.face_part == part, x, EYE_Y)
        iris_f.append(f)
        iris_b.append(b)
    out = dict(embedding)
    out["static_lmk_faces_idx"] = np.concatenate([embedding["static_lmk_faces_idx"], iris_f]).astype(np.int64)
    out["static_lmk_bary_coords"] = np.concatenate([embedding["static_lmk_bary_coords"], iris_b])
    out["full_lmk_faces_idx"] = np.concatenate([embedding["full_lmk_faces_idx"][0], iris_f]).astype(np.int64)[None]
    out["full_lmk_bary_coords"] = np.concatenate([embedding["full_lmk_bary_coords"][0], iris_b])[None]
    return out


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
