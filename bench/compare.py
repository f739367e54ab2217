"""One comparison of all four methods on the same subjects, at stated CPU budgets, with the papers' findings.

    python bench/compare.py [--budgets 1,3] [--methods ...] [--datasets video,kinect] [--prior PRIOR.ckpt]
        [--work-dir DIR] [--subject DIR] [--kinect-subject DIR]

1. **Data** (made once in ``--work-dir`` unless given): a synthetic video subject (``--size`` px, 300
   train frames of mild talking, 100 test frames of stronger, asymmetric, unseen expressions; every
   ``--test-every``-th test frame is evaluated) and a synthetic Kinect sequence (``--kinect-size`` px;
   a 40-frame train sequence, a ``--kinect-frames``-frame test sequence of key expressions at 1.25
   frames/s, simulated tracker errors in the FLAME tracking it ships, ground-truth meshes).
2. **Budget**: every method gets the same wall-clock minutes of training (``--budgets``, one table per
   budget). Each run first times a few iterations in the state the whole run ends in (deformation
   training, grids at their final size), then plans ``budget / (s per iteration)`` iterations with
   each paper's schedule scaled to that length (``schedule_scale``; mononphm-track's
   ``step_scale``), and stops early if the minutes run out first (imavatar-surface's iterations grow
   dearer as its surface forms). The iterations run and the measured training time are in the table.
3. **Video subject**: PSNR, SSIM, L1 and LPIPS (where its weights are local) on the test frames
   without (†) and with test-time fitting of the frame codes; normal angle error in the face region
   (imavatar-surface: its own normals; the volumetric methods: the normals of their rendered depth;
   ``headstudio.metrics.geometry``); keypoint error (imavatar-surface's forward map); training time
   and seconds per rendered frame. Variants: nerfstudio's tensorf (no deformation), tensorf-local-deform
   with 34 / 5 / 1 (global) deformation fields, rignerf-star, imavatar-surface and its D-Net and
   B-Morph ablations, all three starting their geometry from the subject's canonical FLAME mesh
   (``--surface-init flame``, ours: on these budgets the paper's sphere is still a blob; the start's
   seconds count against the budget), and imavatar-surface from the paper's sphere as its own row.
   mononphm-track is not run on it: it tracks every frame of the 300-frame train
   sequence (250 + 299 x 60 steps at its schedule), hours on this CPU at any budget here.
4. **Kinect sequence**: each method's per-frame meshes (``hs-export mesh``'s ``FrameMesher``) of the
   test frames against the back-projected depth (MonoNPHM §5.1, after similarity ICP) and against the
   ground-truth meshes, and the expression-following margin (``bench/_kinect.py``); the input FLAME
   tracking is the baseline row. The avatars train on the train sequence and are driven to the test
   frames by their tracking; mononphm-track tracks the test sequence itself (as in MonoNPHM's Table 1).
5. **Findings** of Chen et al. 2023, Zheng et al. 2022 and Giebenhain et al. 2024, each printed as
   holds / does not hold with its numbers.

Every run is one child process; its row is kept in ``<work-dir>/rows/`` and reused on the next call
(resumable; delete a row to redo it). The tables go to ``<work-dir>/compare.json`` and ``compare.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, setup_trainer, short_run  # noqa: E402

VIDEO_VARIANTS = ("tensorf", "local-34", "local-5", "global-1", "rignerf-star", "imavatar", "imavatar-d-net",
                  "imavatar-b-morph", "imavatar-sphere", "imavatar-start")  # fmt: skip
KINECT_VARIANTS = ("flame", "local-34", "rignerf-star", "imavatar", "imavatar-sphere", "imavatar-start", "mononphm-track")
UNTRAINED = ("flame", "imavatar-start")
"""Rows that train nothing (the same at every budget: measured once)."""
METHOD_OF = {
    "tensorf": "tensorf (nerfstudio)", "local-34": "tensorf-local-deform", "local-5": "tensorf-local-deform",
    "global-1": "tensorf-local-deform", "rignerf-star": "rignerf-star", "imavatar": "imavatar-surface",
    "imavatar-d-net": "imavatar-surface", "imavatar-b-morph": "imavatar-surface", "imavatar-sphere": "imavatar-surface",
    "imavatar-start": "imavatar-surface", "mononphm-track": "mononphm-track",
    "flame": "FLAME tracking (input)",
}  # fmt: skip
LABEL = {
    "tensorf": "tensorf (no deformation)", "local-34": "tensorf-local-deform, 34 local fields",
    "local-5": "tensorf-local-deform, 5 local fields", "global-1": "tensorf-local-deform, 1 global field",
    "rignerf-star": "rignerf-star", "imavatar": "imavatar-surface", "imavatar-d-net": "imavatar-surface, D-Net",
    "imavatar-b-morph": "imavatar-surface, B-Morph", "imavatar-sphere": "imavatar-surface, sphere start (paper)",
    "imavatar-start": "imavatar-surface, FLAME start before training", "mononphm-track": "mononphm-track",
    "flame": "FLAME tracking (input, baseline)",
}  # fmt: skip
TENSORF_MAX_ITERS = 30_000
"""Length of TensoRF's schedule, which tensorf-local-deform's iteration counts are given in (its config)."""
CALIBRATION_ITERS = 6
CALIBRATION_SKIP = 2


# ---------------------------------------------------------------------------------------------- data
def make_data(args, datasets: list[str]) -> tuple[Optional[Path], Optional[Path]]:
    """The video subject and the Kinect sequence (None where not asked for), made in the work dir if not given."""
    from headstudio.data.synth.subject import SubjectConfig, make_subject

    video = (args.subject or args.work_dir / f"video-{args.size}") if "video" in datasets else None
    if video is not None and args.subject is None and not (video / "subject.json").exists():
        print(f"[compare] making the video subject {video} ...", flush=True)
        make_subject(video, SubjectConfig(size=args.size, num_train=300, num_test=100))
    kinect = (args.kinect_subject or args.work_dir / f"kinect-{args.kinect_size}") if "kinect" in datasets else None
    if kinect is not None and args.kinect_subject is None and not (kinect / "subject.json").exists():
        print(f"[compare] making the Kinect sequence {kinect} ...", flush=True)
        make_subject(kinect, SubjectConfig(size=args.kinect_size, num_train=40, num_test=args.kinect_frames, kinect=True,
                                           tracker_error=args.tracker_error, fps=args.kinect_fps))  # fmt: skip
    return video, kinect


# ---------------------------------------------------------------------------------------------- configs
def build_config(variant: str, dataset: str, args, iters: int, out_dir: Path, calibrating: bool):
    """The TrainerConfig of one run: the variant's method with the bench settings, ``iters`` long."""
    subject = args.video if dataset == "video" else args.kinect
    if variant == "mononphm-track":
        return mononphm_config(args, subject, iters, out_dir, calibrating)
    if variant.startswith("imavatar"):
        import imavatar_surface as ima  # bench/imavatar_surface.py: its network and config
        lr = args.sphere_lr if variant == "imavatar-sphere" else args.surface_lr
        ns = SimpleNamespace(subject=subject, iters=iters, rays=args.surface_rays, steps=args.march_steps, lr=lr,
                             test_every=args.test_every)  # fmt: skip
        cfg = ima.build_config("full", ns, out_dir)
        model = cfg.pipeline.model
        model.deformer = {"imavatar-d-net": "d-net", "imavatar-b-morph": "b-morph"}.get(variant, "forward")
        model.geometry_init = "sphere" if variant == "imavatar-sphere" else args.surface_init
        model.flame_init_steps = args.flame_init_steps
    else:
        import tensorf_local_deform as tld  # bench/tensorf_local_deform.py: the variants' configs
        # Calibration runs the state the run ends in: deformation training from the third step, grids at their size.
        scale = (CALIBRATION_SKIP / 14_000) if calibrating else iters / TENSORF_MAX_ITERS
        ns = SimpleNamespace(subject=subject, iters=iters, rays=args.rays, uniform_samples=args.uniform_samples,
                             samples=args.samples, final_resolution=args.final_resolution, schedule_scale=scale,
                             tto_steps=args.tto_steps, rignerf_width=args.rignerf_width)  # fmt: skip
        key = {"local-34": "local-34", "local-5": "local-5", "global-1": "global-1", "tensorf": "tensorf",
               "rignerf-star": "rignerf-star", "flame": "local-34"}[variant]  # fmt: skip
        cfg = tld.build_config(key, ns, out_dir)
        if variant == "rignerf-star":
            cfg.pipeline.test_time_rays = args.tto_rays_rignerf
    parser = cfg.pipeline.datamanager.dataparser
    parser.test_every = args.test_every if dataset == "video" else 1
    return cfg


