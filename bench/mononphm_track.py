"""mononphm-track on a synthetic Kinect sequence: tracking speed, where the time goes, and geometry.

    python bench/mononphm_track.py --prior PRIOR.ckpt [--frames 8] [--size 128] [--step-scale 0.2]
        [--rays 500] [--tracker-error 1.0] [--fps 1.25] [--variants full,no-landmarks,no-sh] [--resolution 128]
        [--ceiling-steps 300]

(``--frames`` rendered frames of the sequence with the stronger, asymmetric expressions; MonoNPHM's
reader repeats frame 1 as frame 0, so one more frame is tracked.)

1. A Kinect sequence is synthesised (``hs-synth subject --kinect``) with simulated FLAME-tracker
   errors in the tracking it ships (``--tracker-error``; camera poses and landmarks stay exact)
   and ground-truth meshes of every frame, sampled at ``--fps`` (1.25: every frame another of the
   test sequence's key expressions, so a few frames can show whether the meshes follow them).
2. Each variant (the full method and the paper's Table 2 ablations: without the landmark loss,
   without SH lighting) is tracked by ``ns-train mononphm-track`` in its own process over the
   whole schedule at ``--step-scale`` (first frame, each later frame, then the joint stage for
   its own length); the wall time gives frames per minute (paper: 1.2 on a GPU; MICA 2, IMavatar 0.4).
3. Where the time goes: 10 training steps of the full variant in this process under torch's
   profiler, by the model's labelled parts.
4. Geometry of every ``--eval-every``-th tracked frame (meshes and true meshes written as PLY under
   ``<work-dir>/meshes/``), mesh by marching cubes at
   ``--resolution``: against the back-projected depth (MonoNPHM §5.1: face region, similarity
   ICP, L1-Chamfer, normal consistency, Recall@2.5 mm) and against the ground-truth mesh (no
   ICP; area samples of the whole head's face region as ground truth), for each variant and for
   the input FLAME tracking (the baseline row, as the paper's FLAME-based rows), and for the prior's
   ceiling: its codes (one ``z_geo``, ``z_exp`` per frame) fitted in 3-D to the true meshes with the
   networks frozen (``--ceiling-steps``), what a perfect photometric tracker could reach with this prior.
5. Expression following: each frame's mesh against every evaluated frame's true mesh; the margin by
   which its own frame's is nearer (mm), and the share of frames whose nearest true mesh is their own.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _kinect import flame_meshes, sequence_geometry, true_vertices  # noqa: E402

VARIANTS = {
    "full": [],
    "no-landmarks": ["--pipeline.model.use-landmarks", "False"],
    "no-sh": ["--pipeline.model.use-sh", "False"],
}


def make_sequence(root: Path, args) -> Path:
    from headstudio.data.synth.subject import SubjectConfig, make_subject

    out = root / "kinect"
    # The tracked sequence is the subject's 'test' sequence (stronger, asymmetric expressions and jaw openings);
    # its 'train' sequence (2 frames) is the one ns-eval would hold out (--test-sequences train below).
    make_subject(out, SubjectConfig(size=args.size, num_train=2, num_test=args.frames, kinect=True,
                                    tracker_error=args.tracker_error, fps=args.fps))  # fmt: skip
    return out


VIDEO_FPS = 25.0
"""Frame rate the temporal smoothness weights of mononphm-track are meant for (consecutive video frames)."""


def tv_arguments(args) -> list[str]:
    """Total-variation weights for a sequence sampled at ``args.fps``: the defaults times (fps / 25)^2
    (none with ``--no-tv-scaling``).

    For motion smooth in time the change between frames dt apart grows with dt, its square with dt^2;
    scaling the weights by (dt_video / dt)^2 keeps their pull on such motion what it is at the video rate
    (at 1.25 frames/s, frames 0.8 s apart, the defaults would pin every frame to its neighbours')."""
    from headstudio.models.mononphm_track import MonoNPHMTrackModelConfig

    fps = args.fps
    if fps >= VIDEO_FPS or args.no_tv_scaling:
        return []
    base, k = MonoNPHMTrackModelConfig(), (fps / VIDEO_FPS) ** 2
    return [
        "--pipeline.model.tv-expression-mult", f"{base.tv_expression_mult * k:g}",
        "--pipeline.model.tv-rotation-mult", f"{base.tv_rotation_mult * k:g}",
        "--pipeline.model.tv-translation-mult", f"{base.tv_translation_mult * k:g}",
    ]  # fmt: skip


def track(subject: Path, variant: str, args, root: Path, num_images: int) -> tuple[Path, float, int]:
    from headstudio.engine.tracking_schedule import TrackingSchedule, TrackingScheduleConfig

    schedule = TrackingSchedule(TrackingScheduleConfig(step_scale=args.step_scale), num_images)
    steps = schedule.total_steps
    out = root / f"run-{variant}"
    cmd = [
        str(Path(sys.executable).with_name("ns-train")), "mononphm-track", "--machine.device-type", "cpu",
        "--vis", "tensorboard", "--max-num-iterations", str(steps), "--steps-per-save", str(steps),
        "--steps-per-eval-batch", str(10 * steps), "--steps-per-eval-image", str(10 * steps),
        "--pipeline.model.prior", str(args.prior), "--pipeline.datamanager.schedule.step-scale", str(args.step_scale),
        "--pipeline.datamanager.train-num-rays-per-batch", str(args.rays), "--output-dir", str(out),
        "--pipeline.datamanager.dataparser.test-sequences", "train", *tv_arguments(args), *VARIANTS[variant],
        *shlex.split(args.ns_train_args), "--data", str(subject),
    ]  # fmt: skip
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{variant}: ns-train failed:\n{res.stderr[-3000:]}")
    (config,) = out.rglob("config.yml")
    return config, seconds, steps


def profile_steps(config: Path, steps: int = 10) -> dict[str, float]:
    """Seconds per step of each labelled part of the model over ``steps`` training steps (joint stage)."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="val")
    model, dm = pipeline.model, pipeline.datamanager
    model.train()
    first = dm.schedule.joint_start
    parts: dict[str, float] = {}
    total = 0.0
    for step in range(first, first + steps + 1):
        model.begin_step(step)
        with torch.profiler.profile() as prof:
            t0 = time.perf_counter()
            bundle, batch = dm.next_train(step)
            losses = model.get_loss_dict(model(bundle), batch)
            with torch.profiler.record_function("mononphm/backward"):
                sum(losses.values()).backward()
            seconds = time.perf_counter() - t0
        for p in model.parameters():
            p.grad = None
        if step == first:  # warm-up
            continue
        total += seconds
        for ev in prof.key_averages():
            if ev.key.startswith("mononphm/"):
                parts[ev.key.removeprefix("mononphm/")] = parts.get(ev.key.removeprefix("mononphm/"), 0.0) + ev.cpu_time_total / 1e6
    out = {k: v / steps for k, v in parts.items()}
    out["step"] = total / steps
    return out


def ceiling_meshes(model, meta: dict, frames: list[int], args) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The prior's ceiling: one z_geo and per-frame z_exp fitted in 3-D to the frames' true meshes (what a
    scanner would see of them), networks frozen; each frame's posed mesh (world units)."""
    from headstudio.data.scans import observed_surface_samples
    from headstudio.prior.inspect import fit_sequence_codes, posed_mesh

    cache: dict = {}
    faces = model.subject.faces.cpu()
    gen = torch.Generator().manual_seed(0)
    surfaces = [observed_surface_samples(torch.as_tensor(true_vertices(model, meta, f, cache)), faces, 20_000, gen)
                for f in frames]  # fmt: skip
    codes = fit_sequence_codes(model.prior, surfaces, steps=args.ceiling_steps)
    return {f: posed_mesh(model.prior, {k: v[i : i + 1] for k, v in codes.items()}, args.resolution) for i, f in enumerate(frames)}


def geometry(config: Path, args, source: str = "model", save: Path | None = None) -> dict[str, float]:
    """Mean metrics over every --eval-every-th tracked frame: against depth and against the GT mesh
    (``_kinect.sequence_geometry``).

    ``source``: the tracked model's meshes, the input FLAME tracking's ("flame") or the prior's ceiling
    ("ceiling", :func:`ceiling_meshes`)."""
    from nerfstudio.utils.eval_utils import eval_setup

    from headstudio.export.frame_mesh import FrameMesher

    _, pipeline, _, _ = eval_setup(config, test_mode="val")
    model = pipeline.model
    ds = pipeline.datamanager.train_dataset
    tracked = model.tracked_frames[:: args.eval_every]
    if source == "flame":
        mesh_of = flame_meshes(model)
    elif source == "ceiling":
        mesh_of = ceiling_meshes(model, ds.metadata, tracked, args).__getitem__
    else:
        mesh_of = FrameMesher(model, resolution=args.resolution)
    return sequence_geometry(model, ds, tracked, mesh_of, save=save)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", type=Path, required=True, help="checkpoint of hs-prior train")
    ap.add_argument("--frames", type=int, default=8, help="rendered frames of the tracked sequence")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--step-scale", type=float, default=0.2)
    ap.add_argument("--rays", type=int, default=500)
    ap.add_argument("--tracker-error", type=float, default=1.0)
    ap.add_argument("--fps", type=float, default=1.25,
                    help="frame rate the sequence is sampled at; at 1.25 each frame shows another of the test "
                         "sequence's key expressions (they change every 0.8 s), so following them can be measured")
    ap.add_argument("--no-tv-scaling", action="store_true", help="keep the default smoothness weights at any --fps")
    ap.add_argument("--ns-train-args", default="", help="more ns-train arguments for every variant, one quoted string")
    ap.add_argument("--variants", default="full,no-landmarks,no-sh")
    ap.add_argument("--resolution", type=int, default=128, help="marching-cubes resolution of the meshes")
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--ceiling-steps", type=int, default=300,
                    help="steps of the 3-D fit of the prior's codes to the true meshes (its ceiling row); 0: no such row")
    args = ap.parse_args()
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-mononphm-"))
    root.mkdir(parents=True, exist_ok=True)
    subject = make_sequence(root, args)
    num_images = len(list((subject / "test" / "source").glob("*.png")))
    print(f"sequence: {subject} ({num_images} tracked frames at {args.size} px, {args.fps:g} frames/s, tracker error "
          f"{args.tracker_error}); smoothness weights: {' '.join(tv_arguments(args)) or 'the defaults'}")  # fmt: skip
    results, timing = {}, {}
    for variant in args.variants.split(","):
        config, seconds, steps = track(subject, variant, args, root, num_images)
        timing[variant] = (seconds, steps)
        print(f"{variant}: {steps} steps in {seconds:.0f} s ({config})", flush=True)
        results[variant] = geometry(config, args, save=root / "meshes" / variant)
        if variant == "full":
            results["FLAME tracking (input)"] = geometry(config, args, source="flame", save=root / "meshes" / "flame")
            if args.ceiling_steps > 0:
                results["prior fitted to the true meshes in 3-D (ceiling)"] = geometry(
                    config, args, source="ceiling", save=root / "meshes" / "ceiling"
                )
            parts = profile_steps(config)
    print("\nSpeed (ns-train wall time over the whole schedule, this CPU):\n")
    print("| variant | steps | wall time | s/step | frames/min |")
    print("|---|---|---|---|---|")
    for v, (sec, steps) in timing.items():
        print(f"| {v} | {steps} | {sec / 60:.1f} min | {sec / steps:.2f} | {num_images / (sec / 60):.2f} |")
    if "full" in timing:
        print("\nWhere a training step goes (full variant, joint stage, 10 steps, torch profiler CPU time of each part):\n")
        print("| part | s/step | share |")
        print("|---|---|---|")
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            if k != "step":
                print(f"| {k} | {v:.3f} | {v / parts['step']:.0%} |")
        print(f"| whole step (wall) | {parts['step']:.3f} | 100% |")
    print("\nGeometry (mean over every --eval-every-th tracked frame):\n")
    print("| method | depth L1-Chamfer (m) | depth L1-Chamfer, eval.py's L1 norm (m) | depth NC | depth Recall@2.5mm | GT-mesh L1-Chamfer (m) | GT-mesh NC | GT-mesh Recall@2.5mm |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['depth_chamfer_l1_m']:.4f} | {r['depth_chamfer_manhattan_m']:.4f} | {r['depth_normal_consistency']:.3f} | "
              f"{r['depth_recall']:.3f} | {r['gt_chamfer_l1_m']:.4f} | {r['gt_normal_consistency']:.3f} | {r['gt_recall']:.3f} |")  # fmt: skip
    print("| MonoNPHM, paper (real Kinect, Table 1) | | 0.0024 | 0.940 | 0.785 | | | |")
    print("\nExpression following (GT-mesh L1-Chamfer of each frame's mesh to the other frames' true meshes minus to its own;"
          " matched: share of frames whose nearest true mesh is their own):\n")
    print("| method | margin (mm) | matched |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {1000 * r['following_margin_m']:.2f} | {r['following_matched']:.2f} ({r['frames']} frames) |")


if __name__ == "__main__":
    main()
