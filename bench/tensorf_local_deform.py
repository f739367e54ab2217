"""tensorf-local-deform vs its ablations, RigNeRF* and nerfstudio's tensorf: same subject, same budget.

    python bench/tensorf_local_deform.py [--subject DIR] [--iters 500] [--rays 1024] [--size 128]

Makes (or reuses) a synthetic subject at ``--size`` px, then trains each variant for the same
number of iterations at the same rays per batch and samples per ray, each in its own process:
tensorf-local-deform with 34, 5 and 1 keypoint fields, rignerf-star (Chen et al. 2023's RigNeRF*,
``--rignerf-width`` trunk) and nerfstudio's ``tensorf`` on the same data (no deformation:
the baseline). Evaluates the unseen-expression test frames
(PSNR, SSIM, L1, LPIPS when its weights are available offline) without (†) and with
test-time optimisation of the frame codes, and prints one table with time per iteration
(relative to built-in tensorf) and peak memory (CUDA: max allocated; CPU: peak RSS).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_arguments, bench_subject, device_type, fmt, forward_args, print_table, run_variants, setup_trainer, short_run,
)

VARIANTS = ("tensorf", "local-34", "local-5", "global-1", "rignerf-star")


def build_config(variant: str, args, out_dir: Path):
    from nerfstudio.engine.trainer import TrainerConfig

    from headstudio.method_configs.tensorf_local_deform import tensorf_local_deform

    base: TrainerConfig = copy.deepcopy(tensorf_local_deform.config)
    if variant == "tensorf":
        from nerfstudio.configs.method_configs import method_configs
        from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

        from headstudio.metrics.lpips import patch_torchmetrics_lpips

        patch_torchmetrics_lpips()  # nerfstudio's tensorf builds LPIPS eagerly: no download offline
        ref: TrainerConfig = method_configs["tensorf"]
        cfg = TrainerConfig(**{k: getattr(ref, k) for k in ref.__dataclass_fields__})
        cfg.pipeline = VanillaPipelineConfig(datamanager=base.pipeline.datamanager, model=ref.pipeline.model)
        cfg.pipeline.model.camera_optimizer.mode = "off"
        cfg.optimizers = {k: v for k, v in ref.optimizers.items() if k != "camera_opt"}
        # Same grid schedule as ours (whose model scales its own iterations by schedule_scale).
        cfg.pipeline.model.upsampling_iters = tuple(
            max(1, int(round(i * args.schedule_scale))) for i in (2000, 3000, 4000, 5500, 7000)
        )
    elif variant == "rignerf-star":
        from headstudio.method_configs.rignerf_star import rignerf_star

        cfg = copy.deepcopy(rignerf_star.config)
        cfg.pipeline.test_time_steps = args.tto_steps
        cfg.pipeline.test_time_rays = args.rays
    else:
        cfg = base
        cfg.pipeline.model.num_keypoints = {"local-34": 34, "local-5": 5, "global-1": 1}[variant]
        cfg.pipeline.model.schedule_scale = args.schedule_scale
        cfg.pipeline.test_time_steps = args.tto_steps
        cfg.pipeline.test_time_rays = args.rays
    model = cfg.pipeline.model
    if variant == "rignerf-star":
        model.num_coarse_samples, model.num_importance_samples = args.uniform_samples, args.samples
        model.layer_width = args.rignerf_width
    else:
        model.num_uniform_samples, model.num_samples = args.uniform_samples, args.samples
        model.final_resolution = args.final_resolution
    model.eval_num_rays_per_chunk = 4096
    return short_run(cfg, args.subject, args.iters, args.rays, out_dir)


def run_variant(variant: str, args) -> dict:
    """Train and evaluate one variant in this process; returns its row."""
    from headstudio.metrics.images import image_metrics

    trainer = setup_trainer(build_config, variant, args, "bench")
    times: list[float] = []
    step_fn = trainer.train_iteration

    def timed(step: int):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = step_fn(step)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        return result

    trainer.train_iteration = timed
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    pipeline = trainer.pipeline
    row = {"variant": variant, "iters": len(times), "train_s": train_s}
    skip = min(10, len(times) // 5)  # warm-up (allocations, the grid upsampling at this schedule scale)
    warm = times[skip:]
    row["ms_per_iter"] = 1000 * sum(warm) / len(warm)
    model = pipeline.model
    if hasattr(model, "config") and hasattr(model.config, "pretrain_iters"):
        # Deformation frozen (no backward through it, no prior loss) before this step, trained jointly after.
        joint_from = model.config.scaled(model.config.pretrain_iters)
        frozen = [t for i, t in enumerate(times) if skip <= i < joint_from]
        joint = [t for i, t in enumerate(times) if i >= max(skip, joint_from)]
        row["ms_frozen"] = 1000 * sum(frozen) / len(frozen) if frozen else None
        row["ms_joint"] = 1000 * sum(joint) / len(joint) if joint else None
        row["joint_iters"] = len(joint)
    else:  # no deformation phases: every iteration is what users run
        row["ms_joint"] = row["ms_per_iter"]
    if torch.cuda.is_available():
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        row["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.timing_only:
        return row
    start = time.perf_counter()
    if variant == "tensorf":
        pipeline.eval()
        rows = []
        with torch.no_grad():
            for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
                rgb = pipeline.model.get_outputs_for_camera(camera=camera)["rgb"]
                rows.append(image_metrics(rgb, batch["image"][..., :3].to(rgb.device)))
        for key in rows[0]:
            row[f"{key}_dagger"] = sum(r[key] for r in rows) / len(rows)
    else:
        metrics = pipeline.get_average_eval_image_metrics()
        row.update({k: v for k, v in metrics.items() if isinstance(v, float)})
    row["eval_s"] = time.perf_counter() - start
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, size=128, iters=500, rays=1024)
    ap.add_argument("--uniform-samples", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--final-resolution", type=int, default=128)
    ap.add_argument("--schedule-scale", type=float, default=0.02, help="scales TensoRF's and Chen et al. 2023's iterations")
    ap.add_argument("--tto-steps", type=int, default=20)
    ap.add_argument(
        "--rignerf-width", type=int, default=256 if torch.cuda.is_available() else 128,
        help="rignerf-star's NeRF trunk width (NeRF: 256; 128 by default on CPU, for time)",
    )
    ap.add_argument("--timing-only", action="store_true", help="train and time, skip the evaluation")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    if args.variant is not None:  # child process
        row = run_variant(args.variant, args)
        args.json.write_text(json.dumps(row))
        return
    args.subject = bench_subject(args.subject, args.size)
    keys = ("subject", "iters", "rays", "uniform_samples", "samples", "final_resolution", "schedule_scale",
            "tto_steps", "rignerf_width")  # fmt: skip
    forwarded = forward_args(args, keys) + (["--timing-only"] if args.timing_only else [])
    rows = run_variants(__file__, args.variants.split(","), forwarded)
    base = next((r["ms_per_iter"] for r in rows if r["variant"] == "tensorf"), None)
    print(
        f"\nsubject {args.subject} ({args.size} px), {args.iters} iterations x {args.rays} rays, "
        f"{args.uniform_samples}+{args.samples} samples/ray, grid -> {args.final_resolution}^3, schedule scale "
        f"{args.schedule_scale:g}, test-time steps {args.tto_steps}, rignerf-star trunk width {args.rignerf_width}, "
        f"device {device_type()}"
    )
    head = ["variant", "PSNR†", "SSIM†", "L1†", "LPIPS†", "PSNR", "SSIM", "L1", "LPIPS", "ms/iter", "x tensorf",
            "ms/iter frozen", "ms/iter joint", "joint x tensorf", "peak MB"]  # fmt: skip
    table = []
    for r in rows:
        ratio = r["ms_per_iter"] / base if base else None
        joint = r.get("ms_joint")
        table.append([
            r["variant"], fmt(r.get("psnr_dagger"), ".2f"), fmt(r.get("ssim_dagger"), ".3f"),
            fmt(r.get("l1_dagger"), ".4f"), fmt(r.get("lpips_dagger"), ".3f"), fmt(r.get("psnr"), ".2f"),
            fmt(r.get("ssim"), ".3f"), fmt(r.get("l1"), ".4f"), fmt(r.get("lpips"), ".3f"), fmt(r["ms_per_iter"], ".0f"),
            fmt(ratio, ".2f"), fmt(r.get("ms_frozen"), ".0f"), fmt(joint, ".0f"),
            fmt(joint / base if base and joint else None, ".2f"), fmt(r["peak_mem_mb"], ".0f"),
        ])  # fmt: skip
    print_table(head, table)


if __name__ == "__main__":
    main()
