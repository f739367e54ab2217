"""Head scan sets for training a neural parametric head prior (MonoNPHM, supp. B.3.1).

MonoNPHM's identity/expression prior is trained on registered head scans: points on each
scan's surface (SDF zero level and normals), points near it (colour), and correspondences
between every expression scan and the neutral scan of the same person (the deformation
field). :func:`make_scans` synthesises such a set from headstudio's procedural
FLAME-format model (``hs-synth scans``); :func:`open_scan_set` / :func:`load_scan` read
and validate one, whoever wrote it. The samples are precomputed, so training only draws
random rows.

On-disk format ``headstudio-scans``, version 1
-----------------------------------------------

::

    OUT/
      manifest.json          written last: a folder without it is not a scan set
      topology.npz           faces (F, 3) int64: the registrations' triangles (one topology)
      scans/idIII_exJJ.npz   one per scan (np.savez, uncompressed, float32 arrays, no pickles)
      flame/generic_model.pkl (+ companions)   the FLAME-format model the registrations use

Units: **world units = FLAME metres x 4** (``headstudio.flame.constants.WORLD_SCALE``, a
head spans about one unit), FLAME's axes (y up, the face looks along +z, the subject's
left at +x), the head at FLAME's origin with zero global rotation. Every point of every
scan lies inside ``manifest["box"]`` (``min``/``max`` corners; the default box
``[-0.6, 0.6] x [-0.95, 0.75] x [-0.65, 0.7]`` holds every synthetic head with its neck).

Arrays of a scan file (N* are fixed per set and recorded in ``manifest["counts"]``):

``surface_points`` (Ns, 3)
    Points uniform by area on the *observed* scan surface (see below).
``surface_normals`` (Ns, 3)
    Unit outward normals there (pointing into the air).
``surface_colors`` (Ns, 3)
    Albedo in [0, 1], RGB, no lighting.
``near_points`` (Nn, 3)
    Points near the surface: the first ``Nn - near_box`` rows are observed surface points
    moved along their normal by ``N(0, sigma)``, the rows split evenly over
    ``config.sigmas`` (default 0.01 and 0.002 world units, i.e. 2.5 mm and 0.5 mm) and
    shuffled; the last ``counts["near_box"]`` rows (default 10 %) are uniform in the box.
``near_colors`` (Nn, 3)
    The colour of the surface point each near point came from; for the box rows, the
    colour of the nearest ``surface_points`` row (far from the head this is only a
    convention: weight such rows down or skip them by their index).
``corr_posed`` (Nc, 3), ``corr_canonical`` (Nc, 3)
    The same points (face + barycentric coordinates, uniform by area on the observed
    part of this scan) on this scan's registration and on the neutral registration of
    the same identity: MonoNPHM's deformation supervision. Equal for the neutral scan.
``vertices`` (V, 3)
    The posed registration in FLAME topology (``topology.npz``), so ground-truth anchors
    of any anchor layout are ``vertices[ids]``.

``manifest.json`` holds ``format`` (``"headstudio-scans"``), ``version`` (1), ``units``,
``world_scale``, ``box``, ``counts`` (``surface``, ``near``, ``near_box``, ``corr``,
``vertices``, ``faces``), ``topology``, ``arrays`` (key -> shape, dtype, meaning),
provenance (``generator``, ``config``, ``seed``, ``flame_model``, ``identities`` with
their seeds and shape coefficients) and ``scans``: one entry per scan with ``file``
(relative to the folder), ``identity`` (int), ``expression_index`` (int, 0 for the
neutral), ``is_neutral`` (bool) and, optionally, the ground-truth FLAME ``expression``
(list) and ``pose`` (15: global, neck, jaw, left eye, right eye axis-angle).

The observed surface
--------------------

A real scanner only sees the outside of a head: not the backs of the eyeballs, the
roots of the ears or a closed mouth. With ``observed_only`` (default) a sample is kept
when one of 26 virtual scanner views (full circle of azimuths, elevations -25 to 60
degrees, 384 px depth maps) sees it: the depth map's nearest surface at its pixel is the
same mesh part at the same depth, and the sample faces the view (the angle between its
normal and the direction to the camera under about 81 degrees, cosine above 0.15). Skin, eyeballs and ears are one-sided
(their outward side only: the inside of the open neck is never kept); the mouth interior and
the teeth are two-sided, with the normal turned towards the view that sees them. So the
visible eyeball caps, the ears, and teeth and mouth interior through an open mouth stay;
hidden surfaces go. Without ``observed_only`` the whole registration is sampled (teeth
normals towards the lips, everything else along the triangles' outward winding).

Converting real registered scans (e.g. the NPHM dataset: textured scans plus
FLAME-topology registrations): sample ``surface_*`` and ``near_*`` on the textured scan
(colours from its texture, normals outward), ``corr_*`` with one set of face/barycentric
samples on the expression registration and the neutral registration, store the
registration as ``vertices`` and its faces once in ``topology.npz``, scale to world units
(x 4 if the registrations are in FLAME metres) and write the manifest; omit ``expression``
and ``pose`` where no FLAME fit is known.
"""

