"""The Kinect geometry evaluation of MonoNPHM (Giebenhain et al. 2024, §5.1), shared by every method.

The ground truth is the back-projected depth map of a frame, restricted to the face; the
reconstruction is a mesh of the method in that frame (``FrameMesher``). Following §5.1 and
MonoNPHM's ``scripts/evaluation/eval.py``:

1. Back-projection (:func:`backproject_depth`): uint16 depth (Kinect: camera z in millimetres,
   OpenCV) times ``depth_to_world`` -> world points through a nerfstudio camera (OpenGL axes,
   pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``), with per-pixel normals from a local PCA of
   the points in a ``normal_window`` x ``normal_window`` window (MonoNPHM uses an 11-px Sobel
   kernel on its 1080-px frames; the window is scaled with the frame width), turned towards
   the camera.
2. Foreground (:class:`DepthForeground`, :func:`face_evaluation_region`): depth within ``near_m..far_m``,
   a viewing angle with ``cos > 0.2`` between the normal and the direction to the camera, and
   the face classes of the face parsing (see :data:`FACE_CLASSES`) minus dilated eye, mouth
   interior and neck regions.
3. Alignment (:func:`similarity_icp`): a similarity transform moving the mesh onto the depth
   points ("to eliminate any remaining depth ambiguity"), ICP with Umeyama's closed form on
   pairs of each depth point and its closest point on the mesh, pairs farther than 1 cm dropped
   (MonoNPHM's ICP distance threshold).
4. Metrics (:func:`kinect_geometry`), unidirectional from the depth points to the mesh, with
   *exact* point-to-triangle distances (:func:`closest_points_on_mesh`, as eval.py's
   ``pcu.closest_points_on_mesh``; no sampling error):
   L1-Chamfer (mean Euclidean distance, metres), normal consistency (mean ``|cos|`` between the
   depth normal and the closest face's normal) and recall (share of depth points within 2.5 mm
   of the mesh).

Face-parsing classes are facer's CelebAMask-HQ ones, the ids MonoNPHM's ``run_facer.py`` writes
to ``seg/{t}.png`` and the synthetic subjects use (:data:`headstudio.data.synth.texture.LABELS`):
0 background, 1 neck, 2 face skin, 3 cloth, 4/5 right/left ear, 6/7 right/left brow, 8/9
right/left eye, 10 nose, 11 mouth interior, 12 lower lip, 13 upper lip, 14 hair (15+:
eyeglasses, hat, earring, necklace, facer's background).

Differences from eval.py: MonoNPHM's ``chamfer_l1`` sums the absolute coordinate differences
to the closest point (the L1 norm of the offset vector, 1..sqrt(3) x the Euclidean distance);
it is reported as :attr:`KinectGeometry.chamfer_manhattan_m` beside the Euclidean mean. Its ICP
is a point-to-plane gradient descent from the mesh vertices; here closed-form steps from the
depth points to their closest mesh points. Its depth range is 0.01..0.8 m (its subjects sit ~0.6 m from the sensor); the
default here, 0.2..1.5 m, also covers the synthetic subjects (camera 1 m from the head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy.spatial import cKDTree

from headstudio.ops.mesh import sample_surface

FACE_CLASSES: Tuple[int, ...] = (2, 6, 7, 10, 12, 13)
"""Face-parsing classes of the ground-truth points: face skin, brows, nose, lips (MonoNPHM's eval.py).
Left out: background 0, neck 1, cloth 3, ears 4/5, eyes 8/9, mouth interior 11, hair 14, 15+."""
EXCLUDE_DILATION: Tuple[Tuple[Tuple[int, ...], int], ...] = (((1,), 21), ((8, 9), 13), ((11,), 21))
"""(classes, square kernel in px of a 1080-px frame): neck, eyes and mouth interior, dilated and removed."""
REFERENCE_WIDTH = 1080
"""Frame width (px) of MonoNPHM's Kinect recordings, which the pixel sizes above refer to."""

ArrayOrPath = Union[np.ndarray, str, Path]


@dataclass
class DepthForeground:
    """Which back-projected depth pixels are ground truth (MonoNPHM §5.1 and its eval.py)."""

    near_m: float = 0.2
    """Nearest valid depth, metres (eval.py: 0.01)."""
    far_m: float = 1.5
    """Farthest valid depth, metres (eval.py: 0.8, for subjects ~0.6 m away; the synthetic ones are ~1 m away)."""
    min_view_cos: float = 0.2
    """Smallest cosine between the depth normal and the direction to the camera (eval.py: 0.2)."""
    keep_classes: Tuple[int, ...] = FACE_CLASSES
    """Face-parsing classes kept (:data:`FACE_CLASSES`)."""
    exclude_dilation: Tuple[Tuple[Tuple[int, ...], int], ...] = EXCLUDE_DILATION
    """Classes removed with a dilation (kernel px at 1080 px width, scaled to the frame)."""
    normal_window: int = 11
    """Side of the local-PCA window of the depth normals, px at 1080 px width (eval.py: 11-px Sobel), scaled."""


@dataclass
class DepthPoints:
    """A back-projected depth map, per pixel (world units)."""

    points: Float[np.ndarray, "H W 3"]
    normals: Float[np.ndarray, "H W 3"]
    """Unit normals facing the camera (zero where there is none)."""
    valid: Bool[np.ndarray, "H W"]
    """Depth present, within the range, and a normal estimated."""
    view_cos: Float[np.ndarray, "H W"]
    """Cosine between the normal and the direction to the camera."""


@dataclass
class KinectGeometry:
    """Unidirectional geometry metrics from ground-truth points to a reconstructed mesh."""

    chamfer_l1_m: float
    """Mean Euclidean distance (metres) from each ground-truth point to the mesh surface."""
    chamfer_manhattan_m: float
    """Mean L1 norm (metres) of the offset to the closest mesh point: MonoNPHM eval.py's ``chamfer_l1``."""
    normal_consistency: float
    """Mean |cos| between each point's normal and the normal of its closest mesh face."""
    recall: float
    """Share of ground-truth points within ``threshold_m`` of the mesh."""
    threshold_m: float
    num_points: int
    icp_scale: float
    """Scale of the similarity transform applied to the mesh (1 without ICP)."""
    icp_rotation_deg: float
    icp_translation_m: float


def _odd(size_at_reference: int, width: int, minimum: int) -> int:
    k = size_at_reference * width / REFERENCE_WIDTH
    return max(minimum, 2 * int(round((k - 1) / 2)) + 1)


def load_depth(depth: ArrayOrPath) -> np.ndarray:
    """A depth map as an array (a PNG path is read unchanged: uint16)."""
    if isinstance(depth, (str, Path)):
        raw = cv2.imread(str(depth), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"{depth}: unreadable depth map")
        return raw if raw.ndim == 2 else raw[..., 0]
    return np.asarray(depth)


def load_segmentation(seg: ArrayOrPath, height: int, width: int) -> Int[np.ndarray, "H W"]:
    """Face-parsing classes resized (nearest) to ``height x width``."""
    if isinstance(seg, (str, Path)):
        raw = cv2.imread(str(seg), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"{seg}: unreadable segmentation")
    else:
        raw = np.asarray(seg)
    raw = raw if raw.ndim == 2 else raw[..., 0]
    if raw.shape != (height, width):
        raw = cv2.resize(raw, (width, height), interpolation=cv2.INTER_NEAREST)
    return raw.astype(np.int64)


def _local_pca_normals(cam: np.ndarray, valid: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest-eigenvector normals of the valid camera points in each window (OpenCV camera axes)."""
    w = valid.astype(np.float64)
    box = lambda a: cv2.boxFilter(a, cv2.CV_64F, (window, window), normalize=False, borderType=cv2.BORDER_CONSTANT)  # noqa: E731
    count = box(w)
    ok = valid & (count >= max(3, window * window // 3))
    if not ok.any():
        return np.zeros_like(cam), ok
    centre = np.where(valid[..., None], cam, 0.0)  # raw moments in float64: no harmful cancellation at head scale
    sums = [box(w * cam[..., i]) for i in range(3)]
    sq = {(i, j): box(w * cam[..., i] * cam[..., j]) for i in range(3) for j in range(i, 3)}
    n = count[ok]
    mean = np.stack([s[ok] for s in sums], -1) / n[:, None]
    cov = np.empty((len(n), 3, 3))
    for (i, j), s in sq.items():
        cov[:, i, j] = cov[:, j, i] = s[ok] / n - mean[:, i] * mean[:, j]
    _, vecs = np.linalg.eigh(cov)
    normal = vecs[:, :, 0]
    p = centre[ok]
    normal *= np.where((normal * p).sum(-1) > 0, -1.0, 1.0)[:, None]  # face the camera (at the origin)
    out = np.zeros_like(cam)
    out[ok] = normal
    return out, ok


def backproject_depth(
    depth: ArrayOrPath,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    camera_to_world: Float[np.ndarray, "3 4"],
    depth_to_world: float,
    depth_range: Optional[Tuple[float, float]] = None,
    normal_window: int = 3,
) -> DepthPoints:
    """World points and normals of a depth map of camera z (OpenCV; 0 = none) seen by a nerfstudio camera.

    ``fx, fy, cx, cy`` in pixels of the depth map, pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``;
    ``camera_to_world`` OpenGL axes (camera looks down -z); ``depth_to_world`` multiplies the stored
    values into world units; ``depth_range`` (world units) bounds valid depth; ``normal_window`` is
    the local-PCA window in pixels of this map.
    """
    raw = load_depth(depth).astype(np.float64)
    z = raw * depth_to_world
    valid = raw > 0
    if depth_range is not None:
        valid &= (z >= depth_range[0]) & (z <= depth_range[1])
    h, w = z.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    cam = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], -1)  # OpenCV camera axes
    normals, ok = _local_pca_normals(cam, valid, normal_window)
    dist = np.linalg.norm(cam, axis=-1)
    view_cos = np.where(ok, -(normals * cam).sum(-1) / np.maximum(dist, 1e-12), 0.0)
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    rot = c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes -> world
    points = cam @ rot.T + c2w[:3, 3]
    return DepthPoints(points, normals @ rot.T, ok, view_cos)


def face_evaluation_region(seg: Int[np.ndarray, "H W"], rule: DepthForeground = DepthForeground()) -> Bool[np.ndarray, "H W"]:
    """Pixels of the kept face classes outside the dilated excluded regions (kernels scaled to the width)."""
    keep = np.isin(seg, rule.keep_classes)
    for classes, size in rule.exclude_dilation:
        region = np.isin(seg, classes).astype(np.uint8)
        k = _odd(size, seg.shape[1], 1)
        if k > 1:
            region = cv2.dilate(region, np.ones((k, k), np.uint8))
        keep &= region == 0
    return keep


def depth_ground_truth(
    depth: ArrayOrPath,
    segmentation: Optional[ArrayOrPath],
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    camera_to_world: Float[np.ndarray, "3 4"],
    depth_to_world: float,
    world_to_metres: float,
    rule: DepthForeground = DepthForeground(),
) -> tuple[Float[np.ndarray, "N 3"], Float[np.ndarray, "N 3"]]:
    """The ground-truth points and normals of one frame (world units): :func:`backproject_depth` under
    :class:`DepthForeground`; without a segmentation, every valid pixel of the depth range."""
    raw = load_depth(depth)
    h, w = raw.shape
    to_world = 1.0 / world_to_metres
    bp = backproject_depth(
        raw, fx, fy, cx, cy, camera_to_world, depth_to_world, (rule.near_m * to_world, rule.far_m * to_world),
        _odd(rule.normal_window, w, 3),
    )  # fmt: skip
    keep = bp.valid & (bp.view_cos > rule.min_view_cos)
    if segmentation is not None:
        keep &= face_evaluation_region(load_segmentation(segmentation, h, w), rule)
    return bp.points[keep], bp.normals[keep]


# ------------------------------------------------------------------------------------- distances
def closest_points_on_triangles(
    p: Float[np.ndarray, "N 3"], a: Float[np.ndarray, "N 3"], b: Float[np.ndarray, "N 3"], c: Float[np.ndarray, "N 3"]
) -> Float[np.ndarray, "N 3"]:
    """Closest point of triangle ``(a, b, c)`` to ``p``, row by row (Ericson, Real-Time Collision Detection §5.1.5)."""
    dot = lambda x, y: (x * y).sum(-1)  # noqa: E731
    div = lambda x, y: np.divide(x, y, out=np.zeros_like(x), where=np.abs(y) > 1e-300)  # noqa: E731
    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c
    d1, d2, d3, d4, d5, d6 = dot(ab, ap), dot(ac, ap), dot(ab, bp), dot(ac, bp), dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    out = a + ab * div(vb, denom)[:, None] + ac * div(vc, denom)[:, None]  # interior
    # The regions, last assignment wins: Ericson's order of early returns, reversed.
    cases = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), lambda: b + (c - b) * div(d4 - d3, (d4 - d3) + (d5 - d6))[:, None]),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), lambda: a + ac * div(d2, d2 - d6)[:, None]),
        ((d6 >= 0) & (d5 <= d6), lambda: c),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), lambda: a + ab * div(d1, d1 - d3)[:, None]),
        ((d3 >= 0) & (d4 <= d3), lambda: b),
        ((d1 <= 0) & (d2 <= 0), lambda: a),
    ]
    for cond, value in cases:
        if cond.any():
            out = np.where(cond[:, None], value(), out)
    return out


def _face_proxies(tri: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Points standing in for the faces in the search tree: each face's centroid, or the centroids of
    its n x n sub-triangles for faces much larger than most (so one covering radius is tight for all).
    Returns the points, their faces and the covering radius (no face point is farther from its face's
    nearest proxy)."""
    centroid = tri.mean(1)
    radius = np.linalg.norm(tri - centroid[:, None], axis=-1).max(1)
    target = max(float(np.percentile(radius, 25)), 1e-12)
    n = np.maximum(1, np.ceil(radius / target)).astype(np.int64)
    points, owners, cover = [centroid[n == 1]], [np.nonzero(n == 1)[0]], [radius[n == 1].max(initial=0.0)]
    for k in np.unique(n[n > 1]):
        ids = np.nonzero(n == k)[0]
        i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        up = (i + j <= k - 1).ravel()
        down = (i + j <= k - 2).ravel()
        uv = np.concatenate([np.stack([i.ravel()[up] + 1 / 3, j.ravel()[up] + 1 / 3], -1),
                             np.stack([i.ravel()[down] + 2 / 3, j.ravel()[down] + 2 / 3], -1)]) / k  # fmt: skip
        a, ab, ac = tri[ids, 0], tri[ids, 1] - tri[ids, 0], tri[ids, 2] - tri[ids, 0]
        pts = a[:, None] + uv[None, :, :1] * ab[:, None] + uv[None, :, 1:] * ac[:, None]
        points.append(pts.reshape(-1, 3))
        owners.append(np.repeat(ids, len(uv)))
        cover.append(float((radius[ids] / k).max()))
    return np.concatenate(points), np.concatenate(owners), float(max(cover))


def closest_points_on_mesh(
    points: Float[np.ndarray, "N 3"],
    verts: Float[np.ndarray, "V 3"],
    faces: Int[np.ndarray, "F 3"],
    backend: Literal["auto", "open3d", "numpy"] = "auto",
) -> tuple[Float[np.ndarray, "N"], Int[np.ndarray, "N"], Float[np.ndarray, "N 3"]]:
    """Exact distance, closest face and closest point on a triangle mesh for each point.

    ``"open3d"`` (nerfstudio's dependency; ``"auto"`` when importable) finds the closest face with
    its BVH in float32, about 30x faster; the point on that face is then recomputed in float64.
    ``"numpy"`` is the pure reference (:func:`closest_points_on_mesh_numpy`)."""
    points = np.asarray(points, np.float64)
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64)
    if len(faces) == 0:
        raise ValueError("closest_points_on_mesh: the mesh has no faces")
    o3d = None
    if backend in ("auto", "open3d"):
        try:
            import open3d as o3d
        except ImportError:
            if backend == "open3d":
                raise
    if o3d is None:
        return closest_points_on_mesh_numpy(points, verts, faces)
    origin = verts.mean(0)  # centred: float32 keeps ~1e-7 of the head's size
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor((verts - origin).astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    face = scene.compute_closest_points(o3d.core.Tensor((points - origin).astype(np.float32)))["primitive_ids"].numpy()
    face = face.astype(np.int64)
    tri = verts[faces[face]]
    closest = closest_points_on_triangles(points, tri[:, 0], tri[:, 1], tri[:, 2])
    return np.linalg.norm(closest - points, axis=-1), face, closest


def closest_points_on_mesh_numpy(
    points: Float[np.ndarray, "N 3"], verts: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"], k: int = 16, chunk: int = 1 << 15
) -> tuple[Float[np.ndarray, "N"], Int[np.ndarray, "N"], Float[np.ndarray, "N 3"]]:
    """:func:`closest_points_on_mesh` in numpy and scipy (certified exact, float64).

    Candidates are the faces of the ``k`` nearest face proxies (centroids, or sub-triangle centroids of
    large faces); a point's answer is certified when it is no farther than the k-th proxy minus the
    proxies' covering radius (no other face can be closer), else the search widens (k x 2) for it.
    """
    points = np.asarray(points, np.float64)
    tri = np.asarray(verts, np.float64)[np.asarray(faces, np.int64)]
    if len(tri) == 0:
        raise ValueError("closest_points_on_mesh: the mesh has no faces")
    proxy, owner, radius = _face_proxies(tri)
    tree = cKDTree(proxy)
    dist = np.full(len(points), np.inf)
    face = np.zeros(len(points), np.int64)
    closest = np.zeros_like(points)
    for start in range(0, len(points), chunk):
        todo = np.arange(start, min(start + chunk, len(points)))
        kk = k
        while len(todo):
            kq = min(kk, len(proxy))
            dc, ic = tree.query(points[todo], k=kq)
            dc, ic = dc.reshape(len(todo), kq), owner[ic.reshape(len(todo), kq)]
            p = np.repeat(points[todo], kq, axis=0)
            t = tri[ic.reshape(-1)]
            q = closest_points_on_triangles(p, t[:, 0], t[:, 1], t[:, 2])
            d = np.linalg.norm(q - p, axis=-1).reshape(len(todo), kq)
            best = d.argmin(1)
            rows = np.arange(len(todo))
            better = d[rows, best] < dist[todo]
            upd = todo[better]
            dist[upd] = d[rows, best][better]
            face[upd] = ic[rows, best][better]
            closest[upd] = q.reshape(len(todo), kq, 3)[rows, best][better]
            if kq == len(proxy):
                break
            todo = todo[dist[todo] > dc[:, -1] - radius]
            kk *= 2
    return dist, face, closest


def face_normals(verts: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"]) -> Float[np.ndarray, "F 3"]:
    """Unit normals of the faces (counter-clockwise faces point outward)."""
    tri = np.asarray(verts, np.float64)[np.asarray(faces, np.int64)]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-20)


# ------------------------------------------------------------------------------------- alignment
def umeyama(src: Float[np.ndarray, "N 3"], dst: Float[np.ndarray, "N 3"]) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991): ``(s, R, t)``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(xd.T @ xs / len(src))
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rot = (u * sign) @ vt
    scale = float((d * sign).sum() / max((xs**2).sum() / len(src), 1e-300))
    return scale, rot, mu_d - scale * rot @ mu_s


def similarity_icp(
    source: Float[np.ndarray, "N 3"],
    target: Float[np.ndarray, "M 3"],
    iterations: int = 30,
    trim_distance: Optional[float] = None,
    faces: Optional[Int[np.ndarray, "F 3"]] = None,
    min_pairs: int = 10,
    tolerance: float = 1e-7,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``(s, R, t)`` moving ``source`` onto ``target`` (partial points, e.g. depth).

    Each iteration pairs every target point with its nearest source point (the target may cover
    only part of the source) -- a cKDTree of the ``source`` points, or, given the mesh ``faces``
    of ``source`` vertices, the exact closest point on the mesh (no sample-spacing floor) --, drops
    pairs farther than ``trim_distance`` (target units) and solves Umeyama's closed form; stops
    when the transform changes by less than ``tolerance`` (relative).
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if faces is None:
        tree = cKDTree(source)
        nearest = lambda x: (lambda d, i: (source[i], d))(*tree.query(x))  # noqa: E731
    else:
        nearest = lambda x: (lambda d, f, c: (c, d))(*closest_points_on_mesh(x, source, faces))  # noqa: E731
    scale, rot, trans = 1.0, np.eye(3), np.zeros(3)
    extent = float(np.linalg.norm(target.max(0) - target.min(0))) or 1.0
    for _ in range(iterations):
        local = (target - trans) @ rot / scale  # target in the source's frame
        pair, d = nearest(local)
        keep = np.ones(len(target), bool) if trim_distance is None else d * scale <= trim_distance
        if keep.sum() < min_pairs:
            break
        s, r, t = umeyama(pair[keep], target[keep])
        change = abs(s - scale) + np.abs(r - rot).max() + np.abs(t - trans).max() / extent
        scale, rot, trans = s, r, t
        if change < tolerance:
            break
    return scale, rot, trans


# --------------------------------------------------------------------------------------- metrics
def kinect_geometry(
    verts: Float[np.ndarray, "V 3"],
    faces: Int[np.ndarray, "F 3"],
    points: Float[np.ndarray, "N 3"],
    normals: Float[np.ndarray, "N 3"],
    threshold_m: float = 0.0025,
    world_to_metres: float = 1.0,
    icp: bool = True,
    icp_iterations: int = 50,
    icp_trim_m: Optional[float] = 0.01,
) -> KinectGeometry:
    """MonoNPHM's metrics from ground-truth ``points`` (with ``normals``) to the mesh, in metres.

    With ``icp`` the mesh is first moved onto the points by :func:`similarity_icp` with exact closest
    points on the mesh as partners (pairs beyond ``icp_trim_m`` dropped). Distances are exact
    point-to-triangle.
    """
    if len(points) == 0:
        raise ValueError("kinect_geometry: no ground-truth points (empty depth foreground)")
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64)
    points = np.asarray(points, np.float64)
    scale, rot, trans = 1.0, np.eye(3), np.zeros(3)
    if icp:
        trim = None if icp_trim_m is None else icp_trim_m / world_to_metres
        scale, rot, trans = similarity_icp(verts, points, icp_iterations, trim, faces=faces)
        verts = scale * verts @ rot.T + trans
    dist, face, closest = closest_points_on_mesh(points, verts, faces)
    n = np.asarray(normals, np.float64)
    n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    cos = np.abs((n * face_normals(verts, faces)[face]).sum(-1))
    d_m = dist * world_to_metres
    angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0)))
    return KinectGeometry(
        chamfer_l1_m=float(d_m.mean()),
        chamfer_manhattan_m=float(np.abs(points - closest).sum(-1).mean() * world_to_metres),
        normal_consistency=float(cos.mean()),
        recall=float((d_m <= threshold_m).mean()),
        threshold_m=float(threshold_m),
        num_points=int(len(points)),
        icp_scale=float(scale),
        icp_rotation_deg=float(angle),
        icp_translation_m=float(np.linalg.norm(trans) * world_to_metres),
    )