def mononphm_config(args, subject: Path, iters: int, out_dir: Path, calibrating: bool):
    import mononphm_track as mt  # bench/mononphm_track.py: the smoothness weights for a sparse sequence

    from headstudio.method_configs.mononphm_track import mononphm_track

    cfg = copy.deepcopy(mononphm_track.config)
    model = cfg.pipeline.model
    model.prior = args.prior
    cfg.pipeline.datamanager.schedule.step_scale = args.step_scale_for_run
    for flag in zip(*[iter(mt.tv_arguments(SimpleNamespace(fps=args.kinect_fps, no_tv_scaling=False)))] * 2):
        setattr(model, flag[0].split(".")[-1].replace("-", "_"), float(flag[1]))
    cfg = short_run(cfg, subject, iters, args.kinect_rays, out_dir)
    cfg.pipeline.datamanager.dataparser.test_sequences = ("train",)  # it tracks the test sequence itself
    return cfg


def schedule_steps(args, step_scale: float) -> int:
    from headstudio.engine.tracking_schedule import TrackingSchedule, TrackingScheduleConfig

    images = len(list((args.kinect / "test" / "source").glob("*.png")))
    return TrackingSchedule(TrackingScheduleConfig(step_scale=step_scale), images).total_steps


# ---------------------------------------------------------------------------------------------- one run
class BudgetSpent(Exception):
    """Raised inside the training loop once the run's minutes are spent."""