from __future__ import annotations

import json
import math
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from headstudio.data.errors import DataError
from headstudio.data.raster import rasterize
from headstudio.data.synth.subject import subject_shape
from headstudio.data.synth.texture import Look, shade_material
from headstudio.flame import procedural as P
from headstudio.flame.constants import MODEL_FILENAME, WORLD_SCALE
from headstudio.flame.model import FlameModel
from headstudio.ops.mesh import sample_surface
from headstudio.utils.atomic import atomic_dir, atomic_path

FORMAT_NAME = "headstudio-scans"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOPOLOGY = "topology.npz"
IDENTITY_SEED_BASE = 100_000
"""Identity ``i`` of a set with seed ``s`` has seed ``100000 + 1000 s + i`` (shape and look):
never one of the small seeds ``hs-synth subject --seed k`` uses, so a prior trained on a
scan set has not seen the identities of the default test subjects."""

ARRAYS: dict[str, tuple[tuple[str, ...], str]] = {
    "surface_points": (("surface", "3"), "points uniform by area on the observed surface, world units"),
    "surface_normals": (("surface", "3"), "unit outward normals at surface_points"),
    "surface_colors": (("surface", "3"), "albedo at surface_points, RGB in [0, 1], no lighting"),
    "near_points": (
        ("near", "3"),
        "surface points moved along the normal by N(0, sigma); last near_box rows uniform in the box",
    ),
    "near_colors": (
        ("near", "3"),
        "colour of the surface point each near point came from (box rows: of the nearest surface point)",
    ),
    "corr_posed": (("corr", "3"), "correspondence points on this scan's registration"),
    "corr_canonical": (("corr", "3"), "the same points (face + barycentrics) on the identity's neutral registration"),
    "vertices": (("vertices", "3"), "posed registration, FLAME topology (topology.npz)"),
}
"""Keys of a scan file: (shape in terms of manifest counts, meaning). All float32."""

_VIEW_ELEVATIONS = ((-25.0, 6, 0.0), (0.0, 8, 0.0), (30.0, 8, 22.5), (60.0, 4, 45.0))
"""Virtual scanner views: (elevation in degrees, number of azimuths, azimuth offset)."""
_VIEW_SIZE = 384
_VIEW_DISTANCE = 3.0
_MIN_FACING = 0.15
_FLIP_PARTS = (P.TEETH_UP, P.TEETH_LOW)
"""Parts whose triangles wind backwards: the teeth strips face the tongue; flipped to face the lips."""
_TWO_SIDED = (P.MOUTH, P.TEETH_UP, P.TEETH_LOW)
"""Parts a scanner may see from either side (through the open mouth); their normals face the view that sees them."""


@dataclass
class ScanSetConfig:
    """How ``hs-synth scans`` synthesises a scan set."""

    identities: int = 8
    """Number of identities (each with its own FLAME shape and skin, hair and eye colours)."""
    expressions: int = 6
    """Scans per identity: expression 0 is the neutral (zero expression and pose), the others random."""
    seed: int = 0
    """Seed of the FLAME-format model, the identities, the expressions and the samples."""
    surface_points: int = 20000
    """Surface samples per scan."""
    near_points: int = 20000
    """Near-surface samples per scan (the box share included)."""
    corr_points: int = 5000
    """Correspondence samples per scan."""
    sigmas: tuple[float, ...] = (0.01, 0.002)
    """Standard deviations (world units) of the normal offsets of near points; the points split evenly over them."""
    box_share: float = 0.1
    """Share of the near points drawn uniformly in the box instead."""
    box_min: tuple[float, float, float] = (-0.6, -0.95, -0.65)
    """Lower corner of the box (world units) that holds every head; box points are drawn in it."""
    box_max: tuple[float, float, float] = (0.6, 0.75, 0.7)
    """Upper corner of the box (world units)."""
    max_jaw: float = 0.45
    """Widest jaw opening (radians) of the random expressions."""
    observed_only: bool = True
    """Keep only surface a scanner sees from outside (no eyeball backs, ear roots, closed mouth interior)."""
    num_shape: int = 100
    """Identity components used."""
    num_expression: int = 50
    """Expression components used."""


