"""tensorf-local-deform: fields, deformation, schedule, and ns-train / ns-eval / export end to end."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import method_pipeline, viewer_slider_images

from headstudio.deformers.local_fields import (
    LocalDeformationFields,
    attention_mask,
    keypoint_selection,
    matched_global_width,
)
from headstudio.fields.tensorf import VMGrid, vm_features
from headstudio.flame.procedural import EXPRESSION_NAMES

BIN = Path(sys.executable).parent


def test_vm_lookup_passes_gradients_to_points():
    torch.manual_seed(0)
    grid = VMGrid(16, 4)
    xyz = (torch.rand(5, 3) * 1.6 - 0.8).double().requires_grad_(True)
    planes, lines = grid.planes.double(), grid.lines.double()
    f = lambda p: vm_features(planes, lines, p).sum()  # noqa: E731
    (grad,) = torch.autograd.grad(f(xyz), xyz)
    eps = 1e-5
    num = torch.zeros_like(xyz)
    for i in range(5):
        for j in range(3):
            d = torch.zeros_like(xyz)
            d[i, j] = eps
            num[i, j] = (f(xyz + d) - f(xyz - d)) / (2 * eps)
    assert grad.abs().sum() > 0
    assert torch.allclose(grad, num, atol=1e-6)


def test_keypoints_follow_seed_000():
    sel34 = keypoint_selection(34)
    assert sel34.shape == (34, 68) and torch.equal(sel34.argmax(1), torch.arange(0, 68, 2))
    sel5 = keypoint_selection(5)
    assert torch.allclose(sel5.sum(1), torch.ones(5)) and sel5[4, 57] == 1
    with pytest.raises(ValueError, match="34, 5 or 1"):
        keypoint_selection(7)


def test_attention_mask_is_local(flame):
    flame = flame.float()
    neutral = flame(expression=torch.zeros(1, 50))
    kp = keypoint_selection(34) @ neutral.landmarks[0]
    att = attention_mask(lambda e, p: flame(expression=e, pose=p).vertices, kp, 50, radius=0.02)
    assert att.shape == (34, 53) and float(att.max()) == pytest.approx(1.0)
    mouth = [EXPRESSION_NAMES.index(n) for n in ("smile", "lips_apart", "lip_stretch", "lip_pucker")]
    brow = [EXPRESSION_NAMES.index(n) for n in ("brow_raise_left", "brow_raise_right", "brow_furrow")]
    mouth_kp, brow_kp = 48 // 2, 20 // 2  # landmark 48 (mouth corner), 20 (brow)
    assert att[mouth_kp, mouth].mean() > 3 * att[mouth_kp, brow].mean()
    assert att[brow_kp, brow].mean() > 3 * att[brow_kp, mouth].mean()
    jaw = slice(50, 53)
    chin_kp = 8 // 2  # landmark 8: chin
    assert att[chin_kp, jaw].max() > att[brow_kp, jaw].max()


def _fields(k: int = 34, top_k=4, width: int = 40) -> LocalDeformationFields:
    torch.manual_seed(0)
    return LocalDeformationFields(torch.rand(k, 53), latent_dim=8, hidden_dim=width, top_k=top_k, blend_sigma=0.1)


def _inputs(k: int, n_per: int = 8):
    torch.manual_seed(1)
    kp = torch.randn(1, k, 3) * 0.3
    pts = (kp[0][:, None] + 0.02 * torch.randn(k, n_per, 3)).reshape(-1, 3)
    row = torch.zeros(len(pts), dtype=torch.long)
    return pts, row, kp


def test_deformation_is_near_identity_at_init():
    fields = _fields()
    pts, row, kp = _inputs(34)
    zeros = dict(cond=torch.zeros(1, 53), latent=torch.zeros(1, 8), pose=torch.zeros(1, 6))
    out = fields(pts, row, kp, **zeros)
    assert out.offset.abs().max() < 1e-3  # a head is ~1 world unit across


@pytest.mark.parametrize("top_k", [4, None])
def test_gradients_reach_every_local_field(top_k):
    fields = _fields(top_k=top_k)
    pts, row, kp = _inputs(34)
    cond, latent = torch.randn(1, 53), torch.randn(1, 8, requires_grad=True)
    out = fields(pts, row, kp, cond, latent, torch.randn(1, 6))
    (out.offset.square().sum() + out.penalty.sum()).backward()
    for name in ("w_point", "w_frame", "w_out"):
        per_field = getattr(fields, name).grad.abs().flatten(1).sum(1)
        assert (per_field > 0).all(), f"{name}: fields without gradient: {(per_field == 0).nonzero().flatten()}"
    assert all((w.grad.abs().flatten(1).sum(1) > 0).all() for w in fields.w_hidden)
    assert latent.grad.abs().sum() > 0


def test_top_k_blend_approximates_the_full_blend():
    full, sparse = _fields(top_k=None), _fields(top_k=4)
    sparse.load_state_dict(full.state_dict())
    with torch.no_grad():
        full.w_out.normal_(std=0.1)
        sparse.w_out.copy_(full.w_out)
    pts, row, kp = _inputs(34)
    args = (torch.randn(1, 53), torch.randn(1, 8), torch.randn(1, 6))
    a, b = full(pts, row, kp, *args).offset, sparse(pts, row, kp, *args).offset
    assert (a - b).norm(dim=-1).mean() < 0.1 * a.norm(dim=-1).mean()


def test_global_field_has_the_parameters_of_34_local_ones():
    local = sum(p.numel() for p in _fields().parameters())
    in_dim = 3 + 53 + 8 + 6
    width = matched_global_width(in_dim, 40, 3, 34)
    glob = sum(p.numel() for p in _fields(k=1, width=width).parameters())
    assert abs(glob - local) / local < 0.02


# ---------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def pipeline(subjects):
    return method_pipeline("tensorf-local-deform", subjects["imavatar"], rays=512, final_resolution=48,
                           init_resolution=32, num_uniform_samples=32, num_samples=16)  # fmt: skip


def test_param_groups_and_losses_match_the_config(pipeline):
    from headstudio.method_configs.tensorf_local_deform import tensorf_local_deform

    assert set(pipeline.get_param_groups()) == set(tensorf_local_deform.config.optimizers)
    model = pipeline.model
    model.train()
    model.step = 10**9  # joint phase: every loss present
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    losses = model.get_loss_dict(model(ray_bundle), batch)
    assert set(losses) == set(model.config.loss_coefficients)


def test_deformation_is_frozen_while_tensorf_pretrains(pipeline):
    model = pipeline.model
    model.train()
    ray_bundle, batch = pipeline.datamanager.next_train(0)
    for step, frozen in ((0, True), (model.config.scaled(model.config.pretrain_iters), False)):
        model.step = step
        model.zero_grad(set_to_none=True)
        losses = model.get_loss_dict(model(ray_bundle), batch)
        sum(losses.values()).backward()
        grads = [p.grad for p in model.deformer.parameters()]
        assert model.deformation_frozen is frozen
        assert all(g is None for g in grads) is frozen
        assert model.field.density_grid.planes.grad is not None
        if not frozen:
            assert model.deformer.w_out.grad.abs().sum() > 0  # rendering gradient reaches the fields
            assert model.deformation_codes.codes.grad.abs().sum() > 0


def test_render_path_shades_only_rays_that_can_change_the_image(pipeline):
    """The shared deformed-field path: rays through empty space keep the background exactly and are not
    deformed at their fine samples; test-time fitting's reduced sampling scales the samplers and restores them."""
    from nerfstudio.cameras.rays import RayBundle

    model = pipeline.model
    model.eval()
    n = 6
    origins = torch.tensor([[0.0, 0.0, 4.0]]).repeat(n, 1)
    directions = torch.tensor([[0.0, 0.0, -1.0]] * 3 + [[0.0, 1.0, 0.0]] * 3)  # 3 through the head, 3 away from it
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(n, 1),
                       camera_indices=torch.zeros(n, 1, dtype=torch.long), nears=torch.full((n, 1), 2.0),
                       fars=torch.full((n, 1), 6.0), metadata={"frame_index": torch.zeros(n, 1, dtype=torch.long)})  # fmt: skip
    planes = model.field.density_grid.planes
    saved = planes.data.clone()
    with torch.no_grad():
        planes.data.fill_(0.3)  # dense everywhere in the box
        deformed = []
        original = model.deform
        model.deform = lambda points, row, rows: (deformed.append(points.shape[0]), original(points, row, rows))[1]
        try:
            out = model.get_outputs(bundle)
            with model.reduced_sampling(0.5):
                assert model.sampler_uniform.num_samples == 16 and model.sampler_pdf.num_samples == 8
                reduced = model.get_outputs(bundle)
        finally:
            model.deform = original
            planes.data.copy_(saved)
    assert model.sampler_uniform.num_samples == 32 and model.sampler_pdf.num_samples == 16
    away = out["accumulation"][3:, 0]
    assert torch.all(away == 0) and torch.equal(out["rgb"][3:], model.background.expand(3, 3))
    assert torch.all(out["accumulation"][:3, 0] > 0.1) and reduced["rgb"].shape == (n, 3)
    # Per render: the strided uniform pass (all rays), then fine samples of the 3 active rays only.
    assert deformed[1] == 3 * model.config.num_samples and deformed[3] == 3 * 8