def timed_train(trainer, deadline_s: Optional[float] = None) -> list[float]:
    """Train, stopping before the first iteration that would start after ``deadline_s`` seconds (the
    calibration can underestimate a run whose iterations grow dearer as it learns); the seconds of each
    iteration."""
    times: list[float] = []
    step_fn = trainer.train_iteration
    start = time.perf_counter()

    def timed(step: int):
        if deadline_s is not None and time.perf_counter() - start > deadline_s:
            raise BudgetSpent
        t = time.perf_counter()
        result = step_fn(step)
        times.append(time.perf_counter() - t)
        return result

    trainer.train_iteration = timed
    try:
        trainer.train()
    except BudgetSpent:  # the minutes are spent: the model stays as the last finished iteration left it
        pass
    return times


def calibrate(variant: str, dataset: str, args) -> tuple[float, float]:
    """Seconds per training iteration in the state the run ends in (median after warm-up), and seconds of
    setup the run spends before training (imavatar-surface's FLAME start); kept in the work dir for the
    other budgets."""
    path = args.work_dir / "rows" / f"calibration-{dataset}-{variant}.json"
    if path.exists():
        cal = json.loads(path.read_text())
        return cal["s_per_iter"], cal["init_s"]
    if variant == "mononphm-track":
        args.step_scale_for_run = 0.05
    build = lambda v, a, out: build_config(v, dataset, args, CALIBRATION_ITERS, out, calibrating=True)  # noqa: E731
    trainer = setup_trainer(build, variant, args, "compare-cal")
    times = timed_train(trainer)
    cal = {"s_per_iter": float(np.median(times[CALIBRATION_SKIP:])),
           "init_s": float(getattr(trainer.pipeline.model, "geometry_init_seconds", 0.0))}  # fmt: skip
    path.write_text(json.dumps(cal))
    return cal["s_per_iter"], cal["init_s"]


