"""hs-track: a person's own video (or folder of frames) to a FLAME-tracked subject in the IMavatar layout, offline.

    hs-track VIDEO_OR_FRAME_FOLDER OUT [--flame-path generic_model.pkl] [--size 512] [--fps 25]

Steps: the frames; mediapipe's face mesh on each (the largest face; its models are in its wheel); one square
crop around the face for the clip, resized to --size; the foreground (selfie segmentation joined with the
face hull) and face-region masks; FLAME fitted to the 68 iBUG landmarks and the irises of all frames at
once (headstudio.track.fit); OUT/<name>/{train,test}/ as IMavatar's tools write it (test: the last
--test-fraction of the clip), a report (report.json: per-frame landmark error, frames without a face,
frames with several faces) and overlay.mp4 (detected landmarks green, fitted FLAME landmarks red).

The FLAME model: --flame-path, else $HEADSTUDIO_FLAME, else headstudio's procedural FLAME-format model
(then the result is tracked with headstudio's stand-in, not FLAME, and the model is written into OUT/flame/).
Install: pip install -e ".[track]" && pip install --no-deps mediapipe==0.10.9
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional, Sequence

import numpy as np
import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from headstudio.data.errors import DataError

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)  # fmt: skip


@dataclass
class Track:
    """Track a video of a person's head with FLAME and write the IMavatar layout."""

    source: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="VIDEO_OR_FOLDER")]
    """A video file (anything PyAV reads) or a folder of images (natural name order)."""
    output: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUT")]
    """The subject folder to write; must not exist."""
    flame_path: Optional[Path] = None
    """FLAME generic_model.pkl (landmark_embedding_with_eyes.npy beside it gives the irises); else $HEADSTUDIO_FLAME; else headstudio's procedural FLAME-format model."""
    size: int = 512
    """Side of the square crop in pixels (IMavatar's preprocessing: 512)."""
    fps: Optional[float] = None
    """Keep about this many frames per second of a video (default: every frame); for a folder, its rate."""
    max_frames: Optional[int] = None
    """Read at most this many frames."""
    test_fraction: float = 0.2
    """The last part of the clip, by time, that becomes the test sequence."""
    margin: float = 0.6
    """The crop reaches this fraction of the landmarks' extent beyond it on each side (hair, ears, neck)."""
    focal: float = 3.0
    """Initial focal length over the crop size (IMavatar's preprocessing example: about 3.0, a 19° field of view); fitted."""
    rigid_steps: int = 150
    """Adam steps on the head pose alone."""
    full_steps: int = 400
    """Adam steps on everything."""

    def main(self) -> None:
        from headstudio.track.fit import LandmarkFitConfig, fit_flame_to_landmarks
        from headstudio.track.frames import face_crop, read_clip
        from headstudio.track.landmarks import MediapipeDetector
        from headstudio.track.masks import Foreground, face_region

        out = Path(self.output)
        if out.exists():
            raise DataError(f"{out}: already exists; choose another output folder or remove it")
        if not 0.0 < self.test_fraction < 1.0:
            raise DataError(f"--test-fraction {self.test_fraction}: must lie between 0 and 1")
        started = time.monotonic()
        clip = read_clip(self.source, fps=self.fps, max_frames=self.max_frames)
        count = len(clip.frames)
        num_test = max(1, round(count * self.test_fraction))
        if count - num_test < 1:
            raise DataError(f"{self.source}: {count} frame(s), but train and test need at least one each")
        flame, flame_note, procedural = _flame(self.flame_path)
        console.print(f"{clip.source}: {count} frames at {clip.fps:g} fps; {flame_note}", soft_wrap=True)

        detector = MediapipeDetector()
        detections = []
        with _progress() as bar:
            task = bar.add_task("landmarks", total=count)
            for rgb in clip.frames:
                detections.append(detector(rgb))
                bar.advance(task)
        detector.close()
        missing = [i for i, d in enumerate(detections) if d is None]
        if len(missing) == count:
            raise DataError(f"{self.source}: mediapipe found no face in any of the {count} frames")
        several = [i for i, d in enumerate(detections) if d is not None and d.faces_found > 1]
        crop = face_crop([d.mesh for d in detections if d is not None], self.size, self.margin)
        images = [crop.apply(rgb) for rgb in clip.frames]
        mesh = [crop.points(d.mesh) if d is not None else None for d in detections]
        nan = np.full((68, 2), np.nan)
        ibug = np.stack([crop.points(d.ibug68) if d is not None else nan for d in detections])
        iris = np.stack([crop.points(d.iris) if d is not None else nan[:2] for d in detections])

        segment = Foreground()
        masks = []
        with _progress() as bar:
            task = bar.add_task("masks", total=count)
            for img, m in zip(images, mesh):
                fg = segment(img, m)
                face = face_region(m, img.shape[:2]) if m is not None else np.zeros(img.shape[:2], bool)
                masks.append((fg, face))
                bar.advance(task)
        segment.close()

        cfg = LandmarkFitConfig(rigid_steps=self.rigid_steps, full_steps=self.full_steps)
        with _progress() as bar:
            task = bar.add_task("FLAME fit", total=cfg.rigid_steps + cfg.full_steps)
            fit = fit_flame_to_landmarks(
                flame, torch.from_numpy(ibug).float(), (self.size, self.size), self.focal * self.size,
                iris_px=torch.from_numpy(iris).float() if flame.has_iris else None, config=cfg,
                progress=lambda done, total, loss: bar.update(task, completed=done),
            )  # fmt: skip

        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
        try:
            from headstudio.track.imavatar_writer import write_sequence
            from headstudio.utils.video import write_video

            inner = tmp / out.name
            split = count - num_test
            detected = [np.concatenate([ibug[i], iris[i]]) if detections[i] is not None else None for i in range(count)]
            write_sequence(inner / "train", list(range(split)), images, masks, fit, detected, self.size)
            write_sequence(inner / "test", list(range(split, count)), images, masks, fit, detected, self.size)
            if procedural:
                from headstudio.flame.procedural import write_procedural_flame

                write_procedural_flame(tmp / "flame" / "generic_model.pkl", seed=0)
            overlay = [_overlay(images[i], ibug[i], fit.landmarks_px[i].numpy()) for i in range(count)]
            write_video(tmp / "overlay.mp4", overlay, clip.fps)
            errors = [None if not np.isfinite(e) else round(float(e), 3) for e in fit.error_px.tolist()]
            report = {
                "source": str(clip.source), "frames": count, "fps": clip.fps, "flame": flame_note,
                "crop": {"x0": crop.x0, "y0": crop.y0, "side": crop.side, "size": crop.size},
                "splits": {"train": [0, split - 1], "test": [split, count - 1]},
                "frames_without_face": missing, "frames_with_several_faces": several,
                "landmark_error_px": errors,
                "mean_landmark_error_px": float(np.nanmean(fit.error_px.numpy())),
                "focal_px": fit.focal, "seconds": round(time.monotonic() - started, 1),
                "note": ("frames without a face are bridged by the fit's smoothness between their neighbours; "
                         "frames with several faces use the largest"),
            }  # fmt: skip
            (tmp / "report.json").write_text(json.dumps(report, indent=1))
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        console.print(
            f"wrote {out}: {split} train + {num_test} test frames at {self.size} px; landmark error "
            f"{report['mean_landmark_error_px']:.2f} px mean; {len(missing)} frame(s) without a face; "
            f"{report['seconds']:.0f} s ({count / report['seconds']:.2f} frames/s)",
            soft_wrap=True,
        )


