"""mononphm-track: NeuS weights, SH shading, posed anchors by root finding, the tracking schedule, and a short
ns-train / ns-eval / hs-export run on a tiny Kinect sequence with a tiny prior."""

from __future__ import annotations

import json
import math

import pytest
import torch

from headstudio.engine.tracking_schedule import TrackingSchedule, TrackingScheduleConfig
from headstudio.rendering.neus import alpha_weights, inverse_std, neus_alpha, neus_weights, upsample
from headstudio.rendering.sh import sh_basis, sh_shading, uniform_light
from tests.conftest import run_in_process


# ---------------------------------------------------------------- NeuS
def _plane_ray(num: int = 64, surface: float = 1.3):
    t = torch.linspace(0.0, 3.0, num)[None]
    sdf = surface - t  # a plane crossed at t = surface, heading inside
    deltas = torch.full_like(t, float(t[0, 1] - t[0, 0]))
    return t, sdf, torch.full_like(t, -1.0), deltas


@pytest.mark.parametrize("variance", [0.3, 0.5, 0.8])
def test_neus_weights_nonnegative_bounded_and_peak_at_the_zero_crossing(variance):
    t, sdf, slope, deltas = _plane_ray()
    w = neus_weights(sdf, slope, deltas, inverse_std(variance))
    assert (w >= 0).all() and float(w.sum()) <= 1.0 + 1e-5
    assert abs(float(t[0, w[0].argmax()]) - 1.3) <= float(deltas[0, 0])
    assert float(w.sum()) > 0.9  # an opaque surface inside the ray's range
    # Random SDFs: still non-negative and at most 1 in total.
    rnd = torch.randn(32, 40)
    w = neus_weights(rnd, torch.randn(32, 40), torch.rand(32, 40) * 0.1, 50.0)
    assert (w >= 0).all() and (w.sum(-1) <= 1.0 + 1e-5).all()


def test_neus_sharpness_concentrates_the_weights():
    t, sdf, slope, deltas = _plane_ray(2048)
    spread = []
    for v in (0.3, 0.8):
        w = neus_weights(sdf, slope, deltas, inverse_std(v))[0]
        mean = (w * t[0]).sum() / w.sum()
        spread.append(float(((w * (t[0] - mean) ** 2).sum() / w.sum()).sqrt()))
    assert spread[1] < 0.1 * spread[0]
    assert math.isclose(inverse_std(0.3), math.exp(3.0))


def test_outside_only_ray_is_transparent_and_upsampling_finds_the_surface():
    t = torch.linspace(0.0, 3.0, 32)[None]
    far_away = 2.0 + 0.0 * t  # never crosses
    alpha = neus_alpha(far_away, torch.zeros_like(t), torch.full_like(t, 0.1), 100.0)
    assert float(alpha_weights(alpha).sum()) < 1e-3
    fine = upsample(t, 1.3 - t, 32, inverse_std(0.3))
    assert float((fine - 1.3).abs().median()) < 0.2


# ---------------------------------------------------------------- SH
def test_sh_with_only_the_constant_band_scales_albedo_uniformly():
    normals = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    assert torch.allclose(sh_shading(normals, uniform_light(3)), torch.ones(500, 3), atol=1e-6)
    coeffs = uniform_light(3) * torch.tensor([0.5, 1.0, 2.0])
    albedo = torch.rand(500, 3)
    shaded = albedo * sh_shading(normals, coeffs)
    assert torch.allclose(shaded, albedo * torch.tensor([0.5, 1.0, 2.0]), atol=1e-6)
    # A band-1 coefficient makes the shading follow one direction.
    coeffs = uniform_light(1)
    coeffs[2] = 0.5  # z
    s = sh_shading(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]), coeffs)
    assert s[0, 0] > 1.0 > s[1, 0]
    assert sh_basis(normals).shape == (500, 9)


# ---------------------------------------------------------------- schedule
def test_tracking_schedule_stages():
    sched = TrackingSchedule(TrackingScheduleConfig(first_frame_steps=250, per_frame_steps=60), num_frames=4)
    assert sched.stage(0).name == "first" and sched.stage(249).position == 0
    s = sched.stage(250)
    assert (s.name, s.position, s.step) == ("sequential", 1, 0)
    assert sched.stage(250 + 60 * 3 - 1).position == 3
    assert sched.stage(sched.joint_start).name == "joint" == sched.stage(10**6).name
    picks = {sched.position(step) for step in range(sched.joint_start, sched.joint_start + 200)}
    assert picks == {0, 1, 2, 3} and sched.position(sched.joint_start + 7) == sched.position(sched.joint_start + 7)
    short = TrackingSchedule(TrackingScheduleConfig(step_scale=0.1), num_frames=4)
    assert (short.first, short.per_frame) == (25, 6)


