"""hs-render: videos of a trained head avatar (every method).

    hs-render self      --load-config outputs/.../config.yml [--frames a:b] [--output self.mp4]
    hs-render cross     --load-config outputs/.../config.yml --driver OTHER_SUBJECT [--output cross.mp4]
    hs-render turntable --load-config outputs/.../config.yml [--frame N] [--degrees 360] [--output turntable.mp4]

- **self**: self-reenactment. Each frame (default: the test split) is rendered from its own camera with
  its own tracked expression, jaw, neck and eyes: ground truth | render, side by side. Frames without
  codes of their own (test frames) use the first training frame's, as ``ns-eval``'s dagger metrics.
- **cross**: cross-reenactment. Another subject's tracking (a subject folder in any layout the
  dataparser reads, or its IMavatar ``flame_params.json``) drives this avatar, rendered from the
  avatar's first training camera: driver | render. Expressions and jaw opening are transferred as
  offsets from each subject's neutral frame (its tracked frame with the smallest expression and jaw
  norm, or ``--neutral-frame`` / ``--driver-neutral-frame``), added to this avatar's neutral; neck and
  eye rotations are taken as they are. A driver with another number of expression coefficients is
  padded or cut, with a warning naming both sizes.
- **turntable**: one frame's state (``--frame``, default the first training frame) seen by a camera
  circling the head about the vertical axis through the head's centre.

``--frames a:b`` is a Python slice of the sequence's frame indices (self: the subject's; cross: the
driver's), ``--resolution`` the output height in pixels, ``--fps`` the frame rate (default: the
subject's). MP4 (mediapy, or PyAV without an ``ffmpeg`` executable) or GIF, written to a temporary file
and renamed when complete.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from headstudio.data.errors import DataError
from headstudio.utils.video import write_video
from headstudio.viewer.drive import JAW, transfer_expression

console = Console()


def parse_slice(text: Optional[str], items: List[int], flag: str = "--frames") -> List[int]:
    """``a:b`` (either side optional; ``a:b:s`` with a step) of ``items``, or all; empty or out of range: an error."""
    if not text:
        return list(items)
    parts = text.split(":")
    try:
        if len(parts) == 1:
            value = int(parts[0])
            chosen = [value] if value in items else []
        elif len(parts) in (2, 3):
            a, b, *s = [int(p) if p.strip() else None for p in parts]
            step = s[0] if s else None
            if step is not None and step <= 0:
                raise ValueError
            chosen = [f for f in items if (a is None or f >= a) and (b is None or f < b)][:: step or 1]
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a:b (frame indices, b excluded), a:b:step or one index") from None
    if not chosen:
        raise ValueError(f"{flag} {text!r}: no frame in range; the sequence has frames {items[0]}..{items[-1]}")
    return chosen


def neutral_frame(expression: torch.Tensor, pose: torch.Tensor) -> int:
    """The most neutral tracked frame: the smallest norm of expression coefficients and jaw pose."""
    return int(torch.argmin(torch.cat([expression, pose[:, JAW]], dim=1).norm(dim=1)))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


@dataclass
class _Common:
    load_config: Path
    """config.yml of a trained run (any headstudio method)."""
    output: Optional[Path] = None
    """Video file (.mp4 or .gif); default: renders/<kind>.mp4 beside the config."""
    resolution: Optional[int] = None
    """Output height in pixels (default: the cameras' own)."""
    fps: Optional[float] = None
    """Frames per second (default: the subject's frame rate)."""

    kind = "render"

    def setup(self):
        from nerfstudio.utils.eval_utils import eval_setup

        _, pipeline, _, _ = eval_setup(self.load_config, test_mode="test")
        pipeline.model.eval()
        return pipeline

    def out_path(self) -> Path:
        return self.output or self.load_config.parent / "renders" / f"{self.kind}.mp4"

    def scaled(self, camera):
        camera = copy.deepcopy(camera)
        if self.resolution:
            camera.rescale_output_resolution(self.resolution / float(camera.height.reshape(-1)[0]))
        return camera

    def render(self, model, camera) -> np.ndarray:
        with torch.no_grad():
            return to_uint8(model.get_outputs_for_camera(camera.to(model.device))["rgb"])

    def frame_rate(self, pipeline) -> float:
        meta = pipeline.datamanager.train_dataparser_outputs.metadata
        return float(self.fps or meta.get("frame_rate", 25.0))

    def write(self, frames: List[np.ndarray], fps: float) -> None:
        path = self.out_path()
        writer = write_video(path, frames, fps)
        h, w = frames[0].shape[:2]
        console.print(f"{path}: {len(frames)} frames, {w}x{h}, {fps:g} fps ({writer})", soft_wrap=True)

    @staticmethod
    def progress() -> Progress:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        return Progress(*columns, console=console)

    def first_camera(self, pipeline):
        """The avatar's first training camera, without a frame (the subject's fixed frame decides)."""
        dataset = pipeline.datamanager.train_dataset
        frames = dataset.cameras.metadata["frame_index"].reshape(-1).tolist()
        camera = copy.deepcopy(dataset.cameras[frames.index(min(frames)) : frames.index(min(frames)) + 1])
        camera.metadata = None
        return self.scaled(camera)


@dataclass
class SelfReenactment(_Common):
    """Ground truth | render of each frame from its own camera."""

    frames: Optional[str] = None
    """Frame indices a:b (b excluded) among the frames with images in the loaded splits (training and test;
    IMavatar's protocol keeps every ``--test-every``-th test frame); default: the test split."""

    kind = "self"

    def main(self) -> None:
        pipeline = self.setup()
        model = pipeline.model
        where = {}
        for dataset in (pipeline.datamanager.train_dataset, pipeline.datamanager.eval_dataset):
            for k, f in enumerate(dataset.cameras.metadata["frame_index"].reshape(-1).tolist()):
                where.setdefault(int(f), (dataset, k))
        split = pipeline.datamanager.train_dataparser_outputs.metadata["frame_table"]["split"]
        default = sorted(int(f) for f in split.get("test", [])) or sorted(where)
        chosen = parse_slice(self.frames, sorted(where)) if self.frames else [f for f in default if f in where]
        out: List[np.ndarray] = []
        with self.progress() as progress:
            task = progress.add_task("self-reenactment", total=len(chosen))
            for frame in chosen:
                dataset, k = where[frame]
                camera = self.scaled(dataset.cameras[k : k + 1])
                render = self.render(model, camera)
                truth = fit_height(to_uint8(dataset[k]["image"][..., :3]), render.shape[0])
                out.append(np.concatenate([truth, render], axis=1))
                progress.advance(task)
        self.write(out, self.frame_rate(pipeline))


def read_driver(path: Path) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """A driver's per-frame FLAME expression and pose (head pose folded into its cameras), and frame indices."""
    from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig

    folder = path.parent if path.is_file() else path
    if not folder.exists():
        raise DataError(f"{path}: no such driver (a subject folder, or its flame_params.json)")
    parser = FlameVideoDataParserConfig(data=folder, one_line_errors=False).setup()
    subject = parser.load_subject()[0]
    if not subject.flame_tracked:
        raise DataError(f"{folder}: {subject.layout} layout without FLAME parameters: {subject.flame_missing}")
    pose = torch.as_tensor(parser.load_subject()[4], dtype=torch.float32)
    expression = torch.as_tensor(np.stack([f.expression for f in subject.frames]), dtype=torch.float32)
    return expression, pose, list(range(len(subject.frames)))


@dataclass
class CrossReenactment(_Common):
    """Another subject's expressions, jaw, neck and eyes driving this avatar: driver | render."""

    driver: Optional[Path] = None
    """The driving subject (required): a folder in any layout the dataparser reads (or its flame_params.json)."""
    frames: Optional[str] = None
    """The driver's frame indices a:b (b excluded; default: all)."""
    neutral_frame: Optional[int] = None
    """This avatar's neutral frame (default: its most neutral tracked frame)."""
    driver_neutral_frame: Optional[int] = None
    """The driver's neutral frame (default: its most neutral tracked frame)."""
    show_driver: bool = True
    """Put the driver's own image beside the render, where its frames have images."""

    kind = "cross"

    def main(self) -> None:
        if self.driver is None:
            raise ValueError("--driver is required: the subject folder (or flame_params.json) whose tracking drives the avatar")
        expression, pose, frames = read_driver(self.driver)
        chosen = parse_slice(self.frames, frames)
        pipeline = self.setup()
        model, subject = pipeline.model, pipeline.model.subject
        n = subject.num_frames
        own_e, own_p = subject.track.expression[:n].cpu(), subject.track.pose[:n].cpu()
        for value, count, flag in ((self.neutral_frame, n, "--neutral-frame"),
                                   (self.driver_neutral_frame, len(frames), "--driver-neutral-frame")):  # fmt: skip
            if value is not None and not 0 <= value < count:
                raise ValueError(f"{flag} {value}: the sequence has frames 0..{count - 1}")
        target = self.neutral_frame if self.neutral_frame is not None else neutral_frame(own_e, own_p)
        source = self.driver_neutral_frame if self.driver_neutral_frame is not None else neutral_frame(expression, pose)
        moved, warning = transfer_expression(expression, expression[source], own_e[target])
        if warning:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        driven_pose = pose.clone()
        driven_pose[:, :3] = own_p[target, :3]  # the avatar's own global pose (its camera carries the head pose)
        driven_pose[:, JAW] = pose[:, JAW] - pose[source, JAW] + own_p[target, JAW]
        camera = self.first_camera(pipeline)
        images = self._driver_images(chosen) if self.show_driver else {}
        out: List[np.ndarray] = []
        try:
            with self.progress() as progress:
                task = progress.add_task("cross-reenactment", total=len(chosen))
                for f in chosen:
                    subject.fixed_frame = subject.drive_to(moved[f], driven_pose[f])
                    render = self.render(model, camera)
                    if f in images:
                        render = np.concatenate([fit_height(images[f], render.shape[0]), render], axis=1)
                    out.append(render)
                    progress.advance(task)
        finally:
            subject.fixed_frame = None
        self.write(out, self.frame_rate(pipeline))

    def _driver_images(self, frames: List[int]) -> dict:
        from PIL import Image

        from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig

        folder = self.driver.parent if self.driver.is_file() else self.driver
        subject = FlameVideoDataParserConfig(data=folder, one_line_errors=False).setup().load_subject()[0]
        out = {}
        for f in frames:
            image = subject.frames[f].image
            if image is not None and Path(image).exists():
                out[f] = np.asarray(Image.open(image).convert("RGB"))
        return out


@dataclass
class Turntable(_Common):
    """One frame's state seen by a camera circling the head."""

    frame: Optional[int] = None
    """The frame whose expression and pose are shown (default: the first training frame)."""
    num_views: int = 60
    """Views along the circle."""
    degrees: float = 360.0
    """Arc of the circle (360: a full turn; less: a sweep from -degrees/2 to +degrees/2 and back)."""

    kind = "turntable"

    def main(self) -> None:
        pipeline = self.setup()
        model, subject = pipeline.model, pipeline.model.subject
        frame = subject.default_frame if self.frame is None else self.frame
        if not 0 <= frame < subject.num_frames:
            raise ValueError(f"--frame {frame}: the subject has frames 0..{subject.num_frames - 1}")
        if self.num_views < 2:
            raise ValueError(f"--num-views {self.num_views}: at least 2")
        camera = self.first_camera(pipeline)
        centre = subject.track.vertices[frame].mean(0).cpu().double()
        base = camera.camera_to_worlds[0].double()
        if self.degrees >= 360.0:
            angles = [2 * math.pi * k / self.num_views for k in range(self.num_views)]
        else:
            half = math.radians(self.degrees) / 2
            sweep = [-half + 2 * half * k / (self.num_views // 2) for k in range(self.num_views // 2 + 1)]
            angles = sweep + sweep[-2:0:-1]
        out: List[np.ndarray] = []
        subject.fixed_frame = frame
        try:
            with self.progress() as progress:
                task = progress.add_task(f"turntable of frame {frame}", total=len(angles))
                for a in angles:
                    c, s = math.cos(a), math.sin(a)
                    rot = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)
                    view = copy.deepcopy(camera)
                    c2w = base.clone()
                    c2w[:3, :3] = rot @ base[:3, :3]
                    c2w[:3, 3] = rot @ (base[:3, 3] - centre) + centre
                    view.camera_to_worlds = c2w[None].float()
                    out.append(self.render(model, view))
                    progress.advance(task)
        finally:
            subject.fixed_frame = None
        self.write(out, float(self.fps or 25.0))


SUBCOMMANDS = {"self": SelfReenactment, "cross": CrossReenactment, "turntable": Turntable}


def entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    """The console script; ``argv`` (default: the command line's arguments) lets tests run it in-process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            console.print(__doc__)
            return
        console.print(f"[bold red]error:[/bold red] usage: hs-render {{{'|'.join(SUBCOMMANDS)}}} --load-config CONFIG ... (see --help)")
        sys.exit(2)
    args = tyro.cli(SUBCOMMANDS[argv[0]], args=argv[1:], prog=f"hs-render {argv[0]}", description=__doc__)
    try:
        args.main()
    except (ValueError, FileNotFoundError, DataError) as exc:
        console.print(f"[bold red]error:[/bold red] {' '.join(str(exc).split())}")
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
