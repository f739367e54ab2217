"""Shared fixtures and helpers: the procedural FLAME-format model, tiny synthetic subjects,
command-line runs, and each method trained once per session (shared by the eval, export,
resume and viewer tests).

``python -m pytest tests -m "not e2e"`` is the fast inner loop: it skips every test that
runs a command (in a subprocess, or through its entry function with ``run_in_process``) on a trained run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

from headstudio.data.synth.subject import SubjectConfig, make_subject
from headstudio.flame.model import FlameModel
from headstudio.flame.procedural import make_procedural_flame, write_procedural_flame

BIN = Path(sys.executable).parent
"""The virtual environment's scripts (ns-train, ns-eval, hs-export, ...)."""

TINY = dict(size=64, num_train=4, num_test=4)

REALDATA = Path(os.environ.get("HEADSTUDIO_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
"""Real files from the original projects (``../shared/realdata`` beside the checkout, or $HEADSTUDIO_REALDATA):
read in place, never copied into the project; the tests that need them skip when they are absent."""

COMMON = [
    "--machine.device-type", "cpu", "--vis", "tensorboard", "--steps-per-save", "1000",
    "--steps-per-eval-batch", "1000", "--steps-per-eval-image", "1000", "--logging.steps-per-log", "1",
]  # fmt: skip

FAST: dict[str, list[str]] = {
    # Tiny networks, few rays and samples: each trains in seconds to a minute on 2 CPU cores.
    "tensorf-local-deform": [
        "--max-num-iterations", "30",
        "--pipeline.datamanager.train-num-rays-per-batch", "256", "--pipeline.model.eval-num-rays-per-chunk", "2048",
        "--pipeline.model.schedule-scale", "0.001", "--pipeline.model.init-resolution", "32",
        "--pipeline.model.final-resolution", "48", "--pipeline.model.num-uniform-samples", "48",
        "--pipeline.model.num-samples", "16", "--pipeline.test-time-steps", "3", "--pipeline.test-time-rays", "256",
    ],
    "rignerf-star": [
        "--max-num-iterations", "30",
        "--pipeline.datamanager.train-num-rays-per-batch", "256", "--pipeline.model.eval-num-rays-per-chunk", "2048",
        "--pipeline.model.layer-width", "64", "--pipeline.model.num-coarse-samples", "32",
        "--pipeline.model.num-importance-samples", "16", "--pipeline.test-time-steps", "3",
        "--pipeline.test-time-rays", "256",
    ],
    "imavatar-surface": [
        "--max-num-iterations", "8",
        "--pipeline.datamanager.train-num-rays-per-batch", "128", "--pipeline.model.eval-num-rays-per-chunk", "4096",
        "--pipeline.model.geometry-dims", "96", "96", "96", "96", "--pipeline.model.geometry-skip", "2",
        "--pipeline.model.feature-dim", "16", "--pipeline.model.deformation-dims", "32", "32", "32",
        "--pipeline.model.texture-dims", "32", "32", "--pipeline.model.num-steps", "16",
        "--pipeline.model.num-secant-steps", "3", "--pipeline.model.chunk-steps", "8",
        "--pipeline.datamanager.camera-res-scale-factor", "0.5",
        # imavatar-surface fits no codes at test time by default (as the paper); switched on to test fitting.
        "--pipeline.test-time-steps", "2", "--pipeline.test-time-rays", "128",
    ],
    "mononphm-track": [  # on the tiny Kinect sequence with the tiny prior (the ``trained`` fixture adds both)
        "--max-num-iterations", "12", "--pipeline.datamanager.schedule.step-scale", "0.01",
        "--pipeline.datamanager.train-num-rays-per-batch", "64", "--pipeline.model.num-coarse-samples", "8",
        "--pipeline.model.num-importance-samples", "8", "--pipeline.test-time-steps", "2",
        "--pipeline.test-time-rays", "64", "--pipeline.geometry-resolution", "32",
    ],
}  # fmt: skip
"""Per-method ``ns-train`` arguments of the tiny runs the end-to-end tests share."""


def run_cli(*args: str | os.PathLike, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command-line tool (``ns-train``, ``hs-export``, ...) of this environment; text output."""
    cmd = [str(a) for a in args]
    if not os.path.isabs(cmd[0]) and (BIN / cmd[0]).exists():
        cmd[0] = str(BIN / cmd[0])
    full_env = {**os.environ, "COLUMNS": "300", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def _cli_functions() -> dict[str, Callable[[list[str]], None]]:
    import tyro
    from nerfstudio.scripts import eval as ns_eval
    from nerfstudio.scripts import exporter as ns_exporter

    from headstudio.scripts import check_data as hs_check_data
    from headstudio.scripts import export as hs_export
    from headstudio.scripts import prior as hs_prior
    from headstudio.scripts import render as hs_render
    from headstudio.scripts import synth as hs_synth
    from headstudio.scripts import track as hs_track

    return {
        "ns-eval": lambda argv: tyro.cli(ns_eval.ComputePSNR, args=argv).main(),
        "ns-export": lambda argv: tyro.cli(ns_exporter.Commands, args=argv).main(),
        "hs-export": hs_export.entrypoint,
        "hs-render": hs_render.entrypoint,
        "hs-prior": hs_prior.entrypoint,
        "hs-synth": hs_synth.entrypoint,
        "hs-check-data": hs_check_data.entrypoint,
        "hs-track": hs_track.entrypoint,
    }


def run_in_process(*args: str | os.PathLike, env: dict | None = None) -> subprocess.CompletedProcess:
    """``run_cli`` for ``ns-eval``, ``ns-export`` and the ``hs-*`` commands, through the
    same entry functions in this process: no interpreter start (torch's import: seconds), and no second pass
    of nerfstudio's method discovery (its ``ExternalMethod`` calls ``inspect.stack()``: about 9 s of every
    ``ns-*`` process here). Output is captured; an exit becomes the return code. The console scripts
    themselves stay tested in subprocesses (ns-train, ns-viewer, ``tests/test_render.py``'s wiring test)."""
    import contextlib
    import io

    name, *argv = [str(a) for a in args]
    function = _cli_functions()[name]
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    code = 0
    try:
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                function(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess([name, *argv], code, out.getvalue(), err.getvalue())


def ns_train_in_process(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    """``ns-train ...`` through nerfstudio's own ``main`` in this process (the steps of its console script:
    tyro on the same config union, then ``nerfstudio.scripts.train.main``), without the 9 s of method
    discovery a new process spends. nerfstudio keeps its event writers in a module-level list: the run's own
    are closed (flushing its tensorboard file) and removed afterwards, so one run never logs into another's.
    The console script itself is run in subprocesses by the resume and bad-data tests."""
    import contextlib
    import io
    import traceback

    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.train import main
    from nerfstudio.utils import writer

    name, *argv = [str(a) for a in args]
    assert name == "ns-train"
    out, err = io.StringIO(), io.StringIO()
    saved = list(writer.EVENT_WRITERS)
    writer.EVENT_WRITERS.clear()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(tyro.cli(AnnotatedBaseConfigUnion, args=argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # as the process would: a traceback and status 1
                traceback.print_exc()
                code = 1
    finally:
        for w in writer.EVENT_WRITERS:
            if isinstance(w, writer.TensorboardWriter):
                w.tb_writer.close()
        writer.EVENT_WRITERS.clear()
        writer.EVENT_WRITERS.extend(saved)
        writer.EVENT_STORAGE.clear()
    return subprocess.CompletedProcess(["ns-train", *argv], code, out.getvalue(), err.getvalue())


def ns_train_args(method: str, data: Path, output_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """``ns-train`` arguments of the shared tiny run of ``method`` (``extra`` override FAST)."""
    return ["ns-train", method, *COMMON, *FAST[method], *extra, "--output-dir", str(output_dir), "--data", str(data)]


METHOD_SPECS = {
    "tensorf-local-deform": "headstudio.method_configs.tensorf_local_deform:tensorf_local_deform",
    "rignerf-star": "headstudio.method_configs.rignerf_star:rignerf_star",
    "imavatar-surface": "headstudio.method_configs.imavatar_surface:imavatar_surface",
}


def method_pipeline(method: str, subject: Path, rays: int = 256, **model_overrides):
    """The method's default pipeline on ``subject``, built in this process on the CPU, with the given model
    config overrides (small networks and sample counts for tests)."""
    import copy
    import importlib

    module, name = METHOD_SPECS[method].split(":")
    cfg = copy.deepcopy(getattr(importlib.import_module(module), name).config)
    cfg.pipeline.datamanager.train_num_rays_per_batch = rays
    cfg.pipeline.datamanager.data = subject
    cfg.pipeline.datamanager.dataparser.data = subject
    for key, value in model_overrides.items():
        setattr(cfg.pipeline.model, key, value)
    return cfg.pipeline.setup(device="cpu", test_mode="val")


def viewer_slider_images(pipeline, frames: Sequence[int] = (0, 3), scale: float = 1.0) -> list:
    """Renders of a training camera stripped of its frame (what the viewer sends) with the viewer's
    Frame slider at each of ``frames``; the slider is reset afterwards."""
    import copy

    import torch

    model = pipeline.model
    camera = copy.deepcopy(pipeline.datamanager.train_dataset.cameras[0:1])
    camera.metadata = None
    if scale != 1.0:
        camera.rescale_output_resolution(scale)
    model.eval()
    images = []
    try:
        for frame in frames:
            model.subject.drive.c01_frame.value = frame
            torch.manual_seed(0)
            rgb = model.get_outputs_for_camera(camera)["rgb"]
            assert rgb.shape == (int(camera.height), int(camera.width), 3) and torch.isfinite(rgb).all()
            images.append(rgb)
    finally:
        model.subject.drive.c01_frame.value = model.subject.default_frame
    return images


@pytest.fixture(scope="session")
def procedural():
    return make_procedural_flame(seed=0)


@pytest.fixture(scope="session")
def flame_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("flame") / "generic_model.pkl"
    write_procedural_flame(path, seed=0)
    return path


@pytest.fixture(scope="session")
def flame(flame_path) -> FlameModel:
    return FlameModel.from_file(flame_path, num_shape=100, num_expression=50).double()


@pytest.fixture(scope="session")
def subjects(tmp_path_factory) -> dict[str, Path]:
    """One tiny subject per layout (and a Kinect one), same seed: the same frames."""
    root = tmp_path_factory.mktemp("subjects")
    out = {}
    for name in ("imavatar", "nerface", "insta"):
        out[name] = root / name
        make_subject(out[name], SubjectConfig(format=name, **TINY))
    out["kinect"] = root / "kinect"
    make_subject(out["kinect"], SubjectConfig(kinect=True, **TINY))
    return out


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory) -> Path:
    """A MonoNPHM prior checkpoint (``hs-prior train``'s format) with tiny networks, fitted in seconds to one
    synthetic identity with two expressions: what ``mononphm-track`` runs need in the tests."""
    from headstudio.data.scans import ScanSetConfig, make_scans, open_scan_set
    from headstudio.prior.training import PriorTrainConfig, train_prior
    from tests.test_prior_training import QUICK, TINY as TINY_PRIOR

    root = tmp_path_factory.mktemp("prior")
    make_scans(root / "scans", ScanSetConfig(identities=1, expressions=2, surface_points=1500, near_points=800,
                                             corr_points=300, observed_only=False))  # fmt: skip
    out = root / "prior.ckpt"
    train_prior(open_scan_set(root / "scans"), PriorTrainConfig(epochs=25, **QUICK), out, save_every=25, sizes=TINY_PRIOR)
    return out


@pytest.fixture(scope="session")
def trained(subjects, tmp_path_factory, request) -> Callable[..., Path]:
    """``trained(method, *extra_args)``: config.yml of ``method`` trained once per session with the FAST
    arguments (plus ``extra_args``) on the tiny IMavatar subject (mononphm-track: on the tiny Kinect
    sequence, with the tiny prior); later calls reuse the run. ``trained.stdout[config]``: ns-train's output."""
    runs: dict[tuple, Path] = {}

    def train(method: str, *extra: str) -> Path:
        key = (method, *extra)
        if key not in runs:
            out = tmp_path_factory.mktemp(f"run-{method}")
            data = subjects["imavatar"]
            if method == "mononphm-track":
                data = subjects["kinect"]
                extra = ("--pipeline.model.prior", str(request.getfixturevalue("tiny_prior")), *extra)
            res = ns_train_in_process(*ns_train_args(method, data, out, extra))
            assert res.returncode == 0, res.stderr[-3000:]
            (config,) = out.rglob("config.yml")
            runs[key] = config
            train.stdout[config] = res.stdout
        return runs[key]

    train.stdout = {}
    return train