# ----------------------------------------------------------------------------- generation


def identity_seed(seed: int, i: int) -> int:
    return IDENTITY_SEED_BASE + 1000 * seed + i


def scan_parameters(
    rng: np.random.Generator, j: int, num_expression: int, max_jaw: float
) -> tuple[np.ndarray, np.ndarray]:
    """FLAME expression and pose of expression ``j`` (``j = 0``: the neutral, all zeros).

    Each non-neutral expression combines one to three named local actions at 0.5 to 2
    (blinks at most 1; every odd ``j`` includes an asymmetric action), a random tail of the
    remaining components (std 0.35), a jaw opening (wide, 0.25 to 1 x ``max_jaw``, for every
    even ``j`` and a quarter of the odd ones, else under 0.12 rad) with a little jaw yaw and
    roll, up to 8 degrees of neck rotation per axis and up to 12 degrees of gaze. The global
    rotation stays zero.
    """
    expr = np.zeros(num_expression)
    pose = np.zeros(15)
    if j == 0:
        return expr, pose
    names = list(P.EXPRESSION_NAMES)
    asym = [n for n in names if n.endswith(("_left", "_right"))]
    picks = list(rng.choice(names, size=int(rng.integers(1, 4)), replace=False))
    if j % 2 == 1 and not any(p in asym for p in picks):
        picks[0] = str(rng.choice(asym))
    for name in picks:  # a blink closes the lid at 1: more would push it through the eyeball
        expr[names.index(name)] = rng.uniform(0.5, 1.0 if name.startswith("blink") else 2.0)
    tail = np.arange(len(names), num_expression)
    expr[tail] = np.clip(rng.normal(size=len(tail)) * 0.35, -1.0, 1.0)
    wide = j % 2 == 0 or rng.random() < 0.25
    pose[6] = rng.uniform(0.25, 1.0) * max_jaw if wide else rng.uniform(0.0, 0.12)
    pose[7:9] = rng.uniform(-0.04, 0.04, size=2)  # a little jaw yaw / roll
    pose[3:6] = np.radians(rng.uniform(-8.0, 8.0, size=3))  # neck
    gaze = np.radians(rng.uniform(-12.0, 12.0, size=2))
    pose[9:11] = gaze
    pose[12:14] = gaze
    return expr, pose


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera rotation (rows: camera x right, y down, z forward)."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.array([0.0, 1.0, 0.0]))
    x = x / np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


@dataclass
class _View:
    R: torch.Tensor
    t: torch.Tensor
    K: torch.Tensor
    center: torch.Tensor
    depth: torch.Tensor
    part: torch.Tensor  # (H, W) part id of the visible surface, -1 on background


