"""Tests of the pure-torch z-buffer rasterizer against brute-force and analytic references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headstudio.data.raster import Fragments, interpolate, project_points, rasterize


def intrinsics(f: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre x and y, each (H, W), in float64."""
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return jj, ii


def brute_force(points: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int, width: int):
    """Per-pixel, per-face reference in float64.

    Returns the nearest face id per pixel (-1 if none), its depth, and the smallest
    margin over faces and pixels of the edge functions (distance in pixels of a pixel
    centre to an edge line of a face it is tested against), to check test set-ups are not
    ambiguous.
    """
    P = points.double().numpy()
    Kd = K.double().numpy()
    uvw = P @ Kd.T
    xy = uvw[:, :2] / uvw[:, 2:3]
    z = P[:, 2]
    px, py = pixel_centres(height, width)
    best = np.full((height, width), np.inf)
    fid = np.full((height, width), -1)
    margin = np.full((height, width), np.inf)
    for f, (a, b, c) in enumerate(faces.numpy()):
        (x0, y0), (x1, y1), (x2, y2) = xy[a], xy[b], xy[c]
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if area == 0:
            continue
        w0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) / area
        w1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        lens = [math.hypot(x2 - x1, y2 - y1), math.hypot(x0 - x2, y0 - y2), math.hypot(x1 - x0, y1 - y0)]
        dist = np.minimum.reduce([np.abs(w) * abs(area) / length for w, length in zip((w0, w1, w2), lens)])
        margin = np.minimum(margin, dist)
        depth = 1.0 / (w0 / z[a] + w1 / z[b] + w2 / z[c])
        better = inside & (depth < best)
        best[better] = depth[better]
        fid[better] = f
    best[fid < 0] = 0.0
    return fid, best, margin