def mesh_geometry(
    verts: Float[np.ndarray, "V 3"],
    faces: Int[np.ndarray, "F 3"],
    gt_verts: Float[np.ndarray, "W 3"],
    gt_faces: Int[np.ndarray, "G 3"],
    threshold_m: float = 0.0025,
    world_to_metres: float = 1.0,
    num_points: int = 100_000,
    gt_faces_kept: Optional[Sequence[int]] = None,
    icp: bool = False,
    seed: int = 0,
) -> KinectGeometry:
    """The same metrics against a ground-truth mesh: its ``num_points`` area samples (with face
    normals) are the ground-truth points. ``gt_faces_kept`` restricts them to a region (face ids,
    e.g. the face of a FLAME-topology mesh); no ICP by default (both meshes in one world frame)."""
    gt_faces = np.asarray(gt_faces, np.int64)
    if gt_faces_kept is not None:
        gt_faces = gt_faces[np.asarray(gt_faces_kept, np.int64)]
    gen = torch.Generator().manual_seed(seed)
    _, _, pts, nrm = sample_surface(torch.as_tensor(np.asarray(gt_verts, np.float64)), torch.from_numpy(gt_faces), num_points, generator=gen)
    return kinect_geometry(verts, faces, pts.numpy(), nrm.numpy(), threshold_m, world_to_metres, icp=icp)