def run_one(variant: str, dataset: str, budget_min: float, args) -> dict:
    row: dict = {"variant": variant, "dataset": dataset, "budget_min": budget_min, "method": METHOD_OF[variant]}
    if variant == "flame":
        trainer = setup_trainer(lambda v, a, out: build_config("local-34", dataset, args, 1, out, False), variant, args, "compare")
        row.update(kinect_geometry(trainer.pipeline, args, flame=True))
        return row
    if variant == "imavatar-start":  # what the FLAME start alone gives (no training step)
        trainer = setup_trainer(lambda v, a, out: build_config("imavatar", dataset, args, 1, out, False), variant, args, "compare")
        row["init_s"] = float(trainer.pipeline.model.geometry_init_seconds)
        row.update(video_metrics("imavatar", trainer.pipeline, args) if dataset == "video" else kinect_geometry(trainer.pipeline, args))
        return row
    s_iter, init_s = calibrate(variant, dataset, args)
    budget_s = 60.0 * budget_min - init_s  # the FLAME start counts against the budget
    if variant == "mononphm-track":
        per_unit = schedule_steps(args, 1.0)
        scale = budget_s / s_iter / per_unit
        args.step_scale_for_run = scale
        iters = schedule_steps(args, scale)
        row["step_scale"] = scale
    else:
        iters = max(20, int(budget_s / s_iter))
    row.update(calibrated_s_per_iter=s_iter, iters=iters)
    build = lambda v, a, out: build_config(v, dataset, args, iters, out, calibrating=False)  # noqa: E731
    trainer = setup_trainer(build, variant, args, "compare")
    start = time.perf_counter()
    times = timed_train(trainer, deadline_s=budget_s)
    row["train_s"] = time.perf_counter() - start
    row["planned_iters"], row["iters"] = iters, len(times)
    row["init_s"] = float(getattr(trainer.pipeline.model, "geometry_init_seconds", 0.0))
    row["s_per_iter"] = float(np.mean(times)) if times else float("nan")
    pipeline = trainer.pipeline
    if dataset == "video":
        row.update(video_metrics(variant, pipeline, args))
    else:
        row.update(kinect_geometry(pipeline, args))
    return row


def video_metrics(variant: str, pipeline, args) -> dict:
    """Image and geometry metrics of the test frames, means and per image (with the frame's expression norm)."""
    per_image: list[dict] = []
    start = time.perf_counter()
    if variant == "tensorf":  # nerfstudio's model: no frame codes, no head pipeline
        from headstudio.metrics.geometry import rendered_depth_normal_error
        from headstudio.metrics.images import image_metrics
        from headstudio.pipelines.head_pipeline import eval_inputs

        pipeline.eval()
        with torch.no_grad():
            for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
                t = time.perf_counter()
                outputs = pipeline.model.get_outputs_for_camera(camera=camera)
                seconds = time.perf_counter() - t
                batch = eval_inputs(pipeline.datamanager.eval_dataset, camera, batch)
                m = image_metrics(outputs["rgb"], batch["image"][..., :3].to(outputs["rgb"].device))
                m["normal_error"] = rendered_depth_normal_error(outputs, batch)
                m["num_rays_per_sec"] = float(camera.height * camera.width) / seconds
                m = {k: float("nan") if v is None else float(v) for k, v in m.items()}
                row = {f"{k}_dagger": v for k, v in m.items()}
                row["frame"] = float(camera.metadata["frame_index"].reshape(-1)[0])
                per_image.append(row)
        means = {k: float(np.nanmean([r[k] for r in per_image])) for k in per_image[0] if k != "frame"}
    else:
        means = {k: v for k, v in pipeline.get_average_eval_image_metrics(per_image=per_image).items()
                 if isinstance(v, float)}  # fmt: skip
    out = {"eval_s": time.perf_counter() - start, **means}
    camera = pipeline.datamanager.eval_dataset.cameras[0]
    pixels = float(camera.width) * float(camera.height)
    rates = [r.get("num_rays_per_sec_dagger", r.get("num_rays_per_sec")) for r in per_image]
    out["s_per_frame"] = float(np.mean([pixels / r for r in rates if r]))
    subject = getattr(pipeline.model, "subject", None)
    for r in per_image:
        f = int(r["frame"])
        if subject is not None:
            r["expression_norm"] = float(subject.track.expression[f].norm())
    out["per_image"] = [{k: v for k, v in r.items() if k in ("frame", "expression_norm", "psnr", "psnr_dagger",
                                                               "normal_error", "normal_error_dagger")}
                        for r in per_image]  # fmt: skip
    return out


def kinect_geometry(pipeline, args, flame: bool = False) -> dict:
    """Geometry of the test sequence's frames (``_kinect.sequence_geometry``)."""
    from _kinect import flame_meshes, sequence_geometry

    from headstudio.export.frame_mesh import FrameMesher

    model = pipeline.model
    model.eval()
    # mononphm-track tracks the test sequence (its train dataset); the avatars are evaluated on it (eval dataset).
    tracked = getattr(model, "tracked_frames", None)
    dataset = pipeline.datamanager.train_dataset if tracked is not None else pipeline.datamanager.eval_dataset
    frames = [int(f) for f in dataset.cameras.metadata["frame_index"].reshape(-1)]
    mesh_of = flame_meshes(model) if flame else FrameMesher(model, resolution=args.mesh_resolution)
    start = time.perf_counter()
    save = args.work_dir / "meshes" / f"{'flame' if flame else args.run_name}"
    try:
        out = sequence_geometry(model, dataset, frames, mesh_of, save=save)
    except ValueError as exc:  # nothing to mesh (the field never crosses its level)
        return {"geometry_unavailable": str(exc)}
    out["mesh_eval_s"] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------------------------- parent
