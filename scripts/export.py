"""hs-export: meshes of a trained head at chosen frames.

    hs-export mesh --load-config outputs/.../config.yml --frames 0,10,20 [--output-dir DIR]

Volumetric methods (tensorf-local-deform, rignerf-star): for each frame the density field
is deformed into that frame's state (expression, jaw, neck, latent codes) and meshed by
marching cubes inside the scene box; mononphm-track's posed SDF is meshed at its zero level in each frame the
same way. Surface methods with a forward map (imavatar-surface):
the canonical surface is meshed once (``canonical.ply``) and its vertices are moved by the
learned blendshapes and skinning into each frame, or into explicit ``--expression`` /
``--pose`` vectors. One PLY per mesh, written atomically. Each mesh keeps the head: its
largest connected component and those at least ``--min-component-fraction`` of its size; the
floaters are dropped and counted (``--keep-all-components`` keeps everything). What a model
can export it declares in ``HeadModel.export_kind``.

(``ns-export tsdf|poisson`` also work on headstudio models; ``HEADSTUDIO_FRAME=N`` makes every
training camera render the head in frame N.)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from headstudio.export.frame_mesh import DENSITY_LEVEL, FrameMesher
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
    level: float = DENSITY_LEVEL
    """Density level of the surface (world units; 25 = TensoRF's distance scale x feature 1).
    Surface methods mesh their SDF's zero level and ignore this."""
    expression: Optional[str] = None
    """Surface methods: comma-separated FLAME expression coefficients (missing ones 0) instead of --frames."""
    pose: Optional[str] = None
    """Surface methods: comma-separated FLAME pose (global, neck, jaw, eyes axis-angle; up to 15; missing 0)."""
    keep_all_components: bool = False
    """Keep every connected component (default: the head's components only, floaters dropped)."""
    min_component_fraction: float = 0.05
    """Components with at least this fraction of the largest one's faces are part of the head."""

    def main(self) -> None:
        from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, _, _ = eval_setup(self.load_config, test_mode="test")
        model = pipeline.model
        kind = getattr(model, "export_kind", None)
        if kind not in ("density", "sdf", "surface"):
            raise ValueError(f"{self.load_config}: {type(model).__name__} declares no mesh export (export_kind)")
        if kind != "surface" and (self.expression is not None or self.pose is not None):
            raise ValueError(f"--expression/--pose need a method with a forward map; {type(model).__name__} has none")
        out_dir = self.output_dir or self.load_config.parent / "meshes"
        mesher = FrameMesher(model, self.resolution, self.level, self.keep_all_components, self.min_component_fraction)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            mesher.progress = lambda n: progress.advance(task, n)
            if kind == "surface":
                task = progress.add_task("canonical SDF", total=self.resolution**3)
                verts, faces = mesher.canonical()
                self.report(mesher)
                write_ply(out_dir / "canonical.ply", verts, faces)
                console.print(f"{out_dir / 'canonical.ply'}: {len(verts)} vertices, {len(faces)} faces")
                if self.expression is not None or self.pose is not None:
                    expr = parse_vector(self.expression, model.subject.num_expression, "--expression")
                    pose = parse_vector(self.pose, 15, "--pose")
                    canonical = torch.from_numpy(verts).to(model.device)
                    moved = model.deform_vertices(canonical, expression=expr.to(model.device), pose=pose.to(model.device))
                    path = out_dir / "explicit.ply"
                    write_ply(path, moved.detach().cpu().numpy(), faces)
                    console.print(f"{path}: {len(verts)} vertices, {len(faces)} faces")
                    return
            frames = parse_frames(self.frames, model.subject.num_frames)
            task = progress.add_task("mesh", total=len(frames) * mesher.lattice_points or len(frames))
            for frame in frames:
                progress.update(task, description=f"frame {frame}")
                verts, faces = mesher(frame)
                if kind == "surface":
                    progress.advance(task, 1)
                else:
                    self.report(mesher)
                path = out_dir / f"frame_{frame:05d}.ply"
                write_ply(path, verts, faces)
                console.print(f"{path}: {len(verts)} vertices, {len(faces)} faces")

    def report(self, mesher: FrameMesher) -> None:
        if mesher.reports:
            console.print(mesher.reports[-1].describe())


def parse_vector(text: Optional[str], size: int, flag: str) -> torch.Tensor:
    """Comma-separated floats, zero-padded to ``size``."""
    values = torch.zeros(size)
    if text:
        try:
            parts = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{flag} {text!r}: expected comma-separated numbers") from None
        if len(parts) > size:
            raise ValueError(f"{flag} {text!r}: at most {size} values")
        values[: len(parts)] = torch.tensor(parts)
    return values


SUBCOMMANDS = {"mesh": Mesh}


def entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    """The console script; ``argv`` (default: the command line's arguments) lets tests run it in-process."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
