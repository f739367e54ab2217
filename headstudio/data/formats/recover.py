"""Recovering the FLAME parameters a layout does not write, from its tracked meshes.

INSTA writes only the expression of each frame; MonoNPHM's layout writes no FLAME parameters
at all, only metrical-tracker's meshes. Both meshes are FLAME in FLAME space (metres, no
global rotation: the head pose is in the camera), so the missing parameters follow by least
squares on the FLAME model (:func:`headstudio.flame.fitting.fit_flame_to_meshes`): the shape
once per subject, jaw, eyes and neck per frame (and the expression too where none is given).
The fit runs once and is cached in ``<subject>/.headstudio/flame_fit.npz``, keyed by a
fingerprint of the meshes, the given expressions and the FLAME file; ``hs-check-data``
reports its residual.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from headstudio.data.errors import DataError
from headstudio.data.formats.common import VideoSubject
from headstudio.export.ply import read_ply
from headstudio.utils.atomic import atomic_path

CACHE_NAME = "flame_fit.npz"
FIT_VERSION = 1


@dataclass
class Recovery:
    """What was recovered, and how well the FLAME model reproduces the tracked meshes."""

    what: str
    frames: int
    residual_mm_mean: float
    residual_mm_max: float
    cached: bool
    path: Path

    def summary(self) -> str:
        how = "read from the cache" if self.cached else "fitted now and cached"
        return (
            f"recovered {self.what} of {self.frames} frames from their tracked meshes ({how}: {self.path}); "
            f"fit residual {self.residual_mm_mean:.3g} mm mean, {self.residual_mm_max:.3g} mm max (RMS vertex distance per frame)"
        )


def read_mesh_vertices(path: Path) -> np.ndarray:
    """Vertices of an OBJ (``v x y z`` lines) or PLY mesh, as (V, 3) float64."""
    if path.suffix.lower() == ".ply":
        return read_ply(path)[0]
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    try:
        verts = np.asarray(rows, dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: a 'v' line does not hold three numbers") from None
    if verts.ndim != 2 or verts.shape[1] != 3 or not len(verts):
        raise DataError(f"{path}: no vertices found")
    return verts


def _fingerprint(subject: VideoSubject, flame_path: Path) -> str:
    h = hashlib.sha256(f"v{FIT_VERSION}:{subject.recover}".encode())
    for f in subject.frames:
        st = f.mesh.stat()
        h.update(f"{f.mesh}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(np.ascontiguousarray(f.expression, dtype=np.float64).tobytes())
    st = Path(flame_path).stat()
    h.update(f"{Path(flame_path).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(np.ascontiguousarray(subject.shape, dtype=np.float64).tobytes())
    return h.hexdigest()


def recover_flame_parameters(
    subject: VideoSubject, flame_path: Path, progress: Optional[Callable[[int, int], None]] = None
) -> Optional[Recovery]:
    """Fill in ``subject``'s missing FLAME parameters from its meshes (cached); None if it needs none."""
    if subject.recover is None or not subject.frames:
        return None
    from headstudio.flame.fitting import fit_flame_to_meshes
    from headstudio.flame.model import FlameModel

    missing = [f.mesh for f in subject.frames if f.mesh is None or not f.mesh.exists()]
    if missing:
        raise DataError(f"{missing[0]}: tracked mesh not found; it is needed to recover the FLAME parameters the layout lacks")
    cache = subject.cache / CACHE_NAME
    key = _fingerprint(subject, flame_path)
    with_expression = subject.recover == "pose+expression"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            if str(data["fingerprint"]) == key:
                fit = {k: data[k] for k in ("shape", "expression", "pose", "residual")}
                return _apply(subject, fit, with_expression, cache, cached=True)
    from headstudio.flame.files import load_flame_arrays

    arrays = load_flame_arrays(flame_path)
    num_shape = min(300, arrays.num_shape_total)
    given = None if with_expression else np.stack([f.expression for f in subject.frames])
    num_expr = min(100, arrays.num_expression_total) if given is None else min(given.shape[1], arrays.num_expression_total)
    flame = FlameModel(arrays, num_shape=num_shape, num_expression=num_expr).double()
    verts = []
    for f in subject.frames:
        v = read_mesh_vertices(f.mesh)
        if v.shape[0] != flame.num_vertices:
            raise DataError(f"{f.mesh}: the tracked mesh has {v.shape[0]} vertices but the FLAME model {flame_path} has {flame.num_vertices}")
        verts.append(v)
    shape0 = None
    if subject.shape.size:
        shape0 = np.zeros(num_shape)
        n = min(num_shape, subject.shape.size)
        shape0[:n] = subject.shape[:n]
    try:
        result = fit_flame_to_meshes(flame, np.stack(verts), expression=given, fit_shape=True, shape=shape0, progress=progress)
    except ValueError as exc:
        raise DataError(f"{subject.root}: cannot fit FLAME to the tracked meshes: {exc}") from None
    fit = {"shape": result.shape, "expression": result.expression, "pose": result.pose, "residual": result.residual}
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, fingerprint=np.array(key), **fit)
    return _apply(subject, fit, with_expression, cache, cached=False)


def _apply(subject: VideoSubject, fit: dict, with_expression: bool, path: Path, cached: bool) -> Recovery:
    subject.shape = np.asarray(fit["shape"], dtype=np.float64)
    for k, f in enumerate(subject.frames):
        f.pose = np.asarray(fit["pose"][k], dtype=np.float64)
        if with_expression:
            f.expression = np.asarray(fit["expression"][k], dtype=np.float64)
    res = np.asarray(fit["residual"], dtype=np.float64) * 1000.0
    what = "shape, expression, jaw, eyes and neck" if with_expression else "shape, jaw, eyes and neck"
    return Recovery(what, len(subject.frames), float(res.mean()), float(res.max()), cached, path)
