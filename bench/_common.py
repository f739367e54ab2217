"""What the benches share: a subject, a short-run trainer config, one process per variant, tables.

Each variant trains in its own process (``python bench/X.py --variant NAME --json OUT ...``), so
timings and peak memory are per variant; the parent collects the rows and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch


def add_common_arguments(ap, size: int, iters: int, rays: int) -> None:
    """The arguments every training bench takes: subject, its size, iterations, rays per batch, variants."""
    ap.add_argument("--subject", type=Path, default=None, help="existing subject (default: make one)")
    ap.add_argument("--size", type=int, default=size, help="image size of the synthetic subject made when none is given")
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--rays", type=int, default=rays)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # child process: one variant
    ap.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bench_subject(subject: Optional[Path], size: int) -> Path:
    """The given subject, or a synthetic one at ``size`` px (300 train, 100 test frames), made once."""
    if subject is not None:
        return subject
    path = Path(tempfile.gettempdir()) / f"hs-bench-subject-{size}"
    if not path.exists():
        from headstudio.data.synth.subject import SubjectConfig, make_subject

        make_subject(path, SubjectConfig(size=size, num_train=300, num_test=100))
    return path


def short_run(cfg, subject: Path, iters: int, rays: int, out_dir: Path, save_every: Optional[int] = None):
    """``cfg`` (a TrainerConfig) set for a bench run: data, length (schedules included), rays per batch,
    no viewer, no evaluation during training, at most one checkpoint, the machine's device."""
    from nerfstudio.configs.base_config import LoggingConfig, MachineConfig

    cfg.pipeline.datamanager.data = subject
    cfg.pipeline.datamanager.dataparser.data = subject
    cfg.pipeline.datamanager.train_num_rays_per_batch = rays
    cfg.max_num_iterations = iters
    for opt in cfg.optimizers.values():
        if opt["scheduler"] is not None:
            opt["scheduler"].max_steps = iters
    cfg.output_dir = out_dir
    cfg.vis = "tensorboard"
    cfg.steps_per_save = save_every or 10**9
    cfg.steps_per_eval_batch = cfg.steps_per_eval_image = cfg.steps_per_eval_all_images = 10**9
    cfg.save_only_latest_checkpoint = True
    cfg.machine = MachineConfig(device_type=device_type())
    cfg.logging = LoggingConfig(local_writer=cfg.logging.local_writer)
    cfg.logging.local_writer.enable = False
    return cfg


def setup_trainer(build_config: Callable, variant: str, args, prefix: str):
    """A set-up nerfstudio Trainer for one variant (seeded, in a fresh temporary output folder)."""
    torch.manual_seed(0)
    out_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-{variant}-"))
    cfg = build_config(variant, args, out_dir)
    cfg.set_timestamp()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def run_variants(script: str, variants: Iterable[str], forwarded: list[str]) -> list[dict]:
    """Run ``script --variant V --json OUT *forwarded`` for each variant in turn; their rows."""
    rows = []
    for variant in variants:
        fd, name = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        out = Path(name)
        print(f"[bench] {variant} ...", flush=True)
        cmd = [sys.executable, script, "--variant", variant, "--json", str(out), *forwarded]
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:])
            raise SystemExit(f"{variant} failed")
        rows.append(json.loads(out.read_text()))
        out.unlink()
        print(f"[bench] {variant}: {json.dumps(rows[-1])}", flush=True)
    return rows


def forward_args(args, keys: Iterable[str]) -> list[str]:
    """``--key value`` for each of ``keys`` of the parsed arguments (to pass on to a child)."""
    out: list[str] = []
    for k in keys:
        out += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return out


def fmt(v, spec: str) -> str:
    """A table cell: '-' for a missing or NaN value."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def print_table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