# ---------------------------------------------------------------- a tiny prior and the model
@pytest.fixture(scope="module")
def pipeline(tiny_prior, subjects):
    import copy

    from headstudio.method_configs.mononphm_track import mononphm_track

    cfg = copy.deepcopy(mononphm_track.config)
    dm = cfg.pipeline.datamanager
    dm.data = dm.dataparser.data = subjects["kinect"]
    dm.train_num_rays_per_batch = 64
    dm.schedule.step_scale = 0.02
    cfg.pipeline.model.prior = tiny_prior
    cfg.pipeline.model.num_coarse_samples = 8
    cfg.pipeline.model.num_importance_samples = 8
    return cfg.pipeline.setup(device="cpu", test_mode="val")


def test_posed_anchors_satisfy_the_backward_deformation(pipeline):
    model = pipeline.model
    torch.manual_seed(0)
    frame = model.tracked_frames[1]
    with torch.no_grad():  # a deformation that is not the identity, and non-zero codes
        last = model.prior.deformation.out
        last.weight.normal_(0.0, 0.05)
        last.bias.normal_(0.0, 0.02)
        model.z_exp.codes[frame] = 0.3 * torch.randn(model.z_exp.dim)
    try:
        posed, converged = model.posed_anchors(frame)
        assert converged.float().mean() > 0.9
        codes = model.codes(frame)
        x_c, _ = model.prior.deformation(posed.detach()[None], codes["exp"].detach(), codes["geo"].detach())
        a_c = model.prior.field.anchors(model.prior.field.split_code(codes["geo"].detach())[0])[0][model.lm_anchors]
        residual = (x_c[0] - a_c).norm(dim=-1)[converged]
        assert float(residual.max()) < 1e-3 and float((posed.detach() - a_c).norm(dim=-1).mean()) > 1e-3
        # The implicit gradient matches a finite difference of the root in z_exp.
        direction = torch.randn(model.z_exp.dim)
        (g,) = torch.autograd.grad((posed * torch.tensor([1.0, -2.0, 0.5])).sum(), model.z_exp.codes)
        g = g.to_dense()[frame] if g.is_sparse else g[frame]
        eps = 1e-3
        with torch.no_grad():
            model.z_exp.codes[frame] += eps * direction
        shifted, _ = model.posed_anchors(frame)
        with torch.no_grad():
            model.z_exp.codes[frame] -= eps * direction
        fd = float(((shifted - posed) * torch.tensor([1.0, -2.0, 0.5])).sum().detach()) / eps
        assert abs(fd - float(g @ direction)) < 0.05 * max(1.0, abs(fd))
    finally:
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            model.z_exp.codes.zero_()


def test_datamanager_serves_the_scheduled_frame_and_losses_backpropagate(pipeline):
    dm, model = pipeline.datamanager, pipeline.model
    # Identity codes start at the prior's mean identity code (code_origin "mean"; the tiny prior has one identity).
    start = model.codes(model.tracked_frames[0])
    assert torch.allclose(start["geo"], model.prior.z_geo.weight.mean(0, keepdim=True))
    assert torch.allclose(start["app"], model.prior.z_app.weight.mean(0, keepdim=True))
    assert float(start["geo"].norm()) > 0 and float(model.z_geo.detach().norm()) == 0.0
    sched = dm.schedule
    for step in (0, sched.first, sched.first + sched.per_frame, sched.joint_start + 3):
        bundle, batch = dm.next_train(step)
        frames = bundle.metadata["frame_index"].reshape(-1).unique()
        assert frames.tolist() == [model.tracked_frames[sched.position(step)]]
        assert "segmentation" in batch and batch["segmentation"].shape[0] == batch["image"].shape[0]
    model.train()
    step = sched.first  # sequential: identity, appearance and lighting frozen
    model.begin_step(step)
    bundle, batch = dm.next_train(step)
    losses = model.get_loss_dict(model(bundle), batch)
    assert {"rgb_loss", "silhouette_loss", "landmark_loss", "expression_prior", "smoothness"} <= set(losses)
    assert "code_prior" not in losses
    assert model.viewer_progress.value.startswith("sequential: frame 2 of")  # the viewer's tracking progress
    sum(losses.values()).backward()
    assert model.z_geo.grad is None and model.sh.grad is None
    frame = model.tracked_frames[1]
    g = model.z_exp.codes.grad.coalesce()
    assert g.indices().reshape(-1).unique().tolist() == [frame]  # only the current frame's row moves
    assert model.rotation.codes.grad is not None and model.translation.codes.grad is not None
    for p in model.parameters():
        p.grad = None
    model.begin_step(0)
    bundle, batch = dm.next_train(0)
    sum(model.get_loss_dict(model(bundle), batch).values()).backward()
    assert model.z_geo.grad.abs().sum() > 0 and model.sh.grad.abs().sum() > 0 and model.z_app.grad.abs().sum() > 0
    for p in model.parameters():
        p.grad = None


