"""imavatar-surface: root finding, implicit gradients, fields and the forward map."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import method_pipeline, viewer_slider_images

from headstudio.fields.imavatar import DeformationNetwork, GeometryNetwork
from headstudio.ops.root_finding import broyden, implicit_root

BIN = Path(sys.executable).parent


def test_broyden_inverts_a_known_warp():
    torch.manual_seed(0)
    rot = torch.linalg.qr(torch.randn(3, 3))[0]

    def warp(x):
        return x @ rot.T + 0.1 * torch.sin(2.0 * x) + torch.tensor([0.2, -0.1, 0.3])

    truth = torch.rand(500, 3) * 2 - 1
    target = warp(truth)
    result = broyden(lambda x, ids: warp(x) - target[ids], torch.zeros(500, 3), rot.T.expand(500, 3, 3).clone())
    assert result.converged.float().mean() > 0.98
    assert (result.root - truth)[result.converged].abs().max() < 1e-4
    assert result.steps.max() <= 10


def test_broyden_reports_what_did_not_converge():
    # x^2 + 1 = 0 has no real root: nothing may claim convergence.
    result = broyden(lambda x, ids: x * x + 1.0, torch.ones(4, 1), torch.eye(1).expand(4, 1, 1).clone())
    assert not result.converged.any()


def _surface_point(net: GeometryNetwork, A: torch.Tensor, b: torch.Tensor, o, d, t0: float) -> torch.Tensor:
    """Canonical point x with sdf(x) = 0 and A x + b on the ray o + t d (Newton, float64)."""
    x = torch.linalg.solve(A, (o + t0 * d - b)[:, None])[:, 0]
    basis = torch.linalg.svd(torch.eye(3, dtype=d.dtype) - torch.outer(d, d))[0][:, :2].T
    for _ in range(50):
        x = x.detach().requires_grad_(True)
        g = torch.cat([net.sdf(x[None])[0:1], basis @ (A @ x + b - o)])
        jac = torch.autograd.functional.jacobian(
            lambda y: torch.cat([net.sdf(y[None])[0:1], basis @ (A @ y + b - o)]), x
        )
        x = x - torch.linalg.solve(jac, g.detach())
    return x.detach(), basis


def test_implicit_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = GeometryNetwork(latent_dim=0, feature_dim=2, dims=(16, 16), skip_in=(), frequencies=2, radius=0.5,
                          use_weight_norm=False).double()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    A = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(3, 3, dtype=torch.float64)
    b = 0.05 * torch.randn(3, dtype=torch.float64)
    A.requires_grad_(True)
    o = torch.tensor([0.1, 0.05, 3.0], dtype=torch.float64)
    d = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    probe = torch.tensor([0.3, -0.7, 0.5], dtype=torch.float64)

    x, basis = _surface_point(net, A.detach(), b, o, d, 2.6)
    assert abs(float(net.sdf(x[None])[0])) < 1e-10
    # Analytic: G(x; params) with autograd, Jacobian detached.
    g = torch.cat([net.sdf(x[None])[0:1], basis @ (A @ x + b - o)])
    jac = torch.autograd.functional.jacobian(lambda y: torch.cat([net.sdf(y[None])[0:1], basis @ (A.detach() @ y + b - o)]), x)
    x_grad = implicit_root(x[None], g[None], jac[None])[0]
    params = [A, *[p for p in net.parameters()]]
    grads = torch.autograd.grad((x_grad * probe).sum(), params, allow_unused=True)
    # Numeric: move one entry, re-solve, difference the probe.
    eps = 1e-6
    checks = [(A, (0, 1)), (A, (2, 2)), (net.layers[0].weight, (3, 0)), (net.layers[-1].bias, (0,))]
    for param, index in checks:
        grad = grads[[i for i, p in enumerate(params) if p is param][0]]
        vals = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                param[index] += sign * eps
            xs, _ = _surface_point(net, A.detach(), b, o, d, 2.6)
            vals.append(float((xs * probe).sum()))
            with torch.no_grad():
                param[index] -= sign * eps
        numeric = (vals[0] - vals[1]) / (2 * eps)
        assert abs(numeric - float(grad[index])) < 1e-5 * max(1.0, abs(numeric)), (index, numeric, float(grad[index]))


def test_geometry_network_starts_as_a_sphere():
    net = GeometryNetwork(dims=(128,) * 4, skip_in=(2,), radius=0.6, scene_scale=2.0)
    dirs = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    # Geometric init: about the SDF of a sphere of radius 0.6 x scene scale; the latent code is silent.
    codes = torch.randn(200, 32)
    assert torch.equal(net.sdf(dirs * 0.6, codes), net.sdf(dirs * 0.6))
    assert (net.sdf(dirs * 0.6) < 0).all() and (net.sdf(dirs * 2.0) > 0).all()
    assert abs(float(net.sdf(dirs * 1.2).mean())) < 0.15
    sdf, feat, grad = net.gradient(dirs * 1.5)
    assert feat.shape == (200, 256)
    cos = torch.nn.functional.cosine_similarity(grad, dirs, dim=-1)
    assert cos.mean() > 0.95 and cos.min() > 0.7  # normals point outwards


def test_deformation_network_starts_uniform_with_zero_blendshapes():
    net = DeformationNetwork(num_expression=10)
    expr, pose, weights = net(torch.randn(7, 3))
    assert expr.shape == (7, 3, 10) and pose.shape == (7, 3, 36) and weights.shape == (7, 5)
    assert expr.abs().max() == 0 and pose.abs().max() == 0
    assert torch.allclose(weights, torch.full_like(weights, 0.2))


def _skinning(flame, seed: int = 0):
    """ForwardSkinning over three frames (neutral, smile + neck turn, open jaw) with a perturbed deformer."""
    from headstudio.data.track import FlameTrack
    from headstudio.deformers.forward_skinning import ForwardSkinning

    torch.manual_seed(seed)
    expr = torch.zeros(3, 50)
    expr[1, 0] = 1.5
    pose = torch.zeros(3, 15)
    pose[1, 3:6] = torch.tensor([0.1, 0.3, 0.0])
    pose[2, 6] = 0.35
    track = FlameTrack(flame.float(), torch.zeros(100), expr, pose)
    net = DeformationNetwork(num_expression=50, scene_scale=1.0)
    with torch.no_grad():  # a non-trivial but smooth deformation
        net.blendshapes.weight.normal_(0.0, 1e-3)
        net.skinning.weight.normal_(0.0, 0.05)
    return ForwardSkinning(net, track), track


def test_forward_map_of_the_canonical_pose_is_identity(flame):
    from headstudio.data.track import FlameTrack
    from headstudio.deformers.forward_skinning import ForwardSkinning, canonical_pose

    track = FlameTrack(flame.float(), torch.zeros(100), torch.zeros(1, 50), canonical_pose())
    skin = ForwardSkinning(DeformationNetwork(num_expression=50), track)
    pts = skin.canonical_vertices[::50]
    warped, _ = skin.warp(pts, torch.zeros(len(pts), dtype=torch.long))
    assert (warped - pts).abs().max() < 1e-5


def test_forward_map_moves_flame_fields_like_flame(flame):
    """With FLAME's own E, P, W at its vertices, the forward map reproduces the FLAME mesh of each frame."""
    skin, track = _skinning(flame)
    f = flame.float()
    s = track.world_scale
    verts = skin.canonical_vertices
    for frame in range(3):
        idx = torch.full((len(verts),), frame, dtype=torch.long)
        # Correctives are added in the (slightly posed) canonical space: exact up to the jaw-0.2 rotation.
        out = skin.apply_fields(verts, idx, f.exprdirs * s, f.posedirs * s, f.weights)
        assert (out - track.vertices[frame]).abs().max() < 2e-3 * s, frame


