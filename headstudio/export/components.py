"""Connected components of a triangle mesh: keep the head, drop the floaters.

Marching cubes of a field trained on a few views leaves small disconnected blobs (floaters)
all over the box besides the head. The head is the largest component; components at least
``min_fraction`` of its face count (e.g. a separate ear or eyeball surface) are kept with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class ComponentFilter:
    """What :func:`keep_head_components` kept and dropped."""

    num_components: int
    kept_components: int
    dropped_faces: int
    kept_faces: int

    @property
    def dropped_components(self) -> int:
        return self.num_components - self.kept_components

    def describe(self) -> str:
        share = self.kept_faces / max(1, self.kept_faces + self.dropped_faces)
        return (
            f"kept {self.kept_components} of {self.num_components} connected components ({share:.1%} of the faces), "
            f"dropped {self.dropped_components} ({self.dropped_faces} faces)"
        )


def face_components(num_vertices: int, faces: np.ndarray) -> tuple[int, np.ndarray]:
    """Number of edge-connected components and each face's component label."""
    if len(faces) == 0:
        return 0, np.zeros(0, dtype=np.int64)
    f = np.asarray(faces, dtype=np.int64)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    count, vertex_label = connected_components(graph, directed=False)
    return count, vertex_label[f[:, 0]]


def keep_head_components(
    vertices: np.ndarray, faces: np.ndarray, min_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray, ComponentFilter]:
    """The largest component and every component with at least ``min_fraction`` of its faces.

    Unused vertices are removed and the faces re-indexed; isolated vertices count as no component.
    """
    _, label = face_components(len(vertices), faces)
    if len(faces) == 0:
        return vertices, faces, ComponentFilter(0, 0, 0, 0)
    uniq, sizes = np.unique(label, return_counts=True)
    keep_labels = uniq[sizes >= min_fraction * sizes.max()]
    keep = np.isin(label, keep_labels)
    kept_faces = np.asarray(faces)[keep]
    used = np.unique(kept_faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    report = ComponentFilter(len(uniq), len(keep_labels), int((~keep).sum()), int(keep.sum()))
    return vertices[used], remap[kept_faces].astype(np.asarray(faces).dtype), report