def test_missing_prior_is_one_line(subjects, tmp_path):
    """The error names the flag and the file and says how to make a prior, in one line (ns-train prints a
    DataError as that one line and exits 1: ``tests/test_dataparser.py`` runs it in a subprocess)."""
    import copy

    from headstudio.data.errors import DataError
    from headstudio.method_configs.mononphm_track import mononphm_track

    cfg = copy.deepcopy(mononphm_track.config)
    cfg.pipeline.datamanager.data = cfg.pipeline.datamanager.dataparser.data = subjects["kinect"]
    cfg.pipeline.model.prior = tmp_path / "none.ckpt"
    with pytest.raises(DataError) as err:
        cfg.pipeline.setup(device="cpu", test_mode="val")
    message = str(err.value)
    assert "\n" not in message and "--pipeline.model.prior" in message
    assert "none.ckpt: no such file" in message and "hs-prior train" in message


@pytest.mark.e2e
def test_ns_train_eval_and_export_on_a_tiny_kinect_sequence(trained, tmp_path):
    config = trained("mononphm-track")  # the shared run (also the browser test's)
    stdout = trained.stdout[config]
    assert "mononphm-track schedule: first frame: steps 0-" in stdout.replace("\n", " ")
    ckpts = list(config.parent.glob("nerfstudio_models/*.ckpt"))
    assert ckpts
    res = run_in_process("ns-eval", "--load-config", str(config), "--output-path", str(tmp_path / "eval.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    for key in ("psnr", "psnr_dagger", "ssim", "chamfer_l1_m", "recall_2.5mm"):
        assert key in results, sorted(results)
    res = run_in_process("hs-export", "mesh", "--load-config", str(config), "--frames", "0,2", "--resolution", "40",
                  "--output-dir", str(tmp_path / "meshes"))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    from headstudio.export.ply import read_ply

    for frame in (0, 2):
        verts, faces = read_ply(tmp_path / "meshes" / f"frame_{frame:05d}.ply")
        assert len(verts) > 50 and len(faces) > 50


def test_viewer_drive_reset_renders_the_frame_and_the_neck_turns_the_head(pipeline):
    import copy

    from headstudio.viewer.controls import TRACKED

    model = pipeline.model
    model.eval()
    subject, drive = model.subject, model.subject.drive
    camera = copy.deepcopy(pipeline.datamanager.train_dataset.cameras[0:1])
    camera.metadata = None
    camera.rescale_output_resolution(0.25)
    frame = model.tracked_frames[1]

    def render():
        torch.manual_seed(0)
        with torch.no_grad():
            return model.get_outputs_for_camera(camera)["rgb"]

    drive.c00_source.value, drive.c01_frame.value = TRACKED, frame
    tracked = render()
    drive.reset_to_frame()
    assert (render() - tracked).abs().max() < 1e-4  # manual with the frame's values: the same picture
    assert model.base_rotation[subject.driven_frame].allclose(model.base_rotation[frame], atol=1e-5)
    drive.c06_neck_yaw.value = 0.6
    turned = render()
    rel = model.base_rotation[frame].T @ model.base_rotation[subject.driven_frame]
    assert float(torch.rad2deg(torch.arccos(((rel.trace() - 1) / 2).clamp(-1, 1)))) > 20  # the head turned
    assert (turned - tracked).abs().max() > 1e-3
    drive.c00_source.value, drive.c01_frame.value = TRACKED, subject.default_frame