def test_correspondence_search_inverts_the_forward_map(flame):
    skin, track = _skinning(flame)
    canon = skin.canonical_vertices[::20] + 0.01 * torch.randn(len(skin.canonical_vertices[::20]), 3)
    frame = torch.arange(len(canon)) % 3
    with torch.no_grad():
        deformed, _ = skin.warp(canon, frame)
    roots, converged = skin.correspondences(deformed, frame)
    assert converged.any(dim=1).float().mean() > 0.95
    err = (roots - canon[:, None]).norm(dim=-1).masked_fill(~converged, float("inf")).min(dim=1).values
    assert (err[converged.any(dim=1)] < 1e-3).float().mean() > 0.95


def test_merged_starts_find_the_same_roots_with_less_work(flame):
    """The fast renderer's merging: every distinct root the independent starts find is still found,
    duplicates are exact copies (read once by ``deformed_sdf``), and the solver does less work."""
    from headstudio.rendering.implicit_surface import deformed_sdf

    skin, track = _skinning(flame)
    canon = skin.canonical_vertices[::20] + 0.01 * torch.randn(len(skin.canonical_vertices[::20]), 3)
    frame = torch.arange(len(canon)) % 3
    with torch.no_grad():
        deformed, _ = skin.warp(canon, frame)
    evaluated = []
    warp = skin.warp
    skin.warp = lambda x, f: (evaluated.append(len(x)), warp(x, f))[1]
    roots_a, ok_a = skin.correspondences(deformed, frame)
    work_a, evaluated[:] = sum(evaluated), []
    roots_b, ok_b = skin.correspondences(deformed, frame, merge_radius=1e-3)
    work_b = sum(evaluated)
    assert work_b < 0.9 * work_a, (work_b, work_a)
    assert torch.equal(ok_a.any(1), ok_b.any(1))
    # Each independent root has a merged root within the merge radius (plus the tolerance), and vice versa.
    d = (roots_a[:, :, None] - roots_b[:, None]).norm(dim=-1)
    d_ab = d.masked_fill(~ok_b[:, None], float("inf")).min(dim=2).values[ok_a]
    d_ba = d.masked_fill(~ok_a[:, :, None], float("inf")).min(dim=1).values[ok_b]
    assert d_ab.max() < 2e-3 and d_ba.max() < 2e-3
    dup = (roots_b[:, 1:] == roots_b[:, :1]).all(-1) & ok_b[:, 1:]
    assert dup.float().mean() > 0.5
    read = []

    def sdf_fn(x, f):
        read.append(len(x))
        return x.norm(dim=-1) - 0.5

    skin.warp = warp
    best, _, valid = deformed_sdf(deformed, frame, lambda p, f: (roots_b, ok_b), sdf_fn)
    distinct = ok_b.sum() - dup.sum() - ((roots_b[:, 2] == roots_b[:, 1]).all(-1) & ok_b[:, 1] & ok_b[:, 2] & ~dup[:, 1]).sum()
    assert sum(read) == int(distinct)
    ref = (roots_b.norm(dim=-1) - 0.5).masked_fill(~ok_b, -float("inf")).max(dim=1).values
    assert torch.allclose(best[valid], ref[valid])