@dataclass
class FrameCamera:
    """A pinhole camera in nerfstudio's conventions (OpenGL c2w, pixel centres at +0.5)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    camera_to_world: Float[np.ndarray, "3 4"] = field(repr=False)

    def resized(self, width: int, height: int) -> "FrameCamera":
        """The camera at another resolution (intrinsics scaled; exact for pixel-centre coordinates)."""
        sx, sy = width / self.width, height / self.height
        return FrameCamera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height, self.camera_to_world)


def evaluate_depth_frame(
    verts: Float[np.ndarray, "V 3"],
    faces: Int[np.ndarray, "F 3"],
    depth: ArrayOrPath,
    segmentation: Optional[ArrayOrPath],
    camera: FrameCamera,
    depth_to_world: float,
    world_to_metres: float,
    threshold_m: float = 0.0025,
    rule: DepthForeground = DepthForeground(),
    icp: bool = True,
) -> KinectGeometry:
    """One eval image: the frame's mesh (world units) against its depth map seen by ``camera`` (any
    resolution: rescaled to the depth map's, which is full resolution)."""
    raw = load_depth(depth)
    cam = camera.resized(raw.shape[1], raw.shape[0])
    pts, nrm = depth_ground_truth(raw, segmentation, cam.fx, cam.fy, cam.cx, cam.cy, cam.camera_to_world, depth_to_world, world_to_metres, rule)
    return kinect_geometry(verts, faces, pts, nrm, threshold_m, world_to_metres, icp=icp)
