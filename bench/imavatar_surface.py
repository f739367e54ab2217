"""imavatar-surface: renderer speed (fast vs dense) and quality after a fixed budget.

    python bench/imavatar_surface.py [--subject DIR] [--size 64] [--iters 150] [--rays 256] [--steps 48]

Makes (or reuses) a synthetic subject at ``--size`` px. Trains, each in its own process and
for the same iterations and rays, the full model (forward skinning fields + FLAME pseudo
ground truth, SDF level 0), Ours- (no FLAME loss), the D-Net ablation and the full model
rendering the paper's occupancy level 0.5; evaluates the unseen-expression test frames (PSNR,
SSIM, L1, normal angle error in the face region, keypoint error). Then, on the trained full
model, renders the same test image with the fast renderer (FLAME-mesh bounds, front-to-back
chunks, converged and merged roots dropped) and the dense reference (every sample of the
scene box, every start, every Broyden step) in one process, and prints rays per second and
how far the two agree (hit mask IoU, depth difference); and how far 2 and 8 secant steps on
the SDF and on the occupancy land from the converged crossing (the SDF-vs-occupancy choice).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_common_arguments, bench_subject, device_type, fmt, forward_args, print_table, run_variants, setup_trainer, short_run,
)

VARIANTS = ("full", "ours-", "d-net", "occupancy")
NETWORK = dict(geometry_dims=(256,) * 6, geometry_skip=(3,), feature_dim=64, deformation_dims=(128,) * 4,
               texture_dims=(128,) * 3)  # fmt: skip


def build_config(variant: str, args, out_dir: Path):
    from headstudio.method_configs.imavatar_surface import imavatar_surface

    cfg = copy.deepcopy(imavatar_surface.config)
    model = cfg.pipeline.model
    for key, value in NETWORK.items():
        setattr(model, key, value)
    model.num_steps, model.num_secant_steps = args.steps, 8
    model.use_flame_loss = variant != "ours-"
    model.deformer = "d-net" if variant == "d-net" else "forward"
    model.surface = "occupancy" if variant == "occupancy" else "sdf"
    model.eval_num_rays_per_chunk = 4096
    cfg.pipeline.datamanager.dataparser.test_every = args.test_every
    for opt in cfg.optimizers.values():
        opt["optimizer"].lr = args.lr
    return short_run(cfg, args.subject, args.iters, args.rays, out_dir, save_every=args.iters)


def run_variant(variant: str, args) -> dict:
    trainer = setup_trainer(build_config, variant, args, "bench-imavatar")
    start = time.perf_counter()
    trainer.train()
    row = {"variant": variant, "train_s": time.perf_counter() - start}
    row["s_per_iter"] = row["train_s"] / args.iters
    metrics = trainer.pipeline.get_average_eval_image_metrics()
    row.update({k: v for k, v in metrics.items() if isinstance(v, float) and not k.endswith("_dagger")})
    if variant == "full":
        row.update(renderer_speed(trainer.pipeline, args))
    return row


@torch.no_grad()
def renderer_speed(pipeline, args) -> dict:
    """Dense vs fast renderer (every sample, and march-stride 4) on one test image, same network, same process."""
    model = pipeline.model
    model.eval()
    camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))
    camera = camera.to(model.device)
    out, maps = {}, {}
    for name, mode, stride in (("dense", "dense", 1), ("fast", "fast", 1), ("fast4", "fast", 4)):
        model.config.renderer, model.config.march_stride = mode, stride
        start = time.perf_counter()
        outputs = model.get_outputs_for_camera(camera)
        seconds = time.perf_counter() - start
        out[f"{name}_rays_per_s"] = camera.height.item() * camera.width.item() / seconds
        maps[name] = outputs["accumulation"][..., 0] > 0.5, outputs["depth"][..., 0]
    model.config.renderer, model.config.march_stride = "fast", 1
    out.update(secant_study(model, camera))
    for mode in ("fast", "dense"):
        out.update({f"{mode}_{k}": v for k, v in march_counts(model, camera, mode).items()})
    ref_hit, ref_depth = maps["dense"]
    for name in ("fast", "fast4"):
        hit, depth = maps[name]
        both = hit & ref_hit
        out[f"{name}_hit_iou"] = float(both.sum() / (hit | ref_hit).sum().clamp_min(1))
        out[f"{name}_depth_diff"] = float((depth[both] - ref_depth[both]).abs().median()) if both.any() else float("nan")
        out[f"{name}_speedup"] = out[f"{name}_rays_per_s"] / out["dense_rays_per_s"]
    return out


@torch.no_grad()
def march_counts(model, camera, mode: str) -> dict:
    """Where a renderer's work goes on one image: rays in the FLAME-mesh box, hits, correspondence searches,
    Broyden residual evaluations per start, SDF reads."""
    import torch.nn.functional as F

    import headstudio.deformers.forward_skinning as skinning
    from headstudio.rendering.implicit_surface import march_in_bounds, ray_box

    cfg = model.config
    bundle = camera.generate_rays(camera_indices=0, keep_shape=False)
    frames = model.subject.frame_of(bundle)
    o, d = bundle.origins.reshape(-1, 3), F.normalize(bundle.directions.reshape(-1, 3), dim=-1)
    count = {"searches": 0, "sdf_reads": 0, "starts": 0, "residuals": 0}
    solver = skinning.broyden

    def broyden(fn, x0, *a, **k):
        count["starts"] += x0.shape[0]

        def residual(x, ids):
            count["residuals"] += x.shape[0]
            return fn(x, ids)

        return solver(residual, x0, *a, **k)

    def correspond(x, f):
        count["searches"] += x.shape[0]
        return model.correspond(x, f)

    def level(x, f):
        count["sdf_reads"] += x.shape[0]
        return model.level(x, f)

    keep = cfg.renderer
    cfg.renderer, skinning.broyden = mode, broyden
    try:
        fast = mode == "fast"
        bounds = (model.mesh_lo[frames], model.mesh_hi[frames]) if fast else None
        res = march_in_bounds(o, d, frames, model.scene_box.aabb[0].to(o), model.scene_box.aabb[1].to(o), correspond,
                              level, num_steps=cfg.num_steps, num_secant=cfg.num_secant_steps, bounds=bounds,
                              chunk_steps=cfg.chunk_steps)  # fmt: skip
    finally:
        cfg.renderer, skinning.broyden = keep, solver
    near, far = ray_box(o, d, model.mesh_lo[frames], model.mesh_hi[frames])
    in_box = far > near
    count.update(rays=o.shape[0], in_box=int(in_box.sum()), hits=int(res.hit.sum()),
                 in_box_misses=int((in_box & ~res.hit).sum()), residuals_per_start=count["residuals"] / max(1, count["starts"]))
    return count


@torch.no_grad()
def secant_study(model, camera) -> dict:
    """Depth error of the secant-refined crossing, SDF vs occupancy level, against 40 SDF secant steps."""
    cfg, out = model.config, {}
    keep = cfg.surface, cfg.num_secant_steps
    cfg.surface, cfg.num_secant_steps = "sdf", 40
    ref = model.get_outputs_for_camera(camera)
    hit = ref["accumulation"][..., 0] > 0.5
    for surface in ("sdf", "occupancy"):
        for steps in (2, 8):
            cfg.surface, cfg.num_secant_steps = surface, steps
            depth = model.get_outputs_for_camera(camera)["depth"][..., 0]
            out[f"secant_{surface}_{steps}"] = float((depth - ref["depth"][..., 0])[hit].abs().mean())
    cfg.surface, cfg.num_secant_steps = keep
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, size=64, iters=150, rays=256)
    ap.add_argument("--steps", type=int, default=48, help="march samples per ray over the scene box (paper config: 100)")
    ap.add_argument("--lr", type=float, default=5e-4, help="Adam rate (paper: 1e-4 over 60 epochs; higher for a short run)")
    ap.add_argument("--test-every", type=int, default=20, help="evaluate every n-th test frame (paper: 10)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    if args.variant is not None:  # child process
        args.json.write_text(json.dumps(run_variant(args.variant, args)))
        return
    args.subject = bench_subject(args.subject, args.size)
    keys = ("subject", "iters", "rays", "steps", "lr", "test_every")
    rows = run_variants(__file__, args.variants.split(","), forward_args(args, keys))
    device = device_type()
    print(
        f"\nsubject {args.subject} ({args.size} px), {args.iters} iterations x {args.rays} rays, {args.steps} march "
        f"samples/ray, Adam {args.lr:g}, every {args.test_every}th test frame, network {NETWORK}, device {device}"
    )
    head = ["variant", "PSNR", "SSIM", "L1", "normal error (deg)", "keypoint error (px)", "s/iter"]
    print_table(head, [
        [r["variant"], fmt(r.get("psnr"), ".2f"), fmt(r.get("ssim"), ".3f"), fmt(r.get("l1"), ".4f"),
         fmt(r.get("normal_error"), ".1f"), fmt(r.get("keypoint_error"), ".2f"), fmt(r["s_per_iter"], ".2f")]
        for r in rows
    ])  # fmt: skip
    full = next((r for r in rows if "fast_speedup" in r), None)
    if full is not None:
        print()
        print_table(["renderer (full model, one test image, same network, same process)", "rays/s", "x dense",
                     "hit IoU vs dense", "median depth diff"], [
            ["dense: scene box, every sample, every start, every Broyden step", fmt(full["dense_rays_per_s"], ".0f"),
             "1.0", "1.000", "0"],
            ["fast: FLAME-mesh bounds, front-to-back chunks, converged and merged roots dropped",
             fmt(full["fast_rays_per_s"], ".0f"), fmt(full["fast_speedup"], ".1f"), fmt(full["fast_hit_iou"], ".3f"),
             fmt(full["fast_depth_diff"], ".1e")],
            ["fast, --pipeline.model.march-stride 4 (every 4th sample, then the dense ones in the first bracket)",
             fmt(full["fast4_rays_per_s"], ".0f"), fmt(full["fast4_speedup"], ".1f"), fmt(full["fast4_hit_iou"], ".3f"),
             fmt(full["fast4_depth_diff"], ".1e")],
        ])  # fmt: skip
        print()
        keys = ("rays", "in_box", "hits", "in_box_misses", "searches", "starts", "residuals", "residuals_per_start",
                "sdf_reads")  # fmt: skip
        print_table(["renderer", *keys], [[m] + [fmt(full.get(f"{m}_{k}"), ".2f" if k == "residuals_per_start" else "d")
                                                 for k in keys] for m in ("fast", "dense")])  # fmt: skip
        print("\n| level refined by secant steps | 2 steps | 8 steps |  (mean depth error on hit pixels vs 40 SDF steps, world units)")
        print("|---|---|---|")
        for surface in ("sdf", "occupancy"):
            print(f"| {surface} | {full[f'secant_{surface}_2']:.2e} | {full[f'secant_{surface}_8']:.2e} |")


if __name__ == "__main__":
    main()