def test_broyden_stop_removes_problems_early():
    target = torch.linspace(1.0, 2.0, 6)[:, None]
    result = broyden(lambda x, ids: x - target[ids], torch.zeros(6, 1), torch.eye(1).expand(6, 1, 1).clone() * 0.5,
                     stop=lambda x, ids: (ids % 2 == 0) & (x[:, 0] > 0.0))  # fmt: skip
    assert result.stopped.tolist() == [True, False] * 3
    assert (result.steps[0::2] == 1).all() and (result.root[1::2, 0] - target[1::2, 0]).abs().max() < 1e-5


# ---------------------------------------------------------------------------------- the model
SMALL = dict(geometry_dims=(96,) * 4, geometry_skip=(2,), feature_dim=16, deformation_dims=(32,) * 3,
             texture_dims=(32,) * 2, num_steps=24, num_secant_steps=4, chunk_steps=8)  # fmt: skip


def _pipeline(subject, **overrides):
    return method_pipeline("imavatar-surface", subject, **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def pipeline(subjects):
    return _pipeline(subjects["imavatar"])


def test_param_groups_match_the_optimizers(pipeline):
    from headstudio.method_configs.imavatar_surface import imavatar_surface

    assert set(pipeline.get_param_groups()) == set(imavatar_surface.config.optimizers)


def test_rays_hit_the_initial_sphere_and_gradients_reach_every_network(pipeline):
    model = pipeline.model
    model.train()
    model.zero_grad(set_to_none=True)
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    outputs = model(ray_bundle)
    assert outputs["hit"].any() and (~outputs["hit"]).any()
    losses = model.get_loss_dict(outputs, batch)
    assert set(losses) == {"rgb_loss", "mask_loss", "flame_loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, net in (("geometry", model.geometry), ("texture", model.texture), ("deformation", model.skin.deformer)):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    # The latent code starts silent (geometric init), so its first gradient lands on the weights that read it.
    assert model.latent_codes.codes.grad is not None
    first = model.geometry.layers[0].parametrizations.weight.original1
    assert first.grad[:, -model.config.latent_dim :].abs().sum() > 0


def test_fast_renderer_matches_the_dense_reference_on_the_initial_sphere(pipeline):
    """The initial sphere pokes out of the FLAME-mesh bounds: the fast renderer marches those rays' front
    segment too, so it hits the pixels the dense reference hits, at the same depth."""
    model = pipeline.model
    model.eval()
    torch.manual_seed(2)
    ray_bundle, _ = pipeline.datamanager.next_train(0)
    out = {}
    with torch.no_grad():
        for mode in ("fast", "dense"):
            model.config.renderer = mode
            out[mode] = model(ray_bundle)
    model.config.renderer = "fast"
    hit = out["dense"]["hit"]
    fast_hit = out["fast"]["hit"]
    # Grazing rays may differ (the two sample the ray at different places); the rest must agree.
    assert hit.sum() > 50 and (fast_hit == hit).float().mean() > 0.97, (hit.sum(), fast_hit.sum())
    hit = hit & fast_hit
    assert (out["fast"]["depth"][hit] - out["dense"]["depth"][hit]).abs().max() < 5e-3


def test_occupancy_level_finds_the_sdf_surface_with_the_same_gradients(pipeline):
    """surface=occupancy (the paper's 0.5 level) brackets the same crossings as the SDF's 0 level and the
    implicit gradient of the surface point is the same; only the secant steps land differently."""
    model = pipeline.model
    model.train()
    torch.manual_seed(1)
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    out, grads = {}, {}
    for surface in ("sdf", "occupancy"):
        model.config.surface = surface
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        out[surface] = model(ray_bundle)
        hit = out[surface]["hit"][:, 0]
        # Only the implicit gradient of the surface point reaches the geometry through the canonical point.
        weights = torch.linspace(-1.0, 1.0, 3 * int(hit.sum())).reshape(-1, 3)
        (out[surface]["canonical"][hit] * weights).sum().backward()
        grads[surface] = torch.cat([p.grad.flatten() for p in model.geometry.parameters() if p.grad is not None])
    model.config.surface = "sdf"
    a, b = out["sdf"], out["occupancy"]
    assert torch.equal(a["hit"], b["hit"]) and a["hit"].sum() > 10
    hit = a["hit"][:, 0]
    assert (a["depth"][hit] - b["depth"][hit]).abs().median() < 1e-3
    assert grads["sdf"].abs().sum() > 0
    rel = (grads["sdf"] - grads["occupancy"]).norm() / grads["sdf"].norm()
    assert rel < 0.05, rel


def test_ground_truth_normals_in_world_space_match_the_flame_mesh(pipeline):
    """The normal metric's reference: the subject's normal map, moved to world space, agrees with the
    frame's FLAME vertex normals at the pixels those vertices project to (a wrong axis flip would not)."""
    from headstudio.ops.mesh import vertex_normals
    from headstudio.metrics.geometry import project

    model = pipeline.model
    camera, batch = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    batch = pipeline.eval_inputs(camera, batch)
    frame = int(camera.metadata["frame_index"].reshape(-1)[0])
    verts = model.subject.track.vertices[frame]
    normals = vertex_normals(verts, model.subject.track.flame.faces)
    c2w = camera.camera_to_worlds[0]
    px = project(verts, c2w, camera.fx[0, 0], camera.fy[0, 0], camera.cx[0, 0], camera.cy[0, 0]).round().long()
    gt = batch["gt_normal_world"]
    h, w = gt.shape[:2]
    inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    ref = gt[px[inside, 1], px[inside, 0]]
    n = normals[inside]
    facing = (n * torch.nn.functional.normalize(c2w[:3, 3] - verts[inside], dim=-1)).sum(-1) > 0.3
    sel = facing & (ref.norm(dim=-1) > 0.5)
    assert sel.sum() > 200
    cos = (torch.nn.functional.normalize(n[sel], dim=-1) * ref[sel]).sum(-1)
    assert torch.rad2deg(torch.acos(cos.clamp(-1, 1))).median() < 15.0


def test_viewer_camera_renders_the_slider_frame(pipeline):
    images = viewer_slider_images(pipeline, scale=0.25)
    assert not torch.equal(images[0], images[1])  # the slider's frame (its pose and expression) is used


def test_landmark_projection_matches_the_tracked_landmarks(pipeline):
    """The keypoint metric's projection: FLAME's own landmarks land on the subject's 2D landmarks."""
    from headstudio.metrics.geometry import project

    dataset = pipeline.datamanager.eval_dataset
    camera = dataset.cameras[0:1]
    frame = int(camera.metadata["frame_index"][0, 0])
    lms = pipeline.model.subject.track.landmarks[frame][17:]
    px = project(lms, camera.camera_to_worlds[0], camera.fx[0, 0], camera.fy[0, 0], camera.cx[0, 0], camera.cy[0, 0])
    target = camera.metadata["landmarks"].reshape(-1, 2)[17:68] * dataset.scale_factor  # rows 68-69: the irises
    assert (px - target).norm(dim=-1).mean() < 0.5


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_marching_cubes_export_of_the_canonical_surface(trained):
    """ns-export marching-cubes's contract (config.sdf_field, field.forward_geonetwork -> [sdf, feature]) and a
    closed canonical mesh from that SDF. nerfstudio 1.1.5's exporter itself calls .cuda(): it cannot run on CPU."""
    from nerfstudio.utils.eval_utils import eval_setup

    from headstudio.export.density_mesh import density_grid, mesh_from_grid

    _, pipeline, _, _ = eval_setup(trained("imavatar-surface"), test_mode="test")
    model = pipeline.model
    assert model.config.sdf_field
    out = model.field.forward_geonetwork(torch.zeros(5, 3))
    assert out.shape == (5, 1 + model.config.feature_dim)
    aabb = model.scene_box.aabb
    with torch.no_grad():
        values = density_grid(lambda x: -model.field.forward_geonetwork(x)[:, 0], aabb, 48)
    verts, faces = mesh_from_grid(values, aabb, 0.0)
    assert len(verts) > 100 and len(faces) > 100
    # Closed-ish: almost every edge is shared by exactly two faces.
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).mean() > 0.95


def test_registered_with_nerfstudio():
    from nerfstudio.plugins.registry import discover_methods

    methods, _ = discover_methods()
    cfg = methods["imavatar-surface"]
    assert cfg.pipeline.model.sdf_field and cfg.pipeline.datamanager.dataparser.__class__.__name__ == "FlameVideoDataParserConfig"


@pytest.mark.parametrize("deformer", ["d-net", "b-morph"])
def test_ablation_deformers_train_geometry_and_their_network(subjects, deformer):
    pipe = _pipeline(subjects["imavatar"], deformer=deformer)
    model = pipe.model
    model.train()
    assert set(pipe.get_param_groups()["deformation"]) == set(model.backward_net.parameters())
    ray_bundle, batch = pipe.datamanager.next_train(0)
    outputs = model(ray_bundle)
    assert outputs["hit"].any()
    losses = model.get_loss_dict(outputs, batch)
    assert set(losses) == {"rgb_loss", "mask_loss", "flame_loss"} and losses["flame_loss"] > 0
    sum(losses.values()).backward()
    for name, net in (("geometry", model.geometry), ("texture", model.texture), (deformer, model.backward_net)):
        assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0, name


def test_strided_march_finds_the_dense_crossings_on_the_initial_sphere(pipeline):
    """march-stride > 1 marches every n-th sample, then the dense ones inside the first bracket: on a thick
    surface (the initial sphere) it finds the same hits at the same depths as marching every sample."""
    model = pipeline.model
    model.eval()
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    out = {}
    try:
        with torch.no_grad():
            for stride in (1, 3):
                model.config.march_stride = stride
                out[stride] = model.get_outputs_for_camera(camera)
    finally:
        model.config.march_stride = 1
    a, b = out[1]["accumulation"][..., 0] > 0.5, out[3]["accumulation"][..., 0] > 0.5
    assert a.sum() > 50 and (a & b).sum() / (a | b).sum() > 0.97
    both = a & b
    assert (out[1]["depth"][both] - out[3]["depth"][both]).abs().median() < 1e-4


def test_flame_start_puts_the_surface_on_the_canonical_flame_mesh(subjects):
    """geometry_init "flame" (ours): before training the zero level lies on the canonical FLAME mesh, not on the
    sphere; a point inside the head (between the ears) is inside, one beyond the nose tip outside."""
    pipe = _pipeline(subjects["imavatar"], geometry_init="flame", flame_init_steps=150)
    model = pipe.model
    verts = model.skin.canonical_vertices
    losses = model.geometry_init_losses
    assert len(losses) == 150 and np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])
    with torch.no_grad():
        on_mesh = model.canonical_sdf(verts).abs().median()
        sphere = _pipeline(subjects["imavatar"]).model.canonical_sdf(verts).abs().median()
        centre = verts.mean(0, keepdim=True)
        front = verts[verts[:, 2].argmax()][None] + torch.tensor([[0.0, 0.0, 0.15]])
        inside, outside = model.canonical_sdf(centre), model.canonical_sdf(front)
    size = float((verts.amax(0) - verts.amin(0)).norm())
    assert on_mesh < 0.03 * size and on_mesh < 0.3 * sphere
    assert inside < 0 < outside
