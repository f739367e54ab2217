"""Where tensorf-local-deform's time goes while its deformation trains (the README's profile figures).

    python bench/local_fields_profile.py [--iters 20]

1. In a joint-phase training run (the same reduced config as ``bench/tensorf_local_deform.py
   --schedule-scale 0.0005``: 128 px, 1024 rays, 128 + 32 samples), the forward time and point count of the
   three deformation calls per iteration: the strided uniform pass (no autograd), the fine samples of the
   active rays, the 3DMM prior's points.
2. ms/iteration of that run, of the same run with the deformation replaced by zero offsets, and of the
   built-in tensorf, each timed in this process after a warm-up.
3. The local fields alone, forward + backward on 25,000 points, with 4 and with 2 fields per point.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tensorf_local_deform as tld  # noqa: E402
from _common import bench_subject, fmt, print_table  # noqa: E402


def trainer_for(variant: str, args):
    cfg = tld.build_config(variant, args, Path(tempfile.mkdtemp(prefix=f"bench-profile-{variant}-")))
    cfg.set_timestamp()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def timed_steps(trainer, steps) -> list[float]:
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as L

    out = []
    for step in steps:
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=L.BEFORE_TRAIN_ITERATION)
        start = time.perf_counter()
        trainer.train_iteration(step)
        out.append(time.perf_counter() - start)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=L.AFTER_TRAIN_ITERATION)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20, help="timed joint-phase iterations per run (after 15 warm-up)")
    cli = ap.parse_args()
    args = argparse.Namespace(subject=bench_subject(None, 128), iters=10**6, rays=1024, uniform_samples=128,
                              samples=32, final_resolution=128, schedule_scale=0.0005, tto_steps=0,
                              rignerf_width=128, timing_only=True)  # fmt: skip
    from headstudio.deformers.deformation import Deformation
    from headstudio.deformers.local_fields import LocalDeformationFields

    warm, timed = range(15), range(15, 15 + cli.iters)  # the deformation trains from iteration 7
    rows, calls, kept = [], [], []
    for name in ("local-34", "zero offsets", "tensorf"):
        trainer = trainer_for("tensorf" if name == "tensorf" else "local-34", args)
        model = trainer.pipeline.model
        if name == "local-34":
            original = model.deform

            def counted(points, row, frame_rows, original=original):
                start = time.perf_counter()
                out = original(points, row, frame_rows)
                calls.append((points.shape[0], time.perf_counter() - start))
                return out

            model.deform = counted
        elif name == "zero offsets":
            model.deform = lambda p, r, rows: Deformation(offset=torch.zeros_like(p), penalty=torch.zeros(p.shape[0]))
        timed_steps(trainer, warm)
        calls.clear()
        ms = 1000 * sum(timed_steps(trainer, timed)) / cli.iters
        rows.append([name, fmt(ms, ".0f")])
        if name == "local-34":
            kept = list(calls)
    print("\njoint-phase training, 128 px, 1024 rays, 128 + 32 samples, device cpu")
    print_table(["run", "ms/iter"], rows)
    parts = {}
    for i, (n, sec) in enumerate(kept):  # per iteration: uniform pass, fine samples, prior (in this order)
        part = ("strided uniform pass (no autograd)", "fine samples of active rays", "3DMM prior points")[i % 3]
        p = parts.setdefault(part, [0, 0, 0.0])
        p[0], p[1], p[2] = p[0] + 1, p[1] + n, p[2] + sec
    print()
    print_table(["deformation call", "points", "forward ms"],
                [[k, str(v[1] // v[0]), fmt(1000 * v[2] / v[0], ".1f")] for k, v in parts.items()])  # fmt: skip

    torch.manual_seed(0)
    num_fields, cond_dim, n = 34, 53, 25000
    attention = (torch.rand(num_fields, cond_dim) > 0.5).float()
    keypoints = torch.randn(1, num_fields, 3) * 0.2
    cond, latent, pose = torch.randn(1, cond_dim), torch.randn(1, 32, requires_grad=True), torch.randn(1, 6)
    points = keypoints[0][torch.randint(0, num_fields, (n,))] + 0.1 * torch.randn(n, 3)
    row = torch.zeros(n, dtype=torch.long)
    micro = []
    for top_k in (4, 2):
        fields = LocalDeformationFields(attention, latent_dim=32, pose_dim=6, hidden_dim=40, num_layers=3,
                                        blend_sigma=0.08, top_k=top_k)  # fmt: skip
        times = []
        for _ in range(8):
            start = time.perf_counter()
            out = fields(points, row, keypoints, cond, latent, pose)
            (out.offset.square().sum() + out.penalty.sum()).backward()
            times.append(time.perf_counter() - start)
        micro.append([str(top_k), fmt(1000 * sum(times[3:]) / 5, ".1f")])
    print(f"\nlocal fields alone, {n} points, forward + backward")
    print_table(["fields per point (top-k-fields)", "ms"], micro)


if __name__ == "__main__":
    main()
