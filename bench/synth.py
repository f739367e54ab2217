"""Speed of `hs-synth subject`: frames per second for a 300-frame, 256-px subject.

    python bench/synth.py [--size 256] [--frames 300] [--format imavatar]

Target (foundation issue): 300 frames at 256 px in under 60 s on a 2-core CPU.
Prints a table: model build, rendering + writing, total, frames per second, and the
per-frame split between rasterising/shading and writing files.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from headstudio.data.synth.subject import SubjectConfig, make_subject


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--format", default="imavatar")
    args = ap.parse_args()
    n_test = args.frames // 4
    cfg = SubjectConfig(size=args.size, num_train=args.frames - n_test, num_test=n_test, format=args.format)
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        stats = make_subject(tmp / "subject", cfg)
        total = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in (tmp / "subject").rglob("*") if p.is_file()) / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        ("frames", f"{stats['frames']}"),
        ("image size (px)", f"{args.size}"),
        ("layout", args.format),
        ("torch threads", f"{torch.get_num_threads()}"),
        ("model build + write (s)", f"{total - stats['render_write_s']:.1f}"),
        ("render + write frames (s)", f"{stats['render_write_s']:.1f}"),
        ("total (s)", f"{total:.1f}"),
        ("frames / s", f"{stats['frames'] / total:.1f}"),
        ("subject size on disk (MiB)", f"{size_mb:.0f}"),
        ("target: total under 60 s", "met" if total < 60 else "NOT met"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


if __name__ == "__main__":
    main()