class _Scanner:
    """Depth maps of a posed mesh from the virtual scanner views, and a visibility test."""

    def __init__(self, verts: torch.Tensor, faces: torch.Tensor, face_part: torch.Tensor, target: np.ndarray) -> None:
        radius = float((verts - torch.as_tensor(target, dtype=verts.dtype)).norm(dim=-1).max()) * 1.05
        d = max(_VIEW_DISTANCE, 1.5 * radius)
        f = (_VIEW_SIZE / 2) * math.sqrt(d * d - radius * radius) / radius
        K = torch.tensor([[f, 0, _VIEW_SIZE / 2], [0, f, _VIEW_SIZE / 2], [0, 0, 1.0]], dtype=torch.float32)
        self.views: list[_View] = []
        for elev, count, offset in _VIEW_ELEVATIONS:
            for k in range(count):
                az, el = math.radians(offset + 360.0 * k / count), math.radians(elev)
                eye = target + d * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
                R = _look_at(eye, target)
                Rt = torch.as_tensor(R, dtype=torch.float32)
                t = torch.as_tensor(-R @ eye, dtype=torch.float32)
                frags = rasterize(verts @ Rt.T + t, faces, K, _VIEW_SIZE, _VIEW_SIZE)
                part = torch.where(frags.face_id >= 0, face_part[frags.face_id.clamp_min(0)], -1)
                self.views.append(_View(Rt, t, K, torch.as_tensor(eye, dtype=torch.float32), frags.depth, part))

    def visible(
        self, points: torch.Tensor, normals: torch.Tensor, part: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which samples a view sees, and which of the two-sided ones it sees only from behind."""
        front = torch.zeros(points.shape[0], dtype=torch.bool)
        back = torch.zeros_like(front)
        two_sided = torch.zeros_like(front)
        for pid in _TWO_SIDED:
            two_sided |= part == pid
        for v in self.views:
            to_cam = v.center[None] - points
            facing = (normals * to_cam).sum(-1) / to_cam.norm(dim=-1).clamp_min(1e-9)
            cam = points @ v.R.T + v.t
            z = cam[:, 2].clamp_min(1e-6)
            u = v.K[0, 0] * cam[:, 0] / z + v.K[0, 2]
            w = v.K[1, 1] * cam[:, 1] / z + v.K[1, 2]
            col, row = u.floor().long(), w.floor().long()
            inside = (col >= 0) & (col < _VIEW_SIZE) & (row >= 0) & (row < _VIEW_SIZE)
            col, row = col.clamp(0, _VIEW_SIZE - 1), row.clamp(0, _VIEW_SIZE - 1)
            cos = facing.abs().clamp(_MIN_FACING, 1.0)
            tol = 0.004 + z / v.K[0, 0] * torch.sqrt(1 - cos * cos) / cos  # pixel footprint x slope
            hit = inside & (v.part[row, col] == part) & ((v.depth[row, col] - z).abs() < tol)
            front |= hit & (facing > _MIN_FACING)
            back |= hit & two_sided & (facing < -_MIN_FACING)
        return front | back, back & ~front


def _oriented_normals(normals: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    flip = torch.zeros_like(part, dtype=torch.bool)
    for pid in _FLIP_PARTS:
        flip |= part == pid
    return torch.where(flip[:, None], -normals, normals)


def _draw(
    verts: torch.Tensor,
    faces: torch.Tensor,
    face_part: torch.Tensor,
    count: int,
    gen: torch.Generator,
    scanner: Optional[_Scanner],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` samples uniform by area on the (observed) surface: face, bary, point, normal."""
    got: list[tuple[torch.Tensor, ...]] = []
    have, rate = 0, 1.0
    for _ in range(50):
        if have >= count:
            break
        n = int((count - have) / max(rate, 0.05) * 1.1) + 64
        face, bary, pts, nrm = sample_surface(verts, faces, n, generator=gen)
        nrm = _oriented_normals(nrm, face_part[face])
        if scanner is not None:
            keep, behind = scanner.visible(pts, nrm, face_part[face])
            nrm = torch.where(behind[:, None], -nrm, nrm)
            rate = max(float(keep.float().mean()), 1e-3)
            face, bary, pts, nrm = face[keep], bary[keep], pts[keep], nrm[keep]
        got.append((face, bary, pts, nrm))
        have += face.shape[0]
    if have < count:
        raise RuntimeError("the scanner views see too little of the mesh to draw samples from")
    return tuple(torch.cat([g[k] for g in got])[:count] for k in range(4))  # type: ignore[return-value]


def observed_surface_samples(
    verts: torch.Tensor, faces: torch.Tensor, count: int, gen: torch.Generator, box: tuple = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` area-uniform samples (points, outward normals) of what the virtual scanner sees of a
    posed FLAME-topology mesh (world units), as a scan's surface samples are drawn."""
    box_min, box_max = (np.asarray(b, dtype=np.float64) for b in (box or (ScanSetConfig.box_min, ScanSetConfig.box_max)))
    face_part = torch.as_tensor(P.build_template().face_part, dtype=torch.long)
    scanner = _Scanner(verts, faces, face_part, (box_min + box_max) / 2)
    _, _, pts, nrm = _draw(verts, faces, face_part, count, gen, scanner)
    return pts, nrm / nrm.norm(dim=-1, keepdim=True)


def _bary_points(verts: torch.Tensor, faces: torch.Tensor, face: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    return (verts[faces[face]] * bary[..., None]).sum(-2)


def _check_config(cfg: ScanSetConfig) -> None:
    for name in ("identities", "expressions", "surface_points", "near_points", "corr_points"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if not cfg.sigmas or any(not (s > 0) for s in cfg.sigmas):
        raise ValueError(f"--sigmas {' '.join(map(str, cfg.sigmas))}: give one or more positive values")
    if not 0.0 <= cfg.box_share <= 1.0:
        raise ValueError(f"--box-share {cfg.box_share}: must lie in [0, 1]")
    if any(lo >= hi for lo, hi in zip(cfg.box_min, cfg.box_max)):
        raise ValueError(f"--box-min {cfg.box_min} / --box-max {cfg.box_max}: every min must be below its max")
    if not 0.0 <= cfg.max_jaw <= 1.0:
        raise ValueError(f"--max-jaw {cfg.max_jaw}: must lie in [0, 1] radians")
    if cfg.num_expression < len(P.EXPRESSION_NAMES) or cfg.num_expression > P.NUM_EXPRESSION:
        raise ValueError(
            f"--num-expression {cfg.num_expression}: must lie in [{len(P.EXPRESSION_NAMES)}, {P.NUM_EXPRESSION}]"
        )
    if cfg.num_shape < 1 or cfg.num_shape > P.NUM_SHAPE:
        raise ValueError(f"--num-shape {cfg.num_shape}: must lie in [1, {P.NUM_SHAPE}]")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def make_scans(out: Path | str, cfg: ScanSetConfig, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Synthesise a scan set into ``out`` (which must not exist); see the module docstring.

    ``progress(done, total)`` is called after every scan. Returns figures: ``scans``,
    ``bytes`` (the whole folder), ``total_s`` and ``per_scan_s``.

    Runs torch single-threaded (restored on return): the tensors are small, threads
    gain nothing, and on a busy machine torch's spinning thread pool made a 6-scan set
    take 72 s instead of 5 s.
    """
    _check_config(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _make_scans(Path(out), cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _make_scans(out: Path, cfg: ScanSetConfig, progress: Optional[Callable[[int, int], None]]) -> dict:
    t_start = time.perf_counter()
    box_min, box_max = np.asarray(cfg.box_min, dtype=np.float64), np.asarray(cfg.box_max, dtype=np.float64)
    n_box = round(cfg.near_points * cfg.box_share)
    n_disp = cfg.near_points - n_box
    total = cfg.identities * cfg.expressions
    with atomic_dir(out) as tmp:
        model_path = tmp / "flame" / MODEL_FILENAME
        P.write_procedural_flame(model_path, seed=cfg.seed)
        flame = FlameModel.from_file(model_path, num_shape=cfg.num_shape, num_expression=cfg.num_expression)
        template = P.build_template()
        faces = flame.faces
        face_part = torch.as_tensor(template.face_part, dtype=torch.long)
        canon_template = torch.as_tensor(template.vertices, dtype=torch.float32)
        _save_npz(tmp / TOPOLOGY, {"faces": faces.numpy().astype(np.int64)})
        target = (box_min + box_max) / 2
        identities, scans, done = [], [], 0
        for i in range(cfg.identities):
            iseed = identity_seed(cfg.seed, i)
            shape = subject_shape(iseed, cfg.num_shape)
            look = Look.from_seed(iseed)
            rng = np.random.default_rng([cfg.seed, i, 1])
            params = [scan_parameters(rng, j, cfg.num_expression, cfg.max_jaw) for j in range(cfg.expressions)]
            expr = torch.as_tensor(np.stack([p[0] for p in params]), dtype=torch.float32)
            pose = torch.as_tensor(np.stack([p[1] for p in params]), dtype=torch.float32)
            shape_t = torch.as_tensor(shape, dtype=torch.float32)[None]
            with torch.no_grad():  # one scan at a time: a scan does not depend on the set's size
                posed = [
                    flame(shape=shape_t, expression=expr[j : j + 1], pose=pose[j : j + 1]).vertices[0]
                    for j in range(len(params))
                ]
            posed = [v * WORLD_SCALE for v in posed]
            neutral = posed[0]  # expression 0: zero expression and pose, the identity's neutral registration
            identities.append({"index": i, "seed": iseed, "shape": shape.tolist(), "look": asdict(look)})
            for j in range(cfg.expressions):
                verts = posed[j]
                lo, hi = verts.min(0).values.numpy(), verts.max(0).values.numpy()
                if (lo < box_min).any() or (hi > box_max).any():
                    raise ValueError(
                        f"identity {i} expression {j} spans {np.round(lo, 3).tolist()}..{np.round(hi, 3).tolist()}, "
                        f"outside the box: widen --box-min / --box-max"
                    )
                gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, i, j, 2]).integers(2**62)))
                scanner = _Scanner(verts, faces, face_part, target) if cfg.observed_only else None
                face, bary, pts, nrm = _draw(verts, faces, face_part, cfg.surface_points + n_disp, gen, scanner)
                col, _ = shade_material(
                    _bary_points(canon_template, faces, face, bary), face_part[face], look, template
                )
                s_pts, s_nrm, s_col = pts[: cfg.surface_points], nrm[: cfg.surface_points], col[: cfg.surface_points]
                # Near points: a second set of surface samples moved along their normals.
                d_pts, d_nrm, d_col = pts[cfg.surface_points :], nrm[cfg.surface_points :], col[cfg.surface_points :]
                sig = torch.as_tensor(cfg.sigmas, dtype=torch.float32)[torch.arange(n_disp) % len(cfg.sigmas)]
                sig = sig[torch.randperm(n_disp, generator=gen)]
                offset = torch.randn(n_disp, generator=gen) * sig
                near = d_pts + offset[:, None] * d_nrm
                box = torch.as_tensor(box_min, dtype=torch.float32) + torch.rand(
                    n_box, 3, generator=gen
                ) * torch.as_tensor(box_max - box_min, dtype=torch.float32)
                if n_box:
                    from scipy.spatial import cKDTree

                    nearest = cKDTree(s_pts.numpy()).query(box.numpy())[1]
                    box_col = s_col[torch.as_tensor(nearest)]
                else:
                    box_col = s_col[:0]
                near = torch.cat([near, box]).clamp(torch.as_tensor(box_min).float(), torch.as_tensor(box_max).float())
                near_col = torch.cat([d_col, box_col])
                c_face, c_bary, c_pts, _ = _draw(verts, faces, face_part, cfg.corr_points, gen, scanner)
                c_canon = _bary_points(neutral, faces, c_face, c_bary)
                arrays = {
                    "surface_points": s_pts,
                    "surface_normals": s_nrm / s_nrm.norm(dim=-1, keepdim=True),
                    "surface_colors": s_col,
                    "near_points": near,
                    "near_colors": near_col,
                    "corr_posed": c_pts,
                    "corr_canonical": c_canon,
                    "vertices": verts,
                }
                name = f"scans/id{i:03d}_ex{j:02d}.npz"
                _save_npz(tmp / name, {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in arrays.items()})
                scans.append(
                    {
                        "file": name,
                        "identity": i,
                        "expression_index": j,
                        "is_neutral": j == 0,
                        "expression": expr[j].tolist(),
                        "pose": pose[j].tolist(),
                    }
                )
                done += 1
                if progress is not None:
                    progress(done, total)
        counts = {
            "surface": cfg.surface_points,
            "near": cfg.near_points,
            "near_box": n_box,
            "corr": cfg.corr_points,
            "vertices": int(flame.num_vertices),
            "faces": int(faces.shape[0]),
        }
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "generator": "headstudio hs-synth scans",
            "config": asdict(cfg),
            "seed": cfg.seed,
            "flame_model": f"flame/{MODEL_FILENAME}",
            "flame_model_seed": cfg.seed,
            "units": "world units = FLAME metres x 4",
            "world_scale": WORLD_SCALE,
            "axes": "FLAME's: y up, face along +z, subject's left at +x; zero global rotation",
            "box": {"min": box_min.tolist(), "max": box_max.tolist()},
            "topology": TOPOLOGY,
            "counts": counts,
            "arrays": {k: {"shape": list(s), "dtype": "float32", "meaning": m} for k, (s, m) in ARRAYS.items()},
            "near_points": {
                "sigmas": list(cfg.sigmas),
                "box_rows": f"the last {n_box} rows, uniform in the box",
                "observed_only": cfg.observed_only,
            },
            "identities": identities,
            "scans": scans,
        }
        with atomic_path(tmp / MANIFEST) as mtmp:
            mtmp.write_text(json.dumps(manifest, indent=1))
    total_s = time.perf_counter() - t_start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"scans": total, "bytes": size, "total_s": total_s, "per_scan_s": total_s / total}


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ScanEntry:
    """One scan of a set, as the manifest lists it."""

    path: Path
    file: str
    identity: int
    expression_index: int
    is_neutral: bool
    expression: Optional[np.ndarray] = None
    pose: Optional[np.ndarray] = None


@dataclass
class ScanSet:
    """A validated scan set: the manifest, its scans and the registration topology."""

    root: Path
    manifest: dict
    scans: list[ScanEntry]
    counts: dict[str, int]
    box_min: np.ndarray
    box_max: np.ndarray
    _faces: Optional[np.ndarray] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.scans)

    @property
    def identities(self) -> list[int]:
        return sorted({s.identity for s in self.scans})

    def of_identity(self, identity: int) -> list[ScanEntry]:
        return [s for s in self.scans if s.identity == identity]

    def neutral(self, identity: int) -> Optional[ScanEntry]:
        return next((s for s in self.scans if s.identity == identity and s.is_neutral), None)

    def load(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of scan ``index``, validated against the set's counts."""
        return load_scan(self.scans[index].path, counts=self.counts)

    @property
    def faces(self) -> np.ndarray:
        if self._faces is None:
            self._faces = _load_topology(self.root / self.manifest["topology"], self.counts.get("vertices"))
        return self._faces


def _fail(file: Path | str, where: str, message: str) -> DataError:
    return DataError(f"{file}: field '{where}': {message}")


def _require(doc: dict, key: str, kinds: tuple[type, ...], file: Path, where: str = "") -> Any:
    name = f"{where}{key}"
    if key not in doc:
        raise _fail(file, name, "missing")
    value = doc[key]
    if isinstance(value, bool) and bool not in kinds:
        raise _fail(file, name, f"expected {'/'.join(k.__name__ for k in kinds)}, got a bool")
    if not isinstance(value, kinds):
        raise _fail(file, name, f"expected {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    return value


def _number_list(value: Any, file: Path, where: str, length: Optional[int] = None) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise _fail(file, where, "expected a list of numbers")
    arr = np.asarray(value, dtype=np.float64)
    if length is not None and arr.shape != (length,):
        raise _fail(file, where, f"expected {length} numbers, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise _fail(file, where, "not finite")
    return arr


def open_scan_set(path: Path | str) -> ScanSet:
    """Read and validate a scan set folder (or its ``manifest.json``).

    Raises :class:`~headstudio.data.errors.DataError` (one line naming the file and field)
    for a missing or unreadable manifest, another format or version, a malformed scan list
    or a scan or topology file that does not exist. The scan files themselves are checked
    when loaded (:meth:`ScanSet.load`, :func:`load_scan`).
    """
    path = Path(path)
    root = path.parent if path.name == MANIFEST and path.is_file() else path
    mpath = root / MANIFEST
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a scan set written by hs-synth scans)")
    if not mpath.is_file():
        raise DataError(f"{mpath}: missing; {root} is not a scan set (or was not finished)")
    try:
        doc = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{mpath}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{mpath}: expected a JSON object, got {type(doc).__name__}")
    fmt = _require(doc, "format", (str,), mpath)
    if fmt != FORMAT_NAME:
        raise _fail(mpath, "format", f"'{fmt}' is not '{FORMAT_NAME}'")
    version = _require(doc, "version", (int,), mpath)
    if version != FORMAT_VERSION:
        raise _fail(mpath, "version", f"{version} is not supported (this reader reads version {FORMAT_VERSION})")
    counts_doc = _require(doc, "counts", (dict,), mpath)
    counts = {}
    for key in ("surface", "near", "near_box", "corr", "vertices"):
        value = _require(counts_doc, key, (int,), mpath, "counts.")
        if value < (0 if key == "near_box" else 1):
            raise _fail(mpath, f"counts.{key}", f"{value} is out of range")
        counts[key] = value
    if counts["near_box"] > counts["near"]:
        raise _fail(mpath, "counts.near_box", f"{counts['near_box']} exceeds counts.near {counts['near']}")
    box = _require(doc, "box", (dict,), mpath)
    box_min = _number_list(box.get("min"), mpath, "box.min", 3)
    box_max = _number_list(box.get("max"), mpath, "box.max", 3)
    if (box_min >= box_max).any():
        raise _fail(mpath, "box", "every min must be below its max")
    topology = _require(doc, "topology", (str,), mpath)
    if not (root / topology).is_file():
        raise _fail(mpath, "topology", f"names {root / topology}, which does not exist")
    raw = _require(doc, "scans", (list,), mpath)
    if not raw:
        raise _fail(mpath, "scans", "empty: the set has no scans")
    scans, seen = [], set()
    for k, entry in enumerate(raw):
        where = f"scans[{k}]."
        if not isinstance(entry, dict):
            raise _fail(mpath, f"scans[{k}]", "expected an object")
        file = _require(entry, "file", (str,), mpath, where)
        identity = _require(entry, "identity", (int,), mpath, where)
        expression_index = _require(entry, "expression_index", (int,), mpath, where)
        is_neutral = _require(entry, "is_neutral", (bool,), mpath, where)
        if identity < 0 or expression_index < 0:
            raise _fail(mpath, where + ("identity" if identity < 0 else "expression_index"), "must not be negative")
        scan_path = root / file
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise _fail(mpath, where + "file", f"'{file}' must be a path inside the set's folder")
        if not scan_path.is_file():
            raise _fail(mpath, where + "file", f"names {scan_path}, which does not exist")
        if file in seen:
            raise _fail(mpath, where + "file", f"'{file}' is listed twice")
        seen.add(file)
        expression = (
            _number_list(entry["expression"], mpath, where + "expression")
            if entry.get("expression") is not None
            else None
        )
        pose = _number_list(entry["pose"], mpath, where + "pose", 15) if entry.get("pose") is not None else None
        scans.append(ScanEntry(scan_path, file, identity, expression_index, is_neutral, expression, pose))
    return ScanSet(root, doc, scans, counts, box_min, box_max)


def _load_topology(path: Path, num_vertices: Optional[int]) -> np.ndarray:
    arrays = _read_npz(path, ("faces",))
    faces = arrays["faces"]
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
        raise _fail(path, "faces", f"expected (F, 3) integers, got {faces.shape} {faces.dtype}")
    if faces.size and (faces.min() < 0 or (num_vertices is not None and faces.max() >= num_vertices)):
        raise _fail(path, "faces", f"indices outside [0, {num_vertices})")
    return faces.astype(np.int64)


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({_first_line(exc)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive (a single .npy array)")
    out = {}
    with npz:
        for key in keys:
            if key not in npz.files:
                raise _fail(path, key, "missing")
            try:
                out[key] = npz[key]
            except Exception as exc:  # noqa: BLE001 - zlib, CRC, truncated member, pickled object arrays
                raise DataError(
                    f"{path}: field '{key}': unreadable ({_first_line(exc)}): the file is corrupt"
                ) from None
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_scan(path: Path | str, counts: Optional[dict[str, int]] = None) -> dict[str, np.ndarray]:
    """The arrays of one scan file, validated (see the module docstring for the keys).

    Every key must be there, (N, 3) float32 and finite, the arrays of a group (surface,
    near, corr) of one length, normals of unit length, colours in [0, 1]; with ``counts``
    (a set's ``manifest["counts"]``) the lengths must match them. Anything else raises a
    one-line :class:`~headstudio.data.errors.DataError` naming the file and field.
    """
    path = Path(path)
    arrays = _read_npz(path, tuple(ARRAYS))
    lengths: dict[str, int] = {}
    for key, (shape, _) in ARRAYS.items():
        a = arrays[key]
        if a.dtype != np.float32:
            raise _fail(path, key, f"dtype {a.dtype}, expected float32")
        if a.ndim != 2 or a.shape[1] != 3:
            raise _fail(path, key, f"shape {a.shape}, expected ({shape[0]}, 3)")
        group = shape[0]
        if group in lengths and a.shape[0] != lengths[group]:
            raise _fail(path, key, f"{a.shape[0]} rows but the other '{group}' arrays have {lengths[group]}")
        lengths[group] = a.shape[0]
        if counts is not None and group in counts and a.shape[0] != counts[group]:
            raise _fail(path, key, f"{a.shape[0]} rows, the manifest's counts.{group} says {counts[group]}")
        if a.shape[0] == 0:
            raise _fail(path, key, "empty")
        bad = ~np.isfinite(a)
        if bad.any():
            raise _fail(
                path,
                key,
                f"{int(bad.any(-1).sum())} row(s) not finite (NaN or inf), first row {int(np.argmax(bad.any(-1)))}",
            )
    norms = np.linalg.norm(arrays["surface_normals"], axis=-1)
    if np.abs(norms - 1).max() > 1e-3:
        raise _fail(
            path, "surface_normals", f"not unit length (row {int(np.argmax(np.abs(norms - 1)))}: {norms.max():.4g})"
        )
    for key in ("surface_colors", "near_colors"):
        a = arrays[key]
        if a.min() < 0 or a.max() > 1:
            raise _fail(path, key, f"values outside [0, 1] ({a.min():.4g}..{a.max():.4g})")
    return arrays