def icosphere(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit icosphere, faces wound counter-clockwise seen from outside."""
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = torch.tensor(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
        dtype=torch.float64,
    )  # fmt: skip
    faces = torch.tensor(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
         [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    )  # fmt: skip
    verts = verts / verts.norm(dim=1, keepdim=True)
    tri = verts[faces]
    assert (torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) * tri.mean(1)).sum(-1).min() > 0
    for _ in range(subdivisions):
        edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        uniq, inverse = torch.unique(edges.sort(dim=1).values, dim=0, return_inverse=True)
        mid = verts[uniq].mean(1)
        mid = mid / mid.norm(dim=1, keepdim=True)
        m = inverse.view(3, -1) + verts.shape[0]  # midpoints of edges 01, 12, 20
        a, b, c = faces.unbind(1)
        faces = torch.cat(
            [torch.stack(x, 1) for x in ([a, m[0], m[2]], [b, m[1], m[0]], [c, m[2], m[1]], [m[0], m[1], m[2]])]
        )
        verts = torch.cat([verts, mid])
    return verts.float(), faces


def random_rotation(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def grid_mesh(n: int, jitter: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n+1)^2 vertices on [0, 1]^2 (interior ones jittered in-plane), 2 n^2 faces."""
    g = torch.Generator().manual_seed(seed)
    s = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(s, s, indexing="ij")
    uv = torch.stack([xx, yy], -1)
    interior = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    interior[1:-1, 1:-1] = True
    uv = uv + interior[..., None] * (torch.rand(n + 1, n + 1, 2, generator=g, dtype=torch.float64) - 0.5) * jitter / n
    idx = torch.arange((n + 1) ** 2).view(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return uv.reshape(-1, 2), faces


# ---- single triangles -------------------------------------------------------------------


def test_project_points_pinhole():
    K = intrinsics(100.0, 32.0, 24.0)
    pts = torch.tensor([[0.0, 0.0, 2.0], [1.0, -0.5, 4.0]])
    proj = project_points(pts, K)
    expected = torch.tensor([[32.0, 24.0, 2.0], [32.0 + 25.0, 24.0 - 12.5, 4.0]])
    torch.testing.assert_close(proj, expected)


@pytest.mark.parametrize("flip", [False, True])
def test_single_triangle_matches_brute_force(flip):
    H, W = 37, 53  # not square: catches swapped axes
    K = intrinsics(60.0, 26.3, 17.9)
    pts = torch.tensor([[-0.41, -0.23, 2.0], [0.37, -0.29, 2.4], [0.05, 0.33, 1.7]])
    faces = torch.tensor([[0, 2, 1]] if flip else [[0, 1, 2]])
    frags = rasterize(pts, faces, K, H, W)
    ref_fid, ref_depth, margin = brute_force(pts, faces, K, H, W)
    assert margin.min() > 1e-4  # no pixel centre on an edge: the answer is unambiguous
    covered = frags.face_id >= 0
    assert 150 < int(covered.sum()) < H * W
    np.testing.assert_array_equal(frags.face_id.numpy(), ref_fid)
    np.testing.assert_allclose(frags.depth.numpy(), ref_depth, rtol=1e-5, atol=0)
    assert torch.all(frags.bary[~covered] == 0)
    assert torch.all(frags.depth[~covered] == 0)
    b = frags.bary[covered]
    assert torch.all(b >= -1e-6) and torch.allclose(b.sum(-1), torch.ones(len(b)), atol=1e-5)


def test_backface_culling_follows_winding():
    K = intrinsics(40.0, 16.0, 16.0)
    # Counter-clockwise as seen from the camera (x right, y down): normal towards the camera.
    pts = torch.tensor([[-0.3, -0.3, 1.0], [-0.3, 0.3, 1.0], [0.3, 0.0, 1.0]])
    normal = torch.linalg.cross(pts[1] - pts[0], pts[2] - pts[0])
    assert normal[2] < 0  # points back at the camera: a front face
    front = torch.tensor([[0, 1, 2]])
    back = torch.tensor([[0, 2, 1]])
    n_front = int((rasterize(pts, front, K, 32, 32, cull_backfaces=True).face_id >= 0).sum())
    n_back = int((rasterize(pts, back, K, 32, 32, cull_backfaces=True).face_id >= 0).sum())
    n_all = int((rasterize(pts, back, K, 32, 32).face_id >= 0).sum())
    assert n_front == n_all > 50
    assert n_back == 0


def test_nearer_triangle_wins():
    H, W = 40, 48
    K = intrinsics(50.0, 24.0, 20.0)
    far = [[-0.6, -0.5, 3.0], [0.7, -0.45, 3.2], [0.0, 0.6, 2.9]]
    near = [[-0.31, -0.29, 2.0], [0.35, -0.1, 2.1], [-0.05, 0.4, 2.2]]
    for order in ([far, near], [near, far]):
        pts = torch.tensor(order[0] + order[1])
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
        near_id = 1 if order[0] is far else 0
        frags = rasterize(pts, faces, K, H, W)
        ref_fid, ref_depth, margin = brute_force(pts, faces, K, H, W)
        assert margin.min() > 1e-4
        np.testing.assert_array_equal(frags.face_id.numpy(), ref_fid)
        np.testing.assert_allclose(frags.depth.numpy(), ref_depth, rtol=1e-5, atol=0)
        # the near triangle lies in front of and inside the far one: it shows whole
        only_near = rasterize(pts, faces[near_id : near_id + 1], K, H, W).face_id >= 0
        assert int(only_near.sum()) > 100
        assert torch.all(frags.face_id[only_near] == near_id)
        assert int((frags.face_id == 1 - near_id).sum()) > 50


def test_random_triangle_soup_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    H, W = 48, 64
    K = intrinsics(55.0, 31.0, 25.0)
    centres = (torch.rand(40, 1, 3, generator=g) - 0.5) * torch.tensor([1.6, 1.2, 1.0]) + torch.tensor([0, 0, 2.5])
    pts = (centres + (torch.rand(40, 3, 3, generator=g) - 0.5) * 0.8).reshape(-1, 3)
    faces = torch.arange(120).view(40, 3)
    frags = rasterize(pts, faces, K, H, W)
    ref_fid, ref_depth, margin = brute_force(pts, faces, K, H, W)
    clear = margin > 1e-3  # pixel centres not within rounding of any edge
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(frags.face_id.numpy()[clear], ref_fid[clear])
    np.testing.assert_allclose(frags.depth.numpy()[clear], ref_depth[clear], rtol=1e-5, atol=0)


# ---- meshes -------------------------------------------------------------------------------


def test_sphere_disc_area_and_depth():
    verts, faces = icosphere(4)
    R, d, f = 1.0, 4.0, 200.0
    H = W = 160
    K = intrinsics(f, W / 2, H / 2)
    pts = verts @ random_rotation(0).T * R + torch.tensor([0.0, 0.0, d])
    frags = rasterize(pts, faces, K, H, W)
    r = f * R / math.sqrt(d * d - R * R)  # image radius of the silhouette (a circle on axis)
    area = int((frags.face_id >= 0).sum())
    assert abs(area - math.pi * r * r) / (math.pi * r * r) < 0.02
    px, py = pixel_centres(H, W)
    rad = np.hypot(px - W / 2, py - H / 2)
    covered = frags.face_id.numpy() >= 0
    assert covered[rad < r - 1.0].all()  # no holes
    assert not covered[rad > r + 1.0].any()
    # the four pixels around the optical axis look straight at the sphere's front pole
    centre_depth = frags.depth[H // 2 - 1 : H // 2 + 1, W // 2 - 1 : W // 2 + 1]
    torch.testing.assert_close(centre_depth, torch.full((2, 2), d - R), atol=2e-3, rtol=0)
    # every rendered point lies on the (tessellated) sphere and faces the camera
    p = interpolate(pts, faces, frags)[frags.face_id >= 0]
    dist = (p - torch.tensor([0.0, 0.0, d])).norm(dim=-1)
    assert torch.all(dist < R + 1e-4) and torch.all(dist > R - 3e-3)
    assert torch.all(p[:, 2] < d)
    # culling back faces does not change a closed convex mesh's image
    culled = rasterize(pts, faces, K, H, W, cull_backfaces=True)
    assert torch.equal(culled.face_id, frags.face_id)


@pytest.mark.parametrize("jitter", [0.0, 0.8])
def test_no_cracks_in_tessellated_plane(jitter):
    # a slanted plane of 2 * 40^2 small triangles filling a known quad on screen
    uv, faces = grid_mesh(40, jitter, seed=1)
    H, W = 96, 120
    K = intrinsics(90.0, 60.0, 48.0)
    pts = torch.stack([uv[:, 0] * 1.6 - 0.8, uv[:, 1] * 1.2 - 0.6, 2.0 + 0.7 * uv[:, 0] - 0.4 * uv[:, 1]], -1).float()
    frags = rasterize(pts, faces, K, H, W)
    # the outline is the projected unit square: test pixel centres well inside it
    corners = project_points(pts[[0, 40, 40 * 41 + 40, 40 * 41]].double(), K.double())[:, :2].numpy()
    px, py = pixel_centres(H, W)
    inside = np.ones((H, W), dtype=bool)
    for k in range(4):
        (x0, y0), (x1, y1) = corners[k], corners[(k + 1) % 4]
        dist = ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) / math.hypot(x1 - x0, y1 - y0)
        inside &= dist > 1e-3
    assert inside.sum() > 0.25 * H * W
    assert (frags.face_id.numpy()[inside] >= 0).all()
    # points interpolated on the mesh lie on its plane
    p = interpolate(pts, faces, frags)[frags.face_id >= 0]
    plane_z = 2.0 + 0.7 * (p[:, 0] + 0.8) / 1.6 - 0.4 * (p[:, 1] + 0.6) / 1.2
    torch.testing.assert_close(p[:, 2], plane_z, atol=1e-5, rtol=0)


def test_no_cracks_when_edges_pass_through_pixel_centres():
    # Vertices exactly on pixel centres: many pixel centres lie exactly on shared edges
    # and at shared vertices, and each must still be covered by one of the faces.
    n = 16
    k = torch.arange(n + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    _, faces = grid_mesh(n, 0.0, seed=0)
    H = W = 40
    K = intrinsics(32.0, 0.0, 0.0)
    # x = 32 X / Z: grid lines at pixel centres 4.5, 6.5, ..., 36.5 (all exact in float32)
    pts = torch.stack([(4.5 + 2 * xx) / 32, (4.5 + 2 * yy) / 32, torch.ones_like(xx)], -1).reshape(-1, 3)
    xy = project_points(pts, K)[:, :2]
    assert torch.equal(xy, torch.stack([4.5 + 2 * xx, 4.5 + 2 * yy], -1).reshape(-1, 2))
    frags = rasterize(pts, faces, K, H, W)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[4:37, 4:37] = True  # closed outline: centres 4.5 .. 36.5 inclusive
    assert torch.equal(frags.face_id >= 0, expected)
    torch.testing.assert_close(frags.depth[expected], torch.ones(int(expected.sum())))
    # the same vertices at random depths: projections are now inexact, edge functions at
    # the on-edge pixel centres are rounding noise, and must still agree between faces
    g = torch.Generator().manual_seed(5)
    z = 1.5 + torch.rand(len(pts), generator=g, dtype=torch.float64)
    f, cx, cy = 37.3, 0.31, -0.17
    xy64 = xy.double()
    pts_z = torch.stack([(xy64[:, 0] - cx) * z / f, (xy64[:, 1] - cy) * z / f, z], -1).float()
    frags = rasterize(pts_z, faces, intrinsics(f, cx, cy), H, W)
    covered = frags.face_id >= 0
    assert torch.all(covered[5:36, 5:36])  # every interior centre, on edges or not
    assert not torch.any(covered & ~expected)
    # the same with the whole grid rotated in the image plane by an odd angle
    c, s = math.cos(0.3), math.sin(0.3)
    centre = torch.tensor([20.5, 20.5])
    rot = (xy - centre) @ torch.tensor([[c, s], [-s, c]]) + centre
    pts_r = torch.cat([rot / 32, torch.ones(len(rot), 1)], 1)
    frags = rasterize(pts_r, faces, K, H, W)
    corners = rot[[0, n, (n + 1) * (n + 1) - 1, n * (n + 1)]].double().numpy()
    px, py = pixel_centres(H, W)
    inside = np.ones((H, W), dtype=bool)
    for i in range(4):
        (x0, y0), (x1, y1) = corners[i], corners[(i + 1) % 4]
        inside &= ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) / math.hypot(x1 - x0, y1 - y0) > 1e-3
    assert inside.sum() > 900
    assert (frags.face_id.numpy()[inside] >= 0).all()


def test_shared_edges_through_pixel_centres_leave_no_gap():
    # 100 pairs of triangles in general position, each pair sharing an edge that passes,
    # up to float32 rounding, through a pixel centre: that centre must be covered by one
    # of the two faces whichever way the rounding of the edge functions goes.
    g = torch.Generator().manual_seed(11)
    H = W = 64
    f, cx, cy = 47.3, 31.7, 32.2
    K = intrinsics(f, cx, cy)

    def lift(xy, z):  # camera-space float32 points projecting to pixel coordinates xy
        return torch.stack([(xy[..., 0] - cx) * z / f, (xy[..., 1] - cy) * z / f, z], -1).float()

    n, tries = 10, 512
    jj, ii = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="xy")
    m = torch.stack([4.5 + 6.0 * jj, 4.5 + 6.0 * ii], -1).reshape(-1, 1, 2).double()  # pixel centres
    angle = torch.rand(n * n, tries, 1, generator=g, dtype=torch.float64) * math.pi
    d = torch.cat([torch.cos(angle), torch.sin(angle)], -1)
    t = 1.0 + 1.5 * torch.rand(n * n, tries, 2, generator=g, dtype=torch.float64)
    z = 2.0 + torch.rand(n * n, tries, 2, generator=g, dtype=torch.float64)
    a = lift(m - t[..., :1] * d, z[..., 0])
    b = lift(m + t[..., 1:] * d, z[..., 1])
    # keep, per pair, the try whose rounded edge passes closest to the pixel centre
    pa, pb = project_points(a.view(-1, 3), K).double(), project_points(b.view(-1, 3), K).double()
    e = (pb[:, 0] - pa[:, 0]) * (m.expand(-1, tries, -1).reshape(-1, 2)[:, 1] - pa[:, 1]) - (pb[:, 1] - pa[:, 1]) * (
        m.expand(-1, tries, -1).reshape(-1, 2)[:, 0] - pa[:, 0]
    )
    best = e.view(n * n, tries).abs().argmin(1)
    pick = torch.arange(n * n)
    a, b, d, m = a[pick, best], b[pick, best], d[pick, best], m[:, 0]
    assert e.view(n * n, tries)[pick, best].abs().max() < 1e-6  # far below float32 rounding of E
    normal = torch.stack([-d[:, 1], d[:, 0]], -1)
    s = 1.0 + 1.5 * torch.rand(n * n, 2, generator=g, dtype=torch.float64)
    c1 = lift(m + s[:, :1] * normal, torch.full((n * n,), 2.5, dtype=torch.float64))
    c2 = lift(m - s[:, 1:] * normal, torch.full((n * n,), 2.5, dtype=torch.float64))
    pts = torch.stack([a, b, c1, c2], 1).reshape(-1, 3)  # 4 vertices per pair
    base = 4 * torch.arange(n * n)[:, None]
    faces = torch.cat([base + torch.tensor([0, 1, 2]), base + torch.tensor([1, 0, 3])])
    frags = rasterize(pts, faces, K, H, W)
    rows, cols = (m[:, 1] - 0.5).long(), (m[:, 0] - 0.5).long()
    assert torch.all(frags.face_id[rows, cols] >= 0)
    # elsewhere the coverage is the brute-force one
    ref_fid, _, margin = brute_force(pts, faces, K, H, W)
    clear = margin > 1e-3
    np.testing.assert_array_equal(frags.face_id.numpy()[clear], ref_fid[clear])


def test_interpolated_points_reproduce_depth_and_pixel():
    verts, faces = icosphere(3)
    H, W = 64, 80
    K = intrinsics(70.0, 41.0, 30.0)
    pts = verts @ random_rotation(1).T * torch.tensor([0.8, 0.6, 0.7]) + torch.tensor([0.1, -0.05, 2.5])
    frags = rasterize(pts, faces, K, H, W)
    p = interpolate(pts, faces, frags)
    mask = frags.face_id >= 0
    assert mask.sum() > 500
    torch.testing.assert_close(p[..., 2][mask], frags.depth[mask], rtol=2e-6, atol=0)
    assert torch.all(p[~mask] == 0)
    # the interpolated 3D point projects back onto the pixel centre
    px, py = pixel_centres(H, W)
    uv = project_points(p[mask].double(), K.double())[:, :2]
    target = torch.from_numpy(np.stack([px, py], -1))[mask]
    torch.testing.assert_close(uv, target, atol=2e-4, rtol=0)


def test_perspective_correct_barycentrics_on_slanted_plane():
    # Two big triangles on a steeply slanted plane. Any barycentric combination of the
    # vertices lies on the plane; the perspective-correct one is also on the pixel's ray,
    # at the rendered depth, where the ray meets the plane.
    H, W = 64, 64
    K = intrinsics(40.0, 32.0, 32.0)
    pts = torch.tensor([[-1.0, -1.0, 1.5], [1.0, -1.0, 6.0], [1.0, 1.0, 6.0], [-1.0, 1.0, 1.5]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    normal = torch.linalg.cross(pts[1] - pts[0], pts[2] - pts[0]).double()
    offset = (normal * pts[0].double()).sum()
    frags = rasterize(pts, faces, K, H, W)
    mask = frags.face_id >= 0
    assert mask.sum() > 0.25 * H * W
    px, py = pixel_centres(H, W)
    rays = torch.from_numpy(np.stack([(px - 32.0) / 40.0, (py - 32.0) / 40.0, np.ones_like(px)], -1))[mask]
    hit = rays * (offset / (rays @ normal))[:, None]  # ray-plane intersection, float64
    torch.testing.assert_close(frags.depth[mask].double(), hit[:, 2], rtol=2e-6, atol=0)
    p = interpolate(pts, faces, frags)[mask].double()
    torch.testing.assert_close(p, hit, rtol=0, atol=2e-5 * 6)
    torch.testing.assert_close(p @ normal / normal.norm(), (offset / normal.norm()).expand(len(p)), rtol=0, atol=1e-5)
    # screen-space (affine) barycentrics would miss the ray by far: the test tells them apart
    tri = pts[faces[frags.face_id[mask]]].double()
    screen = frags.bary[mask].double() * tri[..., 2]
    screen = screen / screen.sum(-1, keepdim=True)
    p_affine = (tri * screen[..., None]).sum(1)
    assert (p_affine - hit).norm(dim=-1).max() > 0.1


# ---- robustness ---------------------------------------------------------------------------


def test_degenerate_and_clipped_faces_are_skipped():
    H, W = 32, 32
    K = intrinsics(30.0, 16.0, 16.0)
    pts = torch.tensor(
        [
            [-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0],  # a good face
            [-0.5, 0.0, 1.0], [0.0, 0.0, 1.0], [0.5, 0.0, 1.0],  # collinear: zero area
            [0.2, 0.1, 0.5], [0.4, 0.2, 1.0],  # same ray: zero projected area
            [0.0, 0.0, -1.0], [0.3, 0.0, 0.0],  # behind the camera / on its plane
        ]
    )  # fmt: skip
    faces = torch.tensor([[3, 4, 5], [0, 0, 1], [6, 7, 4], [0, 1, 8], [0, 9, 2], [0, 1, 2]])
    frags = rasterize(pts, faces, K, H, W)
    for t in (frags.bary, frags.depth):
        assert torch.isfinite(t).all()
    assert set(frags.face_id.unique().tolist()) == {-1, 5}
    alone = rasterize(pts, faces[5:], K, H, W)
    assert torch.equal(frags.face_id >= 0, alone.face_id >= 0)
    torch.testing.assert_close(frags.depth, alone.depth)


def test_empty_and_offscreen():
    K = intrinsics(30.0, 16.0, 16.0)
    pts = torch.tensor([[5.0, 5.0, 1.0], [6.0, 5.0, 1.0], [5.0, 6.0, 1.0]])  # far right
    frags = rasterize(pts, torch.tensor([[0, 1, 2]]), K, 32, 32)
    assert isinstance(frags, Fragments)
    assert frags.face_id.shape == (32, 32) and frags.bary.shape == (32, 32, 3) and frags.depth.shape == (32, 32)
    assert torch.all(frags.face_id == -1) and torch.all(frags.depth == 0)
    none = rasterize(pts, torch.zeros(0, 3, dtype=torch.int64), K, 32, 32)
    assert torch.all(none.face_id == -1)
    assert torch.all(interpolate(pts, torch.tensor([[0, 1, 2]]), frags) == 0)


def test_large_faces_partly_off_screen():
    # a huge quad far beyond the image bounds and crossing nothing behind the camera
    H, W = 48, 40
    K = intrinsics(40.0, 20.0, 24.0)
    pts = torch.tensor([[-50.0, -50.0, 3.0], [50.0, -50.0, 3.0], [50.0, 50.0, 5.0], [-50.0, 50.0, 5.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(pts, faces, K, H, W)
    assert torch.all(frags.face_id >= 0)
    p = interpolate(pts, faces, frags)
    torch.testing.assert_close(p[..., 2], frags.depth, rtol=2e-6, atol=0)
