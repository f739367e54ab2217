"""MonoNPHM prior: reconstruction of held-out scans and the cost of the 8-nearest-anchor ensemble.

    python bench/nphm_prior.py --prior PRIOR.ckpt --train-scans TRAIN --heldout-scans HELDOUT \
        [--hold-out-expressions 5] [--fit-steps 200] [--resolution 64]

1. Reconstruction: for every scan with a held-out expression of a trained identity (in
   TRAIN) and every scan of the held-out identities (HELDOUT), fit codes with the networks
   frozen (``hs-prior fit``'s procedure), march the posed SDF and compare with the scan:
   L1-Chamfer in FLAME millimetres, normal consistency, F-score at 2.5 mm (FLAME).
2. Query cost (MonoNPHM's supp. B.2): SDF and its gradient (the training state: the eikonal
   and normal losses need it) for one batch of points through the paper-sized ensemble with
   each query seeing its 8 nearest anchors, against all 65 (NPHM's way), each in its own
   process: time, peak resident memory above the process's baseline (noisy on CPU: the
   allocator keeps and reuses memory) and the memory allocated during one step (torch's
   profiler; deterministic).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, print_table, run_variants  # noqa: E402


def query_cost(neighbours: int, points: int, repeats: int) -> dict:
    from headstudio.fields.nphm import EnsembleSizes, LocalEnsembleField
    from headstudio.fields.nphm_anchors import AnchorLayout

    torch.manual_seed(0)
    layout = AnchorLayout(np.arange(65))
    mean = torch.randn(65, 3) * 0.3
    field = LocalEnsembleField(layout, mean, EnsembleSizes(neighbours=neighbours))
    z = torch.randn(1, field.code_dim) * 0.01
    x = torch.rand(1, points, 3) - 0.5
    omega = torch.zeros(1, points, 2)

    def step(xq: torch.Tensor, om: torch.Tensor) -> None:
        sdf = field(xq, om, z)["sdf"]
        (g,) = torch.autograd.grad(sdf.sum(), xq, create_graph=True)
        (sdf.abs().mean() + (g.norm(dim=-1) - 1).abs().mean()).backward()

    step(x[:, :64].clone().requires_grad_(True), omega[:, :64])  # warm-up: libraries, thread pools, weights' grads
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        xi = x.clone().requires_grad_(True)
        t = time.perf_counter()
        step(xi, omega)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x.clone().requires_grad_(True), omega)
    allocated = sum(e.self_cpu_memory_usage for e in prof.key_averages() if e.self_cpu_memory_usage > 0)
    return {
        "variant": f"{neighbours} anchors",
        "seconds": float(np.median(times)),
        "peak_mib": (peak - base) / 1024,
        "allocated_mib": allocated / 2**20,
    }


def reconstruction(args) -> list[list[str]]:
    from headstudio.data.scans import open_scan_set
    from headstudio.flame.constants import WORLD_SCALE
    from headstudio.prior.inspect import fit_scan
    from headstudio.prior.training import load_checkpoint

    model, ck = load_checkpoint(args.prior)
    geo = model.z_geo.weight.detach()
    spread = (geo - geo.mean(0)).norm(dim=-1)
    print(f"[bench] trained identity codes z_geo: mean's norm {float(geo.mean(0).norm()):.2f}, each code's distance to the "
          f"mean {float(spread.min()):.2f}-{float(spread.max()):.2f} (mononphm-track starts from the mean: code_origin)")  # fmt: skip
    rows = []
    groups = []
    train = open_scan_set(args.train_scans)
    groups.append(("held-out expressions of trained identities", train, [s for s in train.scans if s.expression_index in args.hold_out_expressions]))
    held = open_scan_set(args.heldout_scans)
    groups.append(("held-out identities", held, list(held.scans)))
    for name, sset, entries in groups:
        ch, nc, fs, secs = [], [], [], []
        for e in entries:
            t = time.perf_counter()
            scan = sset.load(sset.scans.index(e))
            res = fit_scan(model, scan, steps=args.fit_steps, resolution=args.resolution)
            secs.append(time.perf_counter() - t)
            d = res.distance
            ch.append(d.chamfer_l1 / WORLD_SCALE * 1000)
            nc.append(d.normal_consistency)
            fs.append(d.fscore)
            print(f"[bench] {name}: {e.file}: chamfer {ch[-1]:.2f} mm, NC {nc[-1]:.4f}, F {fs[-1]:.3f} ({secs[-1]:.0f} s)", flush=True)
        rows.append([name, str(len(entries)), fmt(float(np.mean(ch)), ".2f"), fmt(float(np.mean(nc)), ".4f"), fmt(float(np.mean(fs)), ".3f"), fmt(float(np.mean(secs)), ".0f")])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", type=Path)
    ap.add_argument("--train-scans", type=Path)
    ap.add_argument("--heldout-scans", type=Path)
    ap.add_argument("--hold-out-expressions", type=int, nargs="*", default=[5])
    ap.add_argument("--fit-steps", type=int, default=200)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--query-points", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-reconstruction", action="store_true")
    ap.add_argument("--skip-cost", action="store_true", help="only the reconstruction half (the cost half needs no prior)")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant is not None:
        row = query_cost(int(args.variant), args.query_points, args.repeats)
        args.json.write_text(json.dumps(row))
        return
    print(f"torch threads: {torch.get_num_threads()}")
    if not args.skip_reconstruction:
        rows = reconstruction(args)
        print("\nReconstruction after fitting codes (networks frozen):\n")
        print_table(["scans", "count", "L1-Chamfer (FLAME mm)", "normal consistency", "F-score @2.5 mm", "fit + mesh s/scan"], rows)
    if args.skip_cost:
        return
    costs = run_variants(__file__, ["8", "65"], ["--query-points", str(args.query_points), "--repeats", str(args.repeats)])
    print(f"\nOne batch of {args.query_points} queries, SDF + gradient + backward, paper-sized ensemble:\n")
    print_table(
        ["neighbourhood", "s / batch", "peak resident memory above baseline (MiB)", "memory allocated in the step (MiB)"],
        [[c["variant"], fmt(c["seconds"], ".3f"), fmt(c["peak_mib"], ".0f"), fmt(c["allocated_mib"], ".0f")] for c in costs],
    )
    ratio = costs[1]["peak_mib"] / max(costs[0]["peak_mib"], 1e-9)
    alloc = costs[1]["allocated_mib"] / max(costs[0]["allocated_mib"], 1e-9)
    print(
        f"\nmemory saving of 8 nearest over all 65: {ratio:.1f}x in peak resident memory, {alloc:.1f}x in memory allocated "
        f"(target at least 5x); time {costs[1]['seconds'] / costs[0]['seconds']:.1f}x"
    )


if __name__ == "__main__":
    main()
