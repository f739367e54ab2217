"""hs-prior: train and inspect MonoNPHM's neural parametric head prior (Giebenhain et al. 2024).

    hs-prior train --scans SCANS --output prior.ckpt [--preset cpu|paper] [--epochs N] [--resume]
    hs-prior mesh --prior prior.ckpt --output head.ply [--identity K] [--expression J | --z-exp FILE]
    hs-prior fit --prior prior.ckpt --scan SCANS/scans/id007_ex03.npz

``train`` runs the auto-decoder on a scan set (``hs-synth scans``) with a progress bar and
tensorboard scalars, writing a checkpoint that loads with ``torch.load(weights_only=True)``
and resumes. ``mesh`` marches the posed SDF of a trained identity and expression. ``fit``
fits new codes to a held-out scan with the networks frozen and prints the L1-Chamfer (FLAME
millimetres) and normal consistency of the marched mesh against the scan.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Sequence, Tuple

import numpy as np
import torch
import tyro
from rich.console import Console
from rich.progress import Progress, TextColumn

from headstudio.data.errors import DataError
from headstudio.prior.training import PriorTrainConfig
from headstudio.utils.progress import progress_bar

console = Console(stderr=True)


def _bar() -> Progress:
    """headstudio's progress bar with a loss column."""
    bar = progress_bar()
    bar.columns = (*bar.columns, TextColumn("{task.fields[info]}"))
    return bar


@dataclass
class Train:
    """Train the prior on a scan set."""

    scans: Path
    """Scan set folder (``hs-synth scans`` or a converted one)."""
    output: Path
    """Checkpoint to write (and to resume from with --resume)."""
    config: Annotated[PriorTrainConfig, tyro.conf.arg(name="")] = field(default_factory=PriorTrainConfig)
    resume: bool = False
    """Continue from --output if it exists."""
    log_dir: Optional[Path] = None
    """Tensorboard folder (default: beside --output)."""
    save_every: int = 50
    """Epochs between checkpoints."""
    hold_out_expressions: Tuple[int, ...] = ()
    """Expression indices left out of training (kept for evaluating held-out expressions)."""

    def main(self) -> None:
        import dataclasses

        from headstudio.data.scans import open_scan_set
        from headstudio.prior.training import train_prior

        scans = open_scan_set(self.scans)
        if self.hold_out_expressions:
            kept = [s for s in scans.scans if s.expression_index not in self.hold_out_expressions]
            if not kept:
                raise DataError(f"{self.scans}: --hold-out-expressions {self.hold_out_expressions} leaves no scan to train on")
            scans = dataclasses.replace(scans, scans=kept)
        log_dir = self.log_dir or self.output.with_suffix(".tb")
        with _bar() as bar:
            task = bar.add_task("training the prior", total=self.config.epochs, info="")

            def progress(epoch: int, total: int, losses: dict) -> None:
                bar.update(task, completed=epoch, info=f"loss {losses.get('total', float('nan')):.4f}")

            result = train_prior(scans, self.config, self.output, self.resume, progress=progress, log_dir=log_dir, save_every=self.save_every)
        console.print(f"wrote {self.output}: {result['epochs']} epochs in {result['seconds']:.0f} s; final losses " +
                      ", ".join(f"{k} {v:.4g}" for k, v in result["losses"].items()))  # fmt: skip


@dataclass
class Mesh:
    """Write the posed mesh of a trained identity and expression."""

    prior: Path
    output: Path
    """PLY to write."""
    identity: int = 0
    """Trained identity (index into the set's identities)."""
    expression: Optional[int] = None
    """Trained scan whose expression code to use (default: the identity's first scan)."""
    z_exp: Optional[Path] = None
    """A .npy expression code instead of a trained one."""
    resolution: int = 128
    """Marching-cubes lattice size."""

    def main(self) -> None:
        from headstudio.export.ply import write_ply
        from headstudio.prior.inspect import posed_mesh
        from headstudio.prior.training import load_checkpoint

        model, ck = load_checkpoint(self.prior)
        n_id, n_scan = model.z_geo.num_embeddings, model.z_exp.num_embeddings
        if not 0 <= self.identity < n_id:
            raise DataError(f"{self.prior}: --identity {self.identity} is out of range (the prior has {n_id} identities)")
        scan = self.expression if self.expression is not None else 0
        if not 0 <= scan < n_scan:
            raise DataError(f"{self.prior}: --expression {scan} is out of range (the prior has {n_scan} scans)")
        codes = model.codes(torch.tensor([self.identity]), torch.tensor([scan]))
        if self.z_exp is not None:
            z = np.load(self.z_exp, allow_pickle=False).astype(np.float32).reshape(1, -1)
            if z.shape[1] != codes["exp"].shape[1]:
                raise DataError(f"{self.z_exp}: has {z.shape[1]} values, the prior's expression codes have {codes['exp'].shape[1]}")
            codes["exp"] = torch.as_tensor(z)
        codes = {k: v.detach() for k, v in codes.items()}
        total = self.resolution**3
        with _bar() as bar:
            task = bar.add_task("marching cubes", total=total, info="")
            verts, faces = posed_mesh(model, codes, self.resolution, progress=lambda n: bar.advance(task, n))
        write_ply(self.output, verts, faces)
        console.print(f"wrote {self.output}: {len(verts)} vertices, {len(faces)} faces")


@dataclass
class Fit:
    """Fit codes to a held-out scan (networks frozen) and measure the surface."""

    prior: Path
    scan: Path
    """A scan .npz of the scan-set format."""
    steps: int = 300
    """Adam steps on the codes."""
    resolution: int = 128
    output: Optional[Path] = None
    """Also write the fitted mesh here (PLY)."""

    def main(self) -> None:
        from headstudio.data.scans import load_scan
        from headstudio.export.ply import write_ply
        from headstudio.flame.constants import WORLD_SCALE
        from headstudio.prior.inspect import fit_scan, posed_mesh
        from headstudio.prior.training import load_checkpoint

        model, _ = load_checkpoint(self.prior)
        scan = load_scan(self.scan)
        with _bar() as bar:
            task = bar.add_task("fitting codes", total=self.steps, info="")
            res = fit_scan(model, scan, self.steps, resolution=self.resolution, progress=lambda s, n: bar.update(task, completed=s))
        d = res.distance
        print(f"{self.scan}: L1-Chamfer {d.chamfer_l1 / WORLD_SCALE * 1000:.2f} mm (FLAME metres), normal consistency "
              f"{d.normal_consistency:.4f}, F-score@2.5mm {d.fscore:.3f}")  # fmt: skip
        if self.output is not None:
            write_ply(self.output, *posed_mesh(model, res.codes, self.resolution))


Commands = (
    Annotated[Train, tyro.conf.subcommand("train")]
    | Annotated[Mesh, tyro.conf.subcommand("mesh")]
    | Annotated[Fit, tyro.conf.subcommand("fit")]
)


def entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    """The console script; ``argv`` (default: the command line's arguments) lets tests run it in-process."""
    cmd = tyro.cli(Commands, description=__doc__, args=argv)
    try:
        cmd.main()
    except (DataError, ValueError, OSError) as exc:
        print(f"hs-prior: error: {exc}".splitlines()[0], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