def _flame(path: Optional[Path]):
    """(model, what it is, whether it is headstudio's procedural stand-in)."""
    from headstudio.flame.files import FLAME_ENV
    from headstudio.flame.model import FlameModel
    from headstudio.flame.procedural import write_procedural_flame

    chosen = path or (Path(os.environ[FLAME_ENV]) if os.environ.get(FLAME_ENV) else None)
    procedural = chosen is None
    if procedural:
        folder = Path(tempfile.mkdtemp(prefix="hs-track-flame-"))
        chosen = folder / "generic_model.pkl"
        write_procedural_flame(chosen, seed=0)
        note = "FLAME: headstudio's procedural FLAME-format model (a stand-in, not FLAME: pass --flame-path)"
    else:
        if not Path(chosen).exists():
            raise DataError(f"{chosen}: no such FLAME model file")
        note = f"FLAME: {chosen}"
    with_eyes = Path(chosen).with_name("landmark_embedding_with_eyes.npy")
    model = FlameModel.from_file(chosen, landmark_path=with_eyes if with_eyes.exists() else None)
    if procedural:
        shutil.rmtree(Path(chosen).parent, ignore_errors=True)
    return model, note, procedural


def _overlay(rgb: np.ndarray, detected: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    import cv2

    img = rgb.copy()
    for pts, colour in ((detected, (0, 200, 0)), (fitted, (230, 30, 30))):
        for x, y in pts:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(img, (int(round(x)), int(round(y))), 2, colour, -1, lineType=cv2.LINE_AA)
    return img


def entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    """The console script; ``argv`` (default: the command line's arguments) lets tests run it in-process."""
    cmd = tyro.cli(Track, description=__doc__, args=argv)
    try:
        cmd.main()
    except (DataError, ValueError, OSError, ImportError) as exc:
        console.print(f"[bold red]hs-track: error:[/bold red] {str(exc).splitlines()[0]}", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