def test_viewer_frame_slider_and_fixed_frame(pipeline):
    from nerfstudio.cameras.rays import RayBundle

    subject = pipeline.model.subject
    bundle = RayBundle(origins=torch.zeros(3, 3), directions=torch.ones(3, 3), pixel_area=torch.ones(3, 1))
    assert (subject.frame_of(bundle) == subject.default_frame).all()
    subject.drive.c01_frame.value = 5
    assert (subject.frame_of(bundle) == 5).all()
    bundle.metadata = {"frame_index": torch.tensor([[1], [2], [3]])}
    assert subject.frame_of(bundle).tolist() == [1, 2, 3]
    subject.fixed_frame = 6
    try:
        assert (subject.frame_of(bundle) == 6).all()
    finally:
        subject.fixed_frame = None
        subject.drive.c01_frame.value = subject.default_frame


def test_viewer_camera_without_frame_renders_the_slider_frame(pipeline):
    images = viewer_slider_images(pipeline)
    assert not torch.equal(images[0], images[1])  # the slider's frame (codes, keypoints) is used


def test_hs_export_frame_lists():
    from headstudio.scripts.export import parse_frames

    assert parse_frames("0,10, 20", 30) == [0, 10, 20]
    assert parse_frames("0-20:10", 30) == [0, 10, 20]
    with pytest.raises(ValueError, match="frames 0..29"):
        parse_frames("0,30", 30)
    with pytest.raises(ValueError, match="expected comma-separated"):
        parse_frames("a", 30)


def test_registered_with_nerfstudio():
    from nerfstudio.plugins.registry import discover_methods

    methods, _ = discover_methods()
    assert methods["tensorf-local-deform"].pipeline.datamanager.dataparser.__class__.__name__ == (
        "FlameVideoDataParserConfig"
    )
    assert os.environ.get("HEADSTUDIO_FRAME") is None
