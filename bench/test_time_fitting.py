"""ns-eval's test-time code fitting: seconds per test frame for every method, full and reduced fitting renders.

    python bench/test_time_fitting.py [--size 32] [--num-test 30] [--train-iters 5] [--steps 100]

Makes a small synthetic subject (``--num-test`` test frames, every 10th evaluated), trains each method for
``--train-iters`` iterations with its default config (the cost of a fitting step does not depend on how long
the model trained), then runs ns-eval's protocol in-process with ``--steps`` fitting steps per frame of
``test-time-rays`` (default 1024) random pixels, once with every sample per ray (fraction 1.0) and once with
the default ``test-time-sample-fraction`` (0.5), and prints seconds per test frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_type, fmt, print_table  # noqa: E402

METHODS = ("tensorf-local-deform", "rignerf-star", "imavatar-surface")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--num-test", type=int, default=30)
    ap.add_argument("--train-iters", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()

    import subprocess

    from nerfstudio.utils.eval_utils import eval_setup

    from headstudio.data.synth.subject import SubjectConfig, make_subject

    work = Path(tempfile.mkdtemp(prefix="hs-bench-tto-"))
    subject = work / "subject"
    make_subject(subject, SubjectConfig(size=args.size, num_train=10, num_test=args.num_test))
    bin_dir = Path(sys.executable).parent
    rows = []
    for method in args.methods.split(","):
        out = work / method
        cmd = [str(bin_dir / "ns-train"), method, "--machine.device-type", device_type(), "--vis", "tensorboard",
               "--max-num-iterations", str(args.train_iters), "--output-dir", str(out), "--data", str(subject)]  # fmt: skip
        print(f"[bench] training {method} ...", flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{method}: ns-train failed\n{res.stderr[-3000:]}")
        (config,) = out.rglob("config.yml")
        _, pipeline, _, _ = eval_setup(config, test_mode="test")
        pipeline.config.test_time_steps = args.steps
        frames = len(pipeline.datamanager.fixed_indices_eval_dataloader)
        for fraction in (1.0, pipeline.config.test_time_sample_fraction):
            state = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
            pipeline.config.test_time_sample_fraction = fraction
            start = time.perf_counter()
            metrics = pipeline.get_average_eval_image_metrics()
            total = time.perf_counter() - start
            pipeline.model.load_state_dict(state)  # the same starting codes for the next setting
            fit = metrics["test_time_seconds_per_frame"]
            rows.append([method, str(frames), str(args.steps), str(pipeline.config.test_time_rays), f"{fraction:g}",
                         fmt(fit, ".1f"), fmt(fit / args.steps, ".3f"), fmt(total / frames, ".1f"),
                         fmt(metrics.get("psnr"), ".2f"), fmt(metrics.get("psnr_dagger"), ".2f")])  # fmt: skip
            print(f"[bench] {method} fraction {fraction:g}: {fit:.1f} s/frame fitting", flush=True)
    print(f"\n{args.size} px subject, {args.train_iters} training iterations, default configs, device {device_type()}")
    print_table(["method", "test frames", "steps", "rays/step", "sample fraction", "fitting s/frame", "s/step",
                 "ns-eval s/frame", "PSNR", "PSNR†"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