def run_child(dataset: str, variant: str, budget: float, args) -> Optional[dict]:
    path = args.work_dir / "rows" / f"{dataset}-{budget:g}min-{variant}.json"
    if path.exists():
        return json.loads(path.read_text())
    done = sorted((args.work_dir / "rows").glob(f"{dataset}-*-{variant}.json"))
    if variant in UNTRAINED and done:  # trains nothing: the same row at every budget
        return json.loads(done[0].read_text())
    if variant == "mononphm-track" and args.prior is None:
        print("[compare] mononphm-track skipped: no --prior (train one: hs-prior train, see the README)", flush=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    cmd = [sys.executable, __file__, "--child", f"{dataset}:{variant}:{budget:g}", "--json", str(tmp), *args.forward]
    print(f"[compare] {dataset} {variant} at {budget:g} min ...", flush=True)
    start = time.perf_counter()
    log = args.work_dir / "logs" / f"{dataset}-{budget:g}min-{variant}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        print(f"[compare] {dataset} {variant} failed ({log}):\n" + log.read_text()[-3000:], flush=True)
        return None
    os.replace(tmp, path)
    row = json.loads(path.read_text())
    print(f"[compare] {dataset} {variant} at {budget:g} min: done in {time.perf_counter() - start:.0f} s", flush=True)
    return row


def video_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "iters", "train min", "PSNR†", "SSIM†", "L1†", "LPIPS†", "PSNR", "SSIM", "L1", "LPIPS",
            "normal error (°)", "keypoint error (px)", "s / frame"]  # fmt: skip
    body = []
    for r in rows:
        tto = r.get("test_time_steps", 0) > 0
        get = lambda k: r.get(k) if tto else None  # noqa: E731
        normal = r.get("normal_error", r.get("normal_error_dagger"))
        body.append([LABEL[r["variant"]], str(r.get("iters", "-")), fmt(r["train_s"] / 60 if "train_s" in r else None, ".1f"),
                     fmt(r.get("psnr_dagger"), ".2f"), fmt(r.get("ssim_dagger"), ".3f"), fmt(r.get("l1_dagger"), ".4f"),
                     fmt(r.get("lpips_dagger"), ".3f"), fmt(get("psnr"), ".2f"), fmt(get("ssim"), ".3f"),
                     fmt(get("l1"), ".4f"), fmt(get("lpips"), ".3f"), fmt(normal, ".1f"), fmt(r.get("keypoint_error"), ".2f"),
                     fmt(r.get("s_per_frame"), ".1f")])  # fmt: skip
    return head, body


def kinect_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["method", "iters", "train min", "depth L1-Chamfer (mm)", "depth NC", "depth Recall@2.5mm",
            "GT-mesh L1-Chamfer (mm)", "GT-mesh NC", "GT-mesh Recall@2.5mm", "following margin (mm)", "matched"]  # fmt: skip
    body = []
    for r in rows:
        if "geometry_unavailable" in r:
            body.append([LABEL[r["variant"]], str(r.get("iters", "-")), fmt(r["train_s"] / 60 if "train_s" in r else None, ".1f")]
                        + ["no mesh"] + ["-"] * 7)  # fmt: skip
            continue
        mm = lambda k: 1000 * r[k] if k in r else None  # noqa: E731
        body.append([LABEL[r["variant"]], str(r.get("iters", "-")), fmt(r["train_s"] / 60 if "train_s" in r else None, ".1f"),
                     fmt(mm("depth_chamfer_l1_m"), ".2f"), fmt(r.get("depth_normal_consistency"), ".3f"),
                     fmt(r.get("depth_recall"), ".3f"), fmt(mm("gt_chamfer_l1_m"), ".2f"),
                     fmt(r.get("gt_normal_consistency"), ".3f"), fmt(r.get("gt_recall"), ".3f"),
                     fmt(mm("following_margin_m"), ".2f"), fmt(r.get("following_matched"), ".2f")])  # fmt: skip
    return head, body


