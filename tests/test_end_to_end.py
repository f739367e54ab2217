"""Every method end to end through nerfstudio's and headstudio's commands, on the shared tiny runs:
checkpoints, ns-eval (both protocols), hs-export mesh, ns-export tsdf, resume after a kill, and
test-time code fitting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import BIN, ns_train_args, ns_train_in_process, run_cli, run_in_process
from headstudio.export.ply import read_ply

METHODS = ("tensorf-local-deform", "rignerf-star", "imavatar-surface")
VOLUMETRIC = ("tensorf-local-deform", "rignerf-star")

CHECKPOINT_KEYS = {
    "tensorf-local-deform": ("deformer.w_out",),
    "rignerf-star": ("deformer.mlp.layers.5.weight",),
    "imavatar-surface": ("skin.deformer.", "field.geometry."),
}
"""A parameter of each method's deformation (and canonical field) that every checkpoint must hold."""

def lpips_ok(value) -> bool:
    return isinstance(value, float) or (isinstance(value, str) and value.startswith("unavailable"))


@pytest.mark.e2e
@pytest.mark.parametrize("method", METHODS)
def test_ns_train_checkpoint_loads_without_unsafe_pickles(trained, method):
    (ckpt,) = (trained(method).parent / "nerfstudio_models").glob("step-*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key in CHECKPOINT_KEYS[method]:
        assert any(key in k for k in state["pipeline"]), key


@pytest.mark.e2e
@pytest.mark.parametrize("method", METHODS)
def test_ns_eval_writes_both_protocols(trained, method, tmp_path):
    out = tmp_path / "eval.json"
    res = run_in_process("ns-eval", "--load-config", trained(method), "--output-path", out)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for key in ("psnr", "ssim", "l1", "psnr_dagger", "ssim_dagger", "l1_dagger"):
        assert np.isfinite(results[key]), key
    assert 0 < results["psnr"] < 60 and 0 <= results["l1"] <= 1
    assert results["test_time_steps"] == (2 if method == "imavatar-surface" else 3)
    assert results["test_time_seconds_per_frame"] > 0
    assert lpips_ok(results.get("lpips"))
    if method == "imavatar-surface":
        for key in ("normal_error", "keypoint_error", "normal_error_dagger"):
            assert np.isfinite(results[key]), key
        assert 0 <= results["normal_error"] <= 180 and results["keypoint_error"] >= 0
    else:  # the volumetric methods: the normals of their rendered depth (NaN where nothing renders opaque)
        for key in ("normal_error", "normal_error_dagger"):
            assert np.isnan(results[key]) or 0 <= results[key] <= 180, key


@pytest.mark.e2e
@pytest.mark.parametrize("method", METHODS)
def test_test_time_fitting_changes_only_the_frame_codes(trained, method):
    """Each method with per-frame codes fits them on a test frame; the networks stay as trained."""
    from nerfstudio.utils.eval_utils import eval_setup

    from headstudio.pipelines.code_fitting import optimise_frame_codes
    from headstudio.pipelines.head_pipeline import frame_codes_of

    _, pipeline, _, _ = eval_setup(trained(method), test_mode="test")
    model = pipeline.model
    camera, batch = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    frame = int(camera.metadata["frame_index"].reshape(-1)[0])
    codes = frame_codes_of(model)
    assert codes, f"{method} has per-frame codes"
    ids = {id(t.codes) for t in codes}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in ids}
    reference = [t(torch.tensor([frame]))[0].detach().clone() for t in codes]
    losses = optimise_frame_codes(model, camera, batch["image"][..., :3], codes, steps=4, num_rays=128)
    assert len(losses) == 4 and all(np.isfinite(losses))
    for table, ref in zip(codes, reference):
        assert bool(table.own[frame]) and not torch.equal(table.codes[frame], ref)
    for name, p in model.named_parameters():
        if id(p) not in ids:
            assert torch.equal(p, before[name]), name


