"""rignerf-star: 3DMM-guided deformation, nearest-vertex search, model, ns-train / ns-eval / export."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import method_pipeline, viewer_slider_images

from headstudio.deformers.rignerf import RigNeRFDeformation, guided_displacement
from headstudio.ops.nearest import NearestVertex, nearest_vertex_bruteforce

BIN = Path(sys.executable).parent


def _meshes(flame):
    """Two frames of the procedural FLAME mesh (a smile, an open jaw) and the neutral mesh."""
    flame = flame.float()
    expr = torch.zeros(3, 50)
    expr[0, 0] = 2.0
    pose = torch.zeros(3, 15)
    pose[1, 6] = 0.3
    verts = flame(expression=expr, pose=pose).vertices * 4.0
    return verts[:2], verts[2]


@pytest.mark.parametrize("backend", ["kdtree", "torch"])
def test_nearest_vertex_backends_match_brute_force(backend):
    torch.manual_seed(0)
    table = torch.randn(3, 200, 3)
    pts = torch.randn(500, 3)
    frame = torch.randint(0, 3, (500,))
    idx, dist = NearestVertex(backend)(pts, frame, table)
    ref_idx, ref_dist = nearest_vertex_bruteforce(pts, frame, table)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(dist, ref_dist, atol=1e-5)
    assert torch.allclose(dist, (pts - table[frame, idx]).norm(dim=-1), atol=1e-5)


def test_guided_displacement_is_the_mesh_displacement_on_the_mesh(flame):
    guide, neutral = _meshes(flame)
    nearest = NearestVertex()
    moving = (neutral - guide[0]).norm(dim=-1) > 1e-3  # vertices the smile moves
    assert moving.sum() > 50
    vid = torch.nonzero(moving).reshape(-1)
    frame = torch.zeros_like(vid)
    disp = guided_displacement(guide[0, vid], frame, guide, neutral, nearest)
    assert torch.allclose(disp, neutral[vid] - guide[0, vid], atol=1e-6)
    # The other frame (open jaw) has its own mesh and displacement.
    jaw = torch.nonzero((neutral - guide[1]).norm(dim=-1) > 1e-2).reshape(-1)
    disp1 = guided_displacement(guide[1, jaw], torch.ones_like(jaw), guide, neutral, nearest)
    assert torch.allclose(disp1, neutral[jaw] - guide[1, jaw], atol=1e-6)


def test_guided_displacement_decays_away_from_the_mesh():
    # A mesh of two far-apart vertices: the nearest vertex stays the same as a point moves away.
    guide = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]])
    neutral = torch.tensor([[0.0, 0.1, 0.0], [10.0, 0.0, 0.0]])
    d = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0])
    pts = torch.stack([torch.zeros_like(d), torch.zeros_like(d), d], dim=-1)
    disp = guided_displacement(pts, torch.zeros(5, dtype=torch.long), guide, neutral, NearestVertex(), falloff=1.0)
    assert torch.allclose(disp[:, 1], 0.1 * torch.exp(-d))
    assert (disp[1:, 1] < disp[:-1, 1]).all()
    assert torch.allclose(disp[:, [0, 2]], torch.zeros(5, 2))


def test_residual_is_near_zero_at_init_and_trainable():
    torch.manual_seed(0)
    deformer = RigNeRFDeformation(latent_dim=8)
    pts, guided = torch.randn(64, 3) * 0.5, torch.randn(64, 3) * 0.05
    latent = torch.randn(64, 8, requires_grad=True)
    out = deformer(pts, guided, latent)
    assert (out - guided).abs().max() < 1e-3  # starts from the 3DMM displacement
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deformer.parameters())
    assert latent.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def pipeline(subjects):
    return method_pipeline("rignerf-star", subjects["imavatar"], layer_width=64, num_coarse_samples=32,
                           num_importance_samples=16)  # fmt: skip


def test_param_groups_match_the_optimizers(pipeline):
    from headstudio.method_configs.rignerf_star import rignerf_star

    assert set(pipeline.get_param_groups()) == set(rignerf_star.config.optimizers)
    assert rignerf_star.config.pipeline.datamanager.train_num_rays_per_batch == 1550  # Chen et al. 2023


def test_guide_is_the_frame_mesh_without_head_pose(pipeline):
    model = pipeline.model
    track = model.subject.track
    assert torch.equal(model.guide_vertices, track.vertices)  # global rotation folded into the camera
    assert (track.pose[:, :3] == 0).all()


def test_rendering_gradients_reach_deformation_codes_and_field(pipeline):
    model = pipeline.model
    model.train()
    model.zero_grad(set_to_none=True)
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    losses = model.get_loss_dict(model(ray_bundle), batch)
    assert set(losses) == set(model.config.loss_coefficients)
    sum(losses.values()).backward()
    last = model.deformer.mlp.layers[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    assert model.deformation_codes.codes.grad.abs().sum() > 0
    assert model.appearance_codes.codes.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.field.mlp_base.parameters())


def test_viewer_camera_renders_the_slider_frame(pipeline):
    images = viewer_slider_images(pipeline, scale=0.5)
    assert not torch.equal(images[0], images[1])  # the slider's frame (guide mesh, codes) is used


def test_unfolded_head_pose_is_refused(subjects):
    from headstudio.method_configs.rignerf_star import rignerf_star

    cfg = copy.deepcopy(rignerf_star.config)
    cfg.pipeline.datamanager.data = subjects["imavatar"]
    cfg.pipeline.datamanager.dataparser.data = subjects["imavatar"]
    cfg.pipeline.datamanager.dataparser.fold_head_pose = False
    cfg.pipeline.model.layer_width = 32
    with pytest.raises(ValueError, match="folds the tracked head pose"):
        cfg.pipeline.setup(device="cpu", test_mode="val")


# ---------------------------------------------------------------------------------- end to end
def test_registered_with_nerfstudio():
    from nerfstudio.plugins.registry import discover_methods

    methods, _ = discover_methods()
    cfg = methods["rignerf-star"]
    assert cfg.pipeline.datamanager.dataparser.__class__.__name__ == "FlameVideoDataParserConfig"
    assert cfg.pipeline.datamanager.dataparser.fold_head_pose
