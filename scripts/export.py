"""hs-export: meshes of a trained head at chosen frames.

    hs-export mesh --load-config outputs/.../config.yml --frames 0,10,20 [--output-dir DIR]

For each frame the density field is deformed into that frame's state (expression, jaw,
neck, latent codes) and meshed by marching cubes inside the scene box; one PLY per frame,
written atomically. (``ns-export tsdf|poisson`` also work on headstudio models: they render
the head in one frame, ``HEADSTUDIO_FRAME``, default the first training frame.)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from headstudio.export.density_mesh import density_grid, mesh_from_grid
from headstudio.export.ply import write_ply

console = Console()


def parse_frames(text: str, num_frames: int) -> list[int]:
    """``"0,10,20"`` or ``"0-30:10"`` (start-stop:step, stop inclusive) to checked frame indices."""
    frames: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part:
                rng, _, step = part.partition(":")
                a, b = (int(v) for v in rng.split("-"))
                frames.extend(range(a, b + 1, int(step or 1)))
            else:
                frames.append(int(part))
    except ValueError:
        raise ValueError(f"--frames {text!r}: expected comma-separated integers or ranges like 0-30:10") from None
    bad = [f for f in frames if not 0 <= f < num_frames]
    if bad or not frames:
        raise ValueError(f"--frames {text!r}: the subject has frames 0..{num_frames - 1}")
    return frames


@dataclass
class Mesh:
    """Per-frame meshes from the deformed density field (tensorf-local-deform, rignerf-star)."""

    load_config: Path
    """config.yml of a trained run."""
    frames: str = "0"
    """Frame indices (global, as in the dataparser's frame table): '0,10,20' or '0-90:10'."""
    output_dir: Optional[Path] = None
    """Folder for frame_NNNNN.ply (default: meshes/ beside the config)."""
    resolution: int = 256
    """Marching-cubes lattice resolution over the scene box."""
    level: float = 25.0
    """Density level of the surface (world units; 25 = TensoRF's distance scale x feature 1)."""

    def main(self) -> None:
        from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, _, _ = eval_setup(self.load_config, test_mode="test")
        model = pipeline.model
        if not hasattr(model, "observed_density"):
            raise ValueError(f"{self.load_config}: {type(model).__name__} has no density field to mesh")
        frames = parse_frames(self.frames, model.subject.num_frames)
        out_dir = self.output_dir or self.load_config.parent / "meshes"
        aabb = model.scene_box.aabb.to(model.device)
        total = len(frames) * self.resolution**3
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("density", total=total)
            for frame in frames:
                progress.update(task, description=f"frame {frame}")
                values = density_grid(
                    lambda x: model.observed_density(x, frame),
                    aabb,
                    self.resolution,
                    progress=lambda n: progress.advance(task, n),
                )
                verts, faces = mesh_from_grid(values, aabb, self.level)
                path = out_dir / f"frame_{frame:05d}.ply"
                write_ply(path, verts, faces)
                console.print(f"{path}: {len(verts)} vertices, {len(faces)} faces")


SUBCOMMANDS = {"mesh": Mesh}


def entrypoint() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] not in SUBCOMMANDS:
        names = "|".join(SUBCOMMANDS)
        if argv and argv[0] in ("-h", "--help"):
            console.print(__doc__)
            return
        console.print(f"[bold red]error:[/bold red] usage: hs-export {{{names}}} --load-config CONFIG ... (see --help)")
        sys.exit(2)
    args = tyro.cli(SUBCOMMANDS[argv[0]], args=argv[1:], prog=f"hs-export {argv[0]}", description=__doc__)
    try:
        with torch.no_grad():
            args.main()
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
