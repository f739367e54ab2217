"""MonoNPHM's Kinect geometry evaluation (headstudio.metrics.depth_geometry) and its ns-eval row."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from headstudio.metrics.depth_geometry import (
    DepthForeground,
    FrameCamera,
    backproject_depth,
    closest_points_on_mesh,
    closest_points_on_mesh_numpy,
    depth_ground_truth,
    evaluate_depth_frame,
    kinect_geometry,
    mesh_geometry,
    similarity_icp,
)
from headstudio.metrics.geometry import project

W2M = 0.25  # world units are FLAME metres x 4


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def look_at_c2w(eye) -> np.ndarray:
    """OpenGL camera-to-world at ``eye`` looking at the origin (y up)."""
    eye = np.asarray(eye, float)
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    return np.concatenate([np.stack([right, np.cross(back, right), back], 1), eye[:, None]], 1)


def sphere_depth(c2w: np.ndarray, fx, cx, size: int, radius: float) -> np.ndarray:
    """Camera z (OpenCV) of the sphere of ``radius`` at the origin, per pixel centre; 0 where the ray misses."""
    u, v = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    d_cam = np.stack([(u - cx) / fx, -(v - cx) / fx, -np.ones_like(u)], -1)  # OpenGL camera, z = -1
    d = d_cam @ c2w[:, :3].T
    o = c2w[:, 3]
    b, c = d @ o, o @ o - radius**2
    a = (d * d).sum(-1)
    disc = b**2 - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a  # along d, whose camera z is 1
    return np.where(disc > 0, t, 0.0)


SIZE, FX, CX = 160, 448.0, 80.0
C2W = look_at_c2w([0.6, 0.4, 3.9])
RADIUS = 0.4  # 10 cm


@pytest.fixture(scope="module")
def sphere_points():
    depth = sphere_depth(C2W, FX, CX, SIZE, RADIUS)
    pts, nrm = depth_ground_truth(depth, None, FX, FX, CX, CX, C2W, 1.0, W2M)
    return pts, nrm


def test_backprojection_round_trips_a_point_through_the_pixel_centre():
    c2w = look_at_c2w([0.3, -0.2, 4.0])
    fx, fy, cx, cy = 100.0, 110.0, 31.5, 27.0
    depth = np.zeros((48, 64))
    i, j, z = 40, 12, 3.7  # column, row, camera z
    depth[j, i] = z
    bp = backproject_depth(depth, fx, fy, cx, cy, c2w, 1.0)
    point = bp.points[j, i]
    # Independently: the pixel centre (i + 0.5, j + 0.5) at camera z, OpenGL axes.
    cam = np.array([(i + 0.5 - cx) / fx * z, -(j + 0.5 - cy) / fy * z, -z])
    assert np.allclose(point, c2w[:, :3] @ cam + c2w[:, 3], atol=1e-12)
    uv = project(torch.tensor(point[None]), torch.tensor(c2w), fx, fy, cx, cy)[0]
    assert np.allclose(uv.numpy(), [i + 0.5, j + 0.5], atol=1e-9)
    assert not bp.valid[j, i]  # a lone pixel has no neighbours to estimate a normal from


def test_depth_normals_face_the_camera_and_match_the_sphere(sphere_points):
    pts, nrm = sphere_points
    assert len(pts) > 3000
    radial = pts / np.linalg.norm(pts, axis=-1, keepdims=True)
    assert np.median((radial * nrm).sum(-1)) > 0.999
    assert np.all(((C2W[:, 3] - pts) * nrm).sum(-1) > 0)


def test_point_to_mesh_distance_is_exact():
    mesh = trimesh.creation.icosphere(3, radius=0.5)
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 3)) * 0.4
    d, face, closest = closest_points_on_mesh(pts, mesh.vertices, mesh.faces)
    d_np, _, _ = closest_points_on_mesh_numpy(pts, mesh.vertices, mesh.faces)
    tri = np.asarray(mesh.vertices)[mesh.faces]
    from headstudio.metrics.depth_geometry import closest_points_on_triangles

    sub = rng.choice(len(pts), 50, replace=False)
    brute = np.array([
        np.linalg.norm(closest_points_on_triangles(np.repeat(pts[k : k + 1], len(tri), 0), tri[:, 0], tri[:, 1], tri[:, 2]) - pts[k], axis=-1).min()
        for k in sub
    ])  # fmt: skip
    assert np.abs(d[sub] - brute).max() < 1e-9 and np.abs(d_np - d).max() < 1e-9
    assert np.allclose(np.linalg.norm(closest - pts, axis=-1), d)


def test_icp_recovers_a_similarity_transform():
    """From a partial view (as depth is) of a bumpy ellipsoid (size ~1), pairing with exact closest mesh
    points or with a cKDTree of area samples (the target points are some of them: exact). Point-to-point
    steps converge slowly where the surface lets them slide: hence the bumps."""
    from headstudio.ops.mesh import sample_surface

    rng = np.random.default_rng(1)
    mesh = trimesh.creation.icosphere(4, radius=0.5)
    v = np.asarray(mesh.vertices) * [1.0, 1.3, 0.8]
    v += 0.15 * np.sin(6 * v[:, [1]]) * np.cos(4.8 * v[:, [0]]) * v / np.linalg.norm(v, axis=1, keepdims=True)
    _, _, samples, _ = sample_surface(torch.from_numpy(v), torch.from_numpy(mesh.faces), 40000, generator=torch.Generator().manual_seed(0))
    part = samples.numpy()[rng.choice(40000, 3000, replace=False)]
    part = part[part[:, 2] > 0]
    s, R, t = 1.06, rotation([0.3, 1.0, 0.2], 5.0), np.array([0.02, -0.015, 0.03])
    target = s * part @ R.T + t
    before = closest_points_on_mesh(target, v, mesh.faces)[0].mean()
    for faces, source in ((mesh.faces, v), (None, samples.numpy())):
        s_, R_, t_ = similarity_icp(source, target, iterations=50, faces=faces)
        angle = np.degrees(np.arccos(np.clip((np.trace(R_.T @ R) - 1) / 2, -1, 1)))
        assert abs(s_ - s) < 1e-3 and angle < 0.5 and np.abs(t_ - t).max() < 1e-3, (s_, angle, t_ - t)
        after = closest_points_on_mesh(target, s_ * v @ R_.T + t_, mesh.faces)[0].mean()
        assert after < 0.02 * before


def test_mesh_on_the_depth_surface_scores_zero_and_an_offset_one_five_mm(sphere_points):
    pts, nrm = sphere_points
    mesh = trimesh.creation.icosphere(5, radius=RADIUS)  # inscribed facets: sagitta < 0.02 mm
    same = kinect_geometry(mesh.vertices, mesh.faces, pts, nrm, 0.0025, W2M, icp=False)
    assert same.chamfer_l1_m < 2e-5 and same.recall == 1.0 and same.normal_consistency > 0.999
    with_icp = kinect_geometry(mesh.vertices, mesh.faces, pts, nrm, 0.0025, W2M, icp=True)
    assert with_icp.chamfer_l1_m < 5e-5 and with_icp.recall == 1.0 and abs(with_icp.icp_scale - 1) < 1e-3
    # Offset surface 5 mm outside (radius + 5 mm): every depth point is 5 mm from it.
    off = trimesh.creation.icosphere(5, radius=RADIUS + 0.005 / W2M)
    far = kinect_geometry(off.vertices, off.faces, pts, nrm, 0.0025, W2M, icp=False)
    assert far.chamfer_l1_m == pytest.approx(0.005, abs=5e-5) and far.recall == 0.0
    assert far.chamfer_manhattan_m > far.chamfer_l1_m  # the L1 norm of the offset is at least its length
    # Against a ground-truth mesh: the same metrics from its area samples.
    gt = mesh_geometry(off.vertices, off.faces, mesh.vertices, mesh.faces, 0.0025, W2M, num_points=20000)
    assert gt.chamfer_l1_m == pytest.approx(0.005, abs=5e-5) and gt.recall == 0.0 and gt.num_points == 20000


def test_foreground_keeps_the_face_without_mouth_hair_or_out_of_range_depth():
    size = 216  # a fifth of MonoNPHM's 1080 px: the 21-px mouth dilation becomes 5 px
    depth = np.full((size, size), 1000.0)  # a plane 1 m away, mm
    seg = np.full((size, size), 2, np.uint8)  # face skin
    seg[100:110, 100:120] = 11  # mouth interior
    seg[:30] = 14  # hair
    seg[:, :20] = 4  # ear
    depth[150:160, 150:160] = 2500.0  # beyond far_m
    depth[170:175, 60:65] = 0  # no depth
    cam = FrameCamera(300.0, 300.0, size / 2, size / 2, size, size, look_at_c2w([0.0, 0.0, 4.0]))
    rule = DepthForeground()
    region = np.zeros((size, size), bool)
    pts, _ = depth_ground_truth(depth, seg, cam.fx, cam.fy, cam.cx, cam.cy, cam.camera_to_world, 0.004, W2M, rule)
    # Back to pixels: which were kept.
    uv = project(torch.tensor(pts), torch.tensor(cam.camera_to_world), cam.fx, cam.fy, cam.cx, cam.cy).numpy()
    region[np.floor(uv[:, 1]).astype(int), np.floor(uv[:, 0]).astype(int)] = True
    assert not region[100:110, 100:120].any()  # mouth interior
    assert not region[98, 110] and not region[111, 121]  # its dilation (2 px)
    assert region[95, 110] and region[120, 110]
    assert not region[:30].any() and not region[:, :20].any()  # hair, ears
    assert not region[150:160, 150:160].any() and not region[170:175, 60:65].any()  # out of range, no depth
    assert region[60:90, 40:200].all()


def _kinect_test_frame(subjects):
    """Test source frame 0 of the tiny Kinect subject as the dataparser gives it (its cameras carry the head
    pose, so they are the reader's as they are), read without the dataparser's FLAME recovery (a minute),
    and the true mesh of that frame (``gt/test/mesh/00001.ply``: source frames 0 and 1 are rendered frame 0)
    moved from the synthetic world (camera fixed) into the subject's world through the camera. The depth
    map is that surface plus Kinect-like noise."""
    import json

    from nerfstudio.cameras.cameras import Cameras

    from headstudio.data.errors import Problems
    from headstudio.data.formats.kinect import read_kinect
    from headstudio.metrics.geometry import gt_mesh_path

    root = subjects["kinect"]
    subject = read_kinect(root, Problems())
    k = subject.splits["test"][0]
    f = subject.frames[k]
    assert f.sequence == "test" and f.index == 0
    camera = Cameras(
        camera_to_worlds=torch.tensor(f.c2w[None, :3, :4], dtype=torch.float32),
        fx=float(f.intrinsics[0]), fy=float(f.intrinsics[1]), cx=float(f.intrinsics[2]), cy=float(f.intrinsics[3]),
        width=int(f.size[0]), height=int(f.size[1]), metadata={"frame_index": torch.tensor([[k]])},
    )  # fmt: skip
    meta = {"eval_depth_filenames": [f.depth], "eval_depth_to_world": subject.depth_to_world, "world_scale": 1 / W2M,
            "segmentation_filenames": [f.mask_recipe[1]]}  # fmt: skip
    path = gt_mesh_path(f.image.with_name("00001.png"))
    assert path == root / "gt" / "test" / "mesh" / "00001.ply" and gt_mesh_path(f.image) is None
    mesh = trimesh.load(path, process=False)
    synth = json.loads((root / "subject.json").read_text())["camera"]  # OpenCV world-to-camera of the renders
    cam_cv = np.asarray(mesh.vertices) @ np.asarray(synth["R"]).T + np.asarray(synth["t"])
    verts = (cam_cv * [1.0, -1.0, -1.0]) @ f.c2w[:3, :3].T + f.c2w[:3, 3]
    return camera, meta, verts, np.asarray(mesh.faces)


def test_kinect_frame_against_its_true_mesh(subjects):
    c, meta, verts, faces = _kinect_test_frame(subjects)
    cam = FrameCamera(*(float(getattr(c, a)[0]) for a in ("fx", "fy", "cx", "cy")), int(c.width[0]), int(c.height[0]),
                      c.camera_to_worlds[0].double().numpy())  # fmt: skip
    depth, seg, to_world = meta["eval_depth_filenames"][0], meta["segmentation_filenames"][0], meta["eval_depth_to_world"]
    res = evaluate_depth_frame(verts, faces, depth, seg, cam, to_world, W2M)
    # Sensor noise ~2 mm sd at 1 m, 1 mm quantisation.
    assert res.chamfer_l1_m < 0.0015 and res.recall > 0.85 and res.normal_consistency > 0.95 and res.num_points > 300
    # The intrinsics of a downscaled eval camera are brought back to the depth map's resolution.
    half = copy.deepcopy(c)
    half.rescale_output_resolution(0.5)
    small = FrameCamera(*(float(getattr(half, a)[0]) for a in ("fx", "fy", "cx", "cy")), int(half.width[0]),
                        int(half.height[0]), half.camera_to_worlds[0].double().numpy())  # fmt: skip
    assert evaluate_depth_frame(verts, faces, depth, seg, small, to_world, W2M) == res
    # A mesh 1 cm off along the camera axis: far without ICP, recovered by it.
    shifted = verts + cam.camera_to_world[:, 2] * 0.01 / W2M
    off = evaluate_depth_frame(shifted, faces, depth, seg, cam, to_world, W2M, icp=False)
    back = evaluate_depth_frame(shifted, faces, depth, seg, cam, to_world, W2M)
    assert off.chamfer_l1_m > 0.006 and off.recall < 0.1
    assert back.chamfer_l1_m < 0.0015 and back.icp_translation_m > 0.008


def test_pipeline_geometry_row_of_an_eval_image(subjects):
    """HeadPipeline.depth_geometry_row: the metrics of the frame's mesh, NaN and the reason where the field
    cannot be meshed (a mesher that raises as mesh_from_grid does)."""
    from headstudio.pipelines.head_pipeline import HeadPipeline, HeadPipelineConfig

    camera, meta, verts, faces = _kinect_test_frame(subjects)
    fake = SimpleNamespace(config=HeadPipelineConfig(), datamanager=SimpleNamespace(eval_dataset=SimpleNamespace(metadata=meta)))
    frames = []

    def mesher(frame):
        frames.append(frame)
        return verts, faces

    row, reason = HeadPipeline.depth_geometry_row(fake, mesher, camera, 0)
    assert reason is None and frames == [int(camera.metadata["frame_index"][0])]
    assert set(row) == {"chamfer_l1_m", "chamfer_manhattan_m", "normal_consistency_depth", "recall_2.5mm", "geometry_points"}
    assert row["chamfer_l1_m"] < 0.0015 and row["recall_2.5mm"] > 0.85

    def no_surface(frame):
        raise ValueError("the field never crosses level 25")

    row, reason = HeadPipeline.depth_geometry_row(fake, no_surface, camera, 0)
    assert "never crosses" in reason and all(np.isnan(v) for v in row.values())
