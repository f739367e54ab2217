"""Geometry metrics between two surfaces given as oriented point samples.

The reconstruction metrics of NPHM / MonoNPHM (Giebenhain et al. 2023, 2024) and of the Kinect
evaluation: L1-Chamfer (the mean of unsquared nearest-neighbour distances, both ways, averaged),
normal consistency (the mean absolute cosine between the normals of nearest neighbours, both
ways) and the F-score at a distance threshold. Surfaces are sampled uniformly by area
(:func:`headstudio.ops.mesh.sample_surface`) before comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float
from scipy.spatial import cKDTree


@dataclass
class SurfaceDistance:
    chamfer_l1: float
    """(mean d(pred -> gt) + mean d(gt -> pred)) / 2, in the points' units."""
    accuracy: float
    """Mean distance from the predicted points to the ground truth."""
    completeness: float
    """Mean distance from the ground-truth points to the prediction."""
    normal_consistency: float
    """Mean |cos| between nearest neighbours' normals, both ways averaged (1 = identical)."""
    fscore: float
    """Harmonic mean of precision and recall at ``threshold``."""
    threshold: float


def surface_distance(
    pred_points: Float[np.ndarray, "N 3"],
    pred_normals: Float[np.ndarray, "N 3"],
    gt_points: Float[np.ndarray, "M 3"],
    gt_normals: Float[np.ndarray, "M 3"],
    threshold: float,
) -> SurfaceDistance:
    """Chamfer, normal consistency and F-score between two oriented point samples."""
    if len(pred_points) == 0 or len(gt_points) == 0:
        raise ValueError("surface_distance needs points on both surfaces (one of them is empty)")
    d_pg, i_pg = cKDTree(gt_points).query(pred_points)
    d_gp, i_gp = cKDTree(pred_points).query(gt_points)
    unit = lambda n: n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    pn, gn = unit(np.asarray(pred_normals, np.float64)), unit(np.asarray(gt_normals, np.float64))
    nc_pg = np.abs((pn * gn[i_pg]).sum(-1)).mean()
    nc_gp = np.abs((gn * pn[i_gp]).sum(-1)).mean()
    precision, recall = (d_pg < threshold).mean(), (d_gp < threshold).mean()
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return SurfaceDistance(
        chamfer_l1=float((d_pg.mean() + d_gp.mean()) / 2),
        accuracy=float(d_pg.mean()),
        completeness=float(d_gp.mean()),
        normal_consistency=float((nc_pg + nc_gp) / 2),
        fscore=float(f),
        threshold=float(threshold),
    )
