"""hs-check-data: summarise a FLAME-tracked subject and list every problem in it.

    hs-check-data PATH [--format auto|imavatar|nerface|insta|kinect] [--flame-path generic_model.pkl]

Prints the layout, which sequences are train and test (and the rule that chose them),
frames per split, resolution, how the layout's conventions were converted, expression-norm
statistics and, per sequence, the mean and standard deviation of head (global), neck and jaw
yaw/pitch/roll in degrees (as Table 3 of Chen et al. 2023). Derives the masks a layout lacks
and recovers the FLAME parameters it lacks (INSTA, MonoNPHM: fitted to the tracked meshes,
cached in PATH/.headstudio/), with the fit residual. Then lists all problems found (missing
keys or files, bad vector lengths, NaN/inf, mixed image sizes, truncated images, ...).
Exits with 1 when there are problems.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence, Tuple

import numpy as np
import tyro
from rich.console import Console
from rich.table import Table
from scipy.spatial.transform import Rotation

from headstudio.data.errors import DataError, Problems
from headstudio.data.formats import VideoSubject, complete_subject, read_subject
from headstudio.flame.files import resolve_flame_path
from headstudio.flame.safe_pickle import FlameFileError
from headstudio.utils.progress import progress_bar, stepper

console = Console()


def euler_degrees(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle (N, 3) -> yaw (about y), pitch (about x), roll (about z) in degrees."""
    return Rotation.from_rotvec(rotvec).as_euler("YXZ", degrees=True)


def summary_tables(subject: VideoSubject) -> list[Table]:
    splits = Table(title="frames per split")
    for col in ("split", "frames", "sequences"):
        splits.add_column(col)
    for name, idx in subject.splits.items():
        seqs = sorted({subject.frames[i].sequence for i in idx})
        splits.add_row(name, str(len(idx)), ", ".join(seqs))
    sizes = sorted({f.size for f in subject.frames})
    res = ", ".join(f"{w}x{h}" for w, h in sizes)
    stats = Table(title=f"per sequence (resolution {res}; FLAME shape dims {len(subject.shape)})")
    stats.add_column("sequence")
    stats.add_column("frames", justify="right")
    stats.add_column("|expression| mean / std / max", justify="right")
    parts = ("head", "neck", "jaw") if subject.flame_tracked else ()
    for part in parts:
        stats.add_column(f"{part} yaw / pitch / roll (deg, mean ± std)", justify="right")
    for seq in subject.sequences:
        fr = [f for f in subject.frames if f.sequence == seq]
        expr = np.linalg.norm(np.stack([f.expression for f in fr]), axis=1)
        pose = np.stack([f.pose for f in fr])
        cells = []
        for j in range(len(parts)):
            e = euler_degrees(pose[:, 3 * j : 3 * j + 3])
            cells.append(" / ".join(f"{m:+.1f}±{s:.1f}" for m, s in zip(e.mean(0), e.std(0))))
        stats.add_row(
            seq, str(len(fr)), f"{expr.mean():.2f} / {expr.std():.2f} / {expr.max():.2f}", *cells
        )
    return [splits, stats]


@dataclass
class CheckData:
    path: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="PATH")]
    """Subject folder."""
    format: Literal["auto", "imavatar", "nerface", "insta", "kinect"] = "auto"
    """Layout; detected from the files when 'auto'."""
    flame_path: Optional[Path] = None
    """FLAME generic_model.pkl, for layouts whose missing parameters are recovered from tracked meshes; else
    $HEADSTUDIO_FLAME, else flame/generic_model.pkl inside the subject."""
    test_sequences: Tuple[str, ...] = ()
    """IMavatar/Kinect: sub-sequences held out for testing (as the dataparser's --test-sequences)."""
    nerface_camera_depth: float = 1.0
    """NerFace: the real mean camera depth in metres (as the dataparser's option)."""
    kinect_intrinsics: Optional[Path] = None
    """MonoNPHM: kinect_intrinsics.txt (as the dataparser's option)."""

    def main(self) -> int:
        try:
            subject, problems = read_subject(
                self.path, self.format, Problems(), self.test_sequences, nerface_camera_depth=self.nerface_camera_depth,
                kinect_intrinsics=self.kinect_intrinsics,
            )  # fmt: skip
        except DataError as exc:
            print(f"hs-check-data: error: {exc}", file=sys.stderr)
            return 2
        console.print(f"{self.path}: {subject.layout} layout, {len(subject.frames)} frames", soft_wrap=True, highlight=False)
        if subject.frames and not problems.items:
            try:
                flame_path = resolve_flame_path(self.flame_path, self.path) if subject.recover else None
            except FlameFileError as exc:
                problems.add(self.path, str(exc).removeprefix(f"{self.path}: "))
                flame_path = None
            with progress_bar() as bar:
                written, recovery = complete_subject(subject, problems, flame_path, stepper(bar))
            if written:
                console.print(f"derived {written} mask(s) into {subject.cache / 'masks'}", highlight=False, soft_wrap=True)
            if recovery is not None:
                console.print(recovery.summary(), highlight=False, soft_wrap=True)
        for note in subject.notes:
            console.print(f"  {note}", highlight=False, soft_wrap=True)
        if not subject.flame_tracked:
            console.print(
                f"[yellow]not FLAME-tracked:[/yellow] {subject.flame_missing}; headstudio's methods refuse this subject",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
        if subject.split_rule:
            console.print(f"splits: {subject.split_rule}", highlight=False, soft_wrap=True)
        if subject.frames:
            for table in summary_tables(subject):
                console.print(table)
        if problems.items:
            console.print(f"[bold red]{len(problems)} problem(s):[/bold red]")
            for item in problems.items:
                console.print(f"  - {item}", highlight=False, soft_wrap=True)
            return 1
        console.print("[green]no problems found[/green]")
        return 0


def entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    """The console script; ``argv`` (default: the command line's arguments) lets tests run it in-process."""
    sys.exit(tyro.cli(CheckData, description=__doc__, args=argv).main())


if __name__ == "__main__":
    entrypoint()