def expression_bins(row: dict, edges: list[float]) -> list[float]:
    """Mean normal error of the row's test images in each expression-norm bin."""
    out = []
    last = len(edges) - 2
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = lambda e: lo <= e < hi or (b == last and e == hi)  # noqa: E731
        vals = [p.get("normal_error", p.get("normal_error_dagger")) for p in row.get("per_image", [])
                if inside(p.get("expression_norm", -1.0))]  # fmt: skip
        vals = [v for v in vals if v is not None and v == v]
        out.append(float(np.mean(vals)) if vals else float("nan"))
    return out


def findings(video: dict[str, dict], kinect: dict[str, dict]) -> list[dict]:
    """The papers' findings at one budget: each with holds (True/False/None: not measured) and its numbers."""
    out: list[dict] = []

    def psnr(v: str, dagger: bool = False) -> Optional[float]:
        r = video.get(v)
        if r is None:
            return None
        if v == "tensorf" or dagger or r.get("test_time_steps", 0) == 0:
            return r.get("psnr_dagger")
        return r.get("psnr")

    order = ["local-34", "local-5", "global-1", "tensorf"]
    for dagger in (False, True):
        vals = [psnr(v, dagger) for v in order]
        holds = None if None in vals else all(a > b for a, b in zip(vals, vals[1:]))
        kind = "without test-time codes (†)" if dagger else "with test-time codes (tensorf: none to fit)"
        out.append({"paper": "Chen et al. 2023, supp. Fig. 9", "finding": f"test PSNR: 34 local fields > 5 > 1 global > no deformation, {kind}",
                    "holds": holds, "numbers": ", ".join(f"{v} {fmt(x, '.2f')}" for v, x in zip(order, vals))})  # fmt: skip
    a, b = psnr("local-34"), psnr("rignerf-star")
    out.append({"paper": "Chen et al. 2023, Table 4", "finding": "tensorf-local-deform > RigNeRF* on test PSNR",
                "holds": None if None in (a, b) else a > b, "numbers": f"local-34 {fmt(a, '.2f')}, rignerf-star {fmt(b, '.2f')}"})  # fmt: skip
    ne = {v: (video[v].get("normal_error", video[v].get("normal_error_dagger")) if v in video else None)
          for v in ("imavatar", "imavatar-d-net", "imavatar-b-morph")}  # fmt: skip
    vals = list(ne.values())
    holds = None if None in vals else vals[0] < vals[1] and vals[0] < vals[2]
    out.append({"paper": "Zheng et al. 2022, Table 1", "finding": "imavatar-surface's normal error below D-Net's and B-Morph's",
                "holds": holds, "numbers": ", ".join(f"{k} {fmt(v, '.1f')}°" for k, v in ne.items())})  # fmt: skip
    if all(v in video for v in ne):
        norms = sorted(p["expression_norm"] for p in video["imavatar"].get("per_image", []) if "expression_norm" in p)
        if len(norms) >= 3:
            edges = [norms[0], float(np.quantile(norms, 1 / 3)), float(np.quantile(norms, 2 / 3)), norms[-1]]
            bins = {v: expression_bins(video[v], edges) for v in ne}
            growth = {v: b[-1] - b[0] for v, b in bins.items()}
            g = list(growth.values())
            holds = None if any(x != x for x in g) else g[0] < g[1] and g[0] < g[2]
            text = "; ".join(f"{v} {' / '.join(fmt(x, '.1f') for x in b)}° (growth {fmt(growth[v], '+.1f')}°)" for v, b in bins.items())
            out.append({"paper": "Zheng et al. 2022, Fig. 4", "finding": "imavatar-surface's normal error grows less with expression strength (test frames in three bins of expression norm)",
                        "holds": holds, "numbers": f"bins {' / '.join(fmt(e, '.2f') for e in edges)}: {text}"})  # fmt: skip
    m, f = kinect.get("mononphm-track"), kinect.get("flame")
    if m is not None and f is not None and "depth_chamfer_l1_m" in m:
        holds = m["depth_chamfer_l1_m"] < f["depth_chamfer_l1_m"]
        out.append({"paper": "Giebenhain et al. 2024, Table 1", "finding": "mononphm-track's geometry better than the FLAME tracking it starts from (depth L1-Chamfer)",
                    "holds": holds, "numbers": f"mononphm-track {1000 * m['depth_chamfer_l1_m']:.2f} mm vs FLAME {1000 * f['depth_chamfer_l1_m']:.2f} mm"
                    f" (to the true mesh: {1000 * m['gt_chamfer_l1_m']:.2f} vs {1000 * f['gt_chamfer_l1_m']:.2f} mm)"})  # fmt: skip
    else:
        out.append({"paper": "Giebenhain et al. 2024, Table 1", "finding": "mononphm-track's geometry better than the FLAME tracking it starts from",
                    "holds": None, "numbers": "not measured (no mononphm-track row)"})  # fmt: skip
    return out