@pytest.mark.e2e
@pytest.mark.parametrize("method", VOLUMETRIC)
def test_hs_export_writes_per_frame_meshes_of_the_head(trained, method, tmp_path):
    from nerfstudio.utils.eval_utils import eval_setup

    from headstudio.export.density_mesh import density_grid

    config = trained(method)
    # A few iterations leave a faint field: mesh it halfway between its extremes.
    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    values = density_grid(lambda x: pipeline.model.observed_density(x, 2), pipeline.model.scene_box.aabb, 24)
    level = 0.5 * (values.min() + values.max())
    args = ("hs-export", "mesh", "--load-config", config, "--frames", "0,2", "--resolution", "32", "--level", f"{level:.6f}")
    res = run_in_process(*args, "--output-dir", tmp_path / "head")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "connected components" in res.stdout
    res = run_in_process(*args, "--output-dir", tmp_path / "all", "--keep-all-components")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for frame in (0, 2):
        verts, faces = read_ply(tmp_path / "head" / f"frame_{frame:05d}.ply")
        all_verts, all_faces = read_ply(tmp_path / "all" / f"frame_{frame:05d}.ply")
        assert len(verts) > 0 and len(faces) > 0 and np.abs(verts).max() <= 1.0 + 1e-5
        assert len(faces) <= len(all_faces) and faces.max() < len(verts)


