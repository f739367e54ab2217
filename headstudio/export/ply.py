"""Binary PLY meshes (write and read), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from headstudio.utils.atomic import atomic_path


def write_ply(path: os.PathLike | str, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a triangle mesh as binary little-endian PLY (float32 xyz, int32 faces)."""
    vertices = np.ascontiguousarray(vertices, dtype="<f4")
    faces = np.asarray(faces, dtype="<i4")
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode("ascii")
    face_rec = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rec["n"] = 3
    face_rec["idx"] = faces
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(vertices.tobytes())
            fh.write(face_rec.tobytes())


def read_ply(path: os.PathLike | str) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh written by :func:`write_ply` (or any PLY via plyfile)."""
    from plyfile import PlyData

    data = PlyData.read(str(Path(path)))
    v = data["vertex"]
    verts = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float64)
    faces = np.stack(data["face"]["vertex_indices"]).astype(np.int64) if data["face"].count else np.zeros((0, 3), np.int64)
    return verts, faces
