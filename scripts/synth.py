"""hs-synth: headstudio's procedural FLAME-format model, synthetic subjects and scan sets.

    hs-synth flame-model OUT.pkl        # a FLAME-format model (+ landmark embedding, masks)
    hs-synth subject OUT                # a subject rendered from it, with ground truth
    hs-synth scans OUT --identities N --expressions M   # scans for a parametric head prior
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Sequence

import tyro
from rich.console import Console

from headstudio.data.scans import ScanSetConfig, make_scans
from headstudio.data.synth.subject import SubjectConfig, make_subject
from headstudio.flame.procedural import write_procedural_flame
from headstudio.utils.progress import progress_bar

console = Console(stderr=True)


@dataclass
class FlameModelCommand:
    """Write the procedural FLAME-format model: OUT.pkl in the official generic_model.pkl
    layout, with landmark_embedding.npy and FLAME_masks.pkl beside it."""

    out: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUT.pkl")]
    """Model file to write (its folder receives the two companion files)."""
    seed: int = 0
    """Seed of the random tails of the shape and expression bases."""

    def main(self) -> None:
        paths = write_procedural_flame(self.out, seed=self.seed)
        for p in paths:
            console.print(f"wrote {p}")


@dataclass
class SubjectCommand:
    """Render a synthetic subject (training + test sequence) with ground truth into OUT."""

    out: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUT")]
    """Output folder; must not exist yet."""
    config: Annotated[SubjectConfig, tyro.conf.arg(name="")] = field(default_factory=SubjectConfig)

    def main(self) -> None:
        cfg = self.config
        if cfg.size < 16:
            raise ValueError(f"--size {cfg.size} is too small: use at least 16 pixels")
        if cfg.num_train < 1 or cfg.num_test < 1:
            raise ValueError("--num-train and --num-test must be at least 1")
        with progress_bar() as bar:
            task = bar.add_task(f"rendering {self.out}", total=cfg.num_train + cfg.num_test)
            stats = make_subject(self.out, cfg, progress=lambda done, total: bar.update(task, completed=done))
        console.print(
            f"wrote {self.out}: {stats['frames']} frames at {cfg.size} px in {stats['total_s']:.1f} s "
            f"({stats['fps']:.1f} frames/s rendering and writing)"
        )


@dataclass
class ScansCommand:
    """Synthesise registered head scans (surface, near-surface and correspondence samples,
    registrations, FLAME ground truth) for training a MonoNPHM-style head prior into OUT."""

    out: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUT")]
    """Output folder; must not exist yet."""
    config: Annotated[ScanSetConfig, tyro.conf.arg(name="")] = field(default_factory=ScanSetConfig)

    def main(self) -> None:
        cfg = self.config
        with progress_bar() as bar:
            task = bar.add_task(f"scanning {self.out}", total=cfg.identities * cfg.expressions)
            stats = make_scans(self.out, cfg, progress=lambda done, total: bar.update(task, completed=done))
        console.print(
            f"wrote {self.out}: {stats['scans']} scans ({cfg.identities} identities x {cfg.expressions} expressions), "
            f"{stats['bytes'] / 2**20:.1f} MiB, in {stats['total_s']:.1f} s ({stats['per_scan_s']:.2f} s per scan)"
        )


Commands = (
    Annotated[FlameModelCommand, tyro.conf.subcommand("flame-model")]
    | Annotated[SubjectCommand, tyro.conf.subcommand("subject")]
    | Annotated[ScansCommand, tyro.conf.subcommand("scans")]
)


def entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point: one-line errors and a non-zero exit on bad input; ``argv`` (default: the command
    line's arguments) lets tests run it in-process."""
    cmd = tyro.cli(Commands, description=__doc__, args=argv)
    try:
        cmd.main()
    except (FileExistsError, ValueError, OSError) as exc:
        print(f"hs-synth: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