@pytest.mark.e2e
def test_hs_export_moves_the_canonical_surface(trained, tmp_path):
    config = trained("imavatar-surface")
    res = run_in_process("hs-export", "mesh", "--load-config", config, "--frames", "0,1", "--resolution", "40",
                  "--output-dir", tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    canon, faces = read_ply(tmp_path / "canonical.ply")
    frame0, faces0 = read_ply(tmp_path / "frame_00000.ply")
    assert len(canon) > 0 and len(canon) == len(frame0) and np.array_equal(faces, faces0)
    res = run_in_process("hs-export", "mesh", "--load-config", config, "--expression", "3.0", "--pose", "0,0,0,0,0,0,0.4",
                  "--resolution", "40", "--output-dir", tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    moved, _ = read_ply(tmp_path / "explicit.ply")
    assert np.abs(moved - canon).max() > 1e-3  # the jaw opened further than the canonical 0.2


@pytest.mark.e2e
@pytest.mark.parametrize("method", VOLUMETRIC)
def test_ns_export_tsdf_runs_on_cpu(trained, method, tmp_path):
    """nerfstudio's own exporter on a headstudio checkpoint (open3d needs the system libusb-1.0-0)."""
    try:  # a missing system library is an ImportError, not a missing module: importorskip would not skip it
        import open3d  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"open3d does not import ({exc}): install the system library libusb-1.0-0")
    res = run_in_process("ns-export", "tsdf", "--load-config", trained(method), "--output-dir", tmp_path,
                  "--resolution", "32", "--batch-size", "2", "--texture-method", "tsdf", "--target-num-faces", "None",
                  env={"HEADSTUDIO_FRAME": "1"})  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "every camera renders the head in frame 1" in res.stdout
    (mesh,) = tmp_path.glob("*.ply")
    verts, faces = read_ply(mesh)
    assert len(verts) > 0 and len(faces) > 0


@pytest.mark.e2e
@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfstudio 1.1.5's marching-cubes exporter calls .cuda()")
def test_ns_export_marching_cubes_on_cuda(trained, tmp_path):
    res = run_cli("ns-export", "marching-cubes", "--load-config", trained("imavatar-surface"),
                  "--output-dir", tmp_path, "--resolution", "64", "--simplify-mesh", "False")  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert list(tmp_path.glob("*.ply"))


def _scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


RESUME = {
    # tensorf-local-deform: the kill comes after its grid upsampling (steps 2-7 at this schedule scale) and
    # alpha-mask updates, inside its pre-training (frozen deformation until step 15); the resumed run unfreezes.
    "tensorf-local-deform": ("--pipeline.model.schedule-scale", "0.001", "--pipeline.model.pretrain-iters", "15000"),
}


def _resume(method: str, data: Path, ckpt: Path, extra: list, out: Path, steps: int = 6) -> Path:
    """``ns-train ... --load-dir`` from ``ckpt``'s folder for ``steps`` more iterations; the resumed run's folder."""
    res = ns_train_in_process("ns-train", method, *ns_train_args(method, data, out, extra)[2:-4], "--max-num-iterations",
                              str(steps), "--load-dir", ckpt.parent, "--output-dir", out / "resumed", "--data", data)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (resumed_dir,) = {p.parent for p in (out / "resumed").rglob("config.yml")}
    return resumed_dir


def _check_resumed(ckpt: Path, first: dict[int, float], resumed_dir: Path, steps: int = 6) -> None:
    """The step continues after ``ckpt``, the loss does not return to its start, and the resumed model holds
    the checkpoint's state (shapes, scheduler position)."""
    last = int(ckpt.stem.split("-")[1])
    second = _scalars(resumed_dir, "Train Loss")
    assert min(second) == last + 1, sorted(second)  # the step continues after the checkpoint
    start = np.mean([first[s] for s in sorted(first)[:3]])
    before = np.mean([first[s] for s in sorted(first)[-3:]])
    after = np.mean([second[s] for s in sorted(second)[:3]])
    assert before < start and abs(after - before) < abs(after - start), (start, before, after)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    (final,) = (resumed_dir / "nerfstudio_models").glob("step-*.ckpt")
    final_state = torch.load(final, map_location="cpu", weights_only=True)
    assert final_state["step"] == last + steps
    fields = "fields"  # a group whose optimizer is never rebuilt: its schedule continues from the checkpoint
    assert final_state["schedulers"][fields]["last_epoch"] == state["schedulers"][fields]["last_epoch"] + steps
    for key, value in state["pipeline"].items():
        assert final_state["pipeline"][key].shape == value.shape, key  # e.g. the upsampled grid


@pytest.mark.e2e
def test_resume_after_a_kill_continues_the_run(subjects, tmp_path):
    """ns-train killed after a checkpoint, then ``--load-dir``: the step continues, the state is the
    checkpoint's (grid resolution, codes, optimizer), and the loss does not return to its start. Killed once,
    on the method with the most step-dependent state; the others resume from their shared runs (below)."""
    method = "tensorf-local-deform"
    save_at = 12
    extra = ["--max-num-iterations", "100000", "--steps-per-save", str(save_at), "--logging.steps-per-log", "1",
             "--save-only-latest-checkpoint", "False", *RESUME[method]]  # fmt: skip
    args = [str(BIN / a) if i == 0 else a for i, a in enumerate(ns_train_args(method, subjects["imavatar"], tmp_path, extra))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = sorted(tmp_path.rglob(f"step-{save_at:09d}.ckpt"))
        if found:
            time.sleep(1.0)  # let the write finish
            ckpt = found[0]
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt is not None, proc.stderr.read().decode()[-3000:] if proc.stderr else "no checkpoint"
    ckpt = max(ckpt.parent.glob("step-*.ckpt"))  # the run may have saved again before the kill
    first = _scalars(ckpt.parent.parent, "Train Loss")
    assert min(first) == 0 and max(first) >= save_at // 2  # the last events may die with the process
    _check_resumed(ckpt, first, _resume(method, subjects["imavatar"], ckpt, extra, tmp_path))


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["rignerf-star", "imavatar-surface"])
def test_resume_from_the_shared_run_continues_it(trained, subjects, method, tmp_path):
    """``--load-dir`` on the shared run's final checkpoint: the same continuity and state as after a kill."""
    config = trained(method)
    (ckpt,) = (config.parent / "nerfstudio_models").glob("step-*.ckpt")
    first = _scalars(config.parent, "Train Loss")
    assert len(first) >= 3, sorted(first)
    _check_resumed(ckpt, first, _resume(method, subjects["imavatar"], ckpt, ["--logging.steps-per-log", "1"], tmp_path))