def ranking_lines(video: dict[str, dict], kinect: dict[str, dict]) -> list[str]:
    """The methods in order of test PSNR (with test-time codes where fitted) and of depth L1-Chamfer."""
    out = []
    if video:
        score = {v: (r.get("psnr") if r.get("test_time_steps", 0) > 0 else r.get("psnr_dagger")) for v, r in video.items()}
        order = sorted((v for v in score if score[v] is not None), key=lambda v: -score[v])
        out.append("Ranking by test PSNR: " + " > ".join(f"{v} ({score[v]:.2f})" for v in order) + ".")
    if kinect:
        score = {v: r.get("depth_chamfer_l1_m") for v, r in kinect.items()}
        order = sorted((v for v in score if score[v] is not None), key=lambda v: score[v])
        missing = [v for v in score if score[v] is None]
        out.append("Ranking by depth L1-Chamfer: " + " < ".join(f"{v} ({1000 * score[v]:.2f} mm)" for v in order)
                   + (f"; no mesh: {', '.join(missing)}" if missing else "") + ".")  # fmt: skip
    return out


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def verdict(h: Optional[bool]) -> str:
    return "not measured" if h is None else ("holds" if h else "does not hold")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", "--budget", default="1,3", help="minutes of training per method, comma-separated (one table each)")
    ap.add_argument("--datasets", default="video,kinect")
    ap.add_argument("--methods", default=None, help="variants to run (default: all of each data set's: "
                    f"video {','.join(VIDEO_VARIANTS)}; kinect {','.join(KINECT_VARIANTS)})")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "hs-compare")
    ap.add_argument("--subject", type=Path, default=None, help="video subject (default: made in the work dir)")
    ap.add_argument("--kinect-subject", type=Path, default=None, help="Kinect sequence (default: made in the work dir)")
    ap.add_argument("--prior", type=Path, default=None, help="mononphm-track's prior (hs-prior train); without it its row is skipped")
    ap.add_argument("--size", type=int, default=64, help="video subject image size")
    ap.add_argument("--test-every", type=int, default=15, help="evaluate every n-th test frame of the video subject")
    ap.add_argument("--kinect-size", type=int, default=96)
    ap.add_argument("--kinect-frames", type=int, default=4, help="rendered frames of the Kinect test sequence")
    ap.add_argument("--kinect-fps", type=float, default=1.25, help="Kinect sequence frame rate (1.25: each frame a new key expression)")
    ap.add_argument("--tracker-error", type=float, default=1.0)
    ap.add_argument("--rays", type=int, default=1024, help="rays per batch of the volumetric methods")
    ap.add_argument("--uniform-samples", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--final-resolution", type=int, default=128)
    ap.add_argument("--rignerf-width", type=int, default=128, help="rignerf-star's trunk width (NeRF: 256; 128 on CPU)")
    ap.add_argument("--tto-steps", type=int, default=20, help="test-time code fitting steps per test frame")
    ap.add_argument("--tto-rays-rignerf", type=int, default=256, help="rays per test-time step of rignerf-star (its trunk is costly)")
    ap.add_argument("--surface-rays", type=int, default=256, help="rays per batch of imavatar-surface")
    ap.add_argument("--march-steps", type=int, default=48, help="imavatar-surface march samples per ray (paper 100)")
    ap.add_argument("--surface-lr", type=float, default=1e-4,
                    help="Adam rate of imavatar-surface and its ablations from the FLAME start (Zheng et al. 2022: 1e-4; "
                         "with --surface-lr 5e-4 the start's normals were at 51.8 deg after 525 iterations at --budgets 3)")
    ap.add_argument("--sphere-lr", type=float, default=5e-4,
                    help="Adam rate of the sphere-start row (bench/imavatar_surface.py's short-run rate for the sphere; "
                         "the sphere start was not measured at 1e-4)")
    ap.add_argument("--surface-init", choices=("flame", "sphere"), default="flame",
                    help="geometry start of imavatar-surface and its ablations (ours: flame; the paper's sphere is the "
                         "'sphere start' row)")
    ap.add_argument("--flame-init-steps", type=int, default=300, help="steps of the FLAME start (its time counts against the budget)")
    ap.add_argument("--kinect-rays", type=int, default=500, help="mononphm-track rays per step (paper 500)")
    ap.add_argument("--mesh-resolution", type=int, default=96, help="marching-cubes resolution of the Kinect meshes")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--video", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kinect", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work_dir = args.work_dir.resolve()
    if args.child is not None:
        dataset, variant, budget = args.child.split(":")
        args.run_name = f"{dataset}-{budget}min-{variant}"
        row = run_one(variant, dataset, float(budget), args)
        tmp = args.json
        tmp.write_text(json.dumps(row))
        return
    for flag, path in (("--prior", args.prior), ("--subject", args.subject), ("--kinect-subject", args.kinect_subject)):
        if path is not None and not path.exists():
            raise SystemExit(f"{flag} {path}: no such file or folder")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.video, args.kinect = make_data(args, args.datasets.split(","))
    keys = ("work_dir", "video", "kinect", "prior", "size", "test_every", "kinect_size", "kinect_frames", "kinect_fps",
            "rays", "uniform_samples", "samples", "final_resolution", "rignerf_width", "tto_steps", "tto_rays_rignerf",
            "surface_rays", "march_steps", "surface_lr", "sphere_lr", "surface_init", "flame_init_steps", "kinect_rays",
            "mesh_resolution")  # fmt: skip
    args.forward = []
    for k in keys:
        if getattr(args, k) is not None:
            args.forward += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    budgets = [float(b) for b in args.budgets.split(",")]
    datasets = args.datasets.split(",")
    wanted = None if args.methods is None else set(args.methods.split(","))
    results: dict = {}
    for budget in budgets:  # budget-major: a whole table per budget first
        for dataset in datasets:
            variants = VIDEO_VARIANTS if dataset == "video" else KINECT_VARIANTS
            for variant in variants:
                if wanted is not None and variant not in wanted:
                    continue
                row = run_child(dataset, variant, budget, args)
                if row is not None:
                    results.setdefault(f"{budget:g}", {}).setdefault(dataset, {})[variant] = row
    report(results, args)


def report(results: dict, args) -> None:
    md = [f"Command: `python bench/compare.py --budgets {args.budgets} --datasets {args.datasets}"
          + (f" --prior {args.prior}" if args.prior else "") + "`; "
          f"video subject {args.video} ({args.size} px, every {args.test_every}th test frame); Kinect sequence "
          f"{args.kinect} ({args.kinect_size} px, {args.kinect_frames} test frames at {args.kinect_fps:g} frames/s); "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, {torch.get_num_threads()} threads.", ""]
    out = {"settings": {k: str(v) for k, v in vars(args).items() if k not in ("forward",)}, "budgets": {}}
    for budget, per in results.items():
        video, kinect = per.get("video", {}), per.get("kinect", {})
        out["budgets"][budget] = {"video": video, "kinect": kinect, "findings": findings(video, kinect)}
        if video:
            md += [f"### Video subject, {budget} min of training per method", "", markdown_table(*video_table(list(video.values()))), ""]
        if kinect:
            md += [f"### Kinect sequence, {budget} min of training per method", "", markdown_table(*kinect_table(list(kinect.values()))), ""]
        md += ranking_lines(video, kinect) + ["", f"### Findings at {budget} min", ""]
        md += [f"- **{verdict(f['holds'])}** — {f['paper']}: {f['finding']}. {f['numbers']}." for f in out["budgets"][budget]["findings"]]
        md.append("")
    text = "\n".join(md)
    print("\n" + text)
    tmp = args.work_dir / "compare.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, args.work_dir / "compare.md")
    tmp = args.work_dir / "compare.json.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, args.work_dir / "compare.json")
    print(f"\n[compare] tables: {args.work_dir / 'compare.md'}, {args.work_dir / 'compare.json'}")


if __name__ == "__main__":
    main()
