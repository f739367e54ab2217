"""hs-track: a person's own video (or folder of frames) to a FLAME-tracked subject in the IMavatar layout, offline.

    hs-track VIDEO_OR_FRAME_FOLDER OUT [--flame-path generic_model.pkl] [--size 512] [--fps 25] [--photometric-steps 100]

Steps: the frames; mediapipe's face mesh on each (the largest face; its models are in its wheel); one square
crop around the face for the clip, resized to --size; the foreground (selfie segmentation joined with the
face hull) and face-region masks; FLAME fitted to all frames at once (headstudio.track.fit) on mediapipe's
face-mesh points through the model's mediapipe landmark embedding (headstudio.track.mediapipe_embedding;
without one, the 68 iBUG points mapped from mediapipe's; an embedding with a detector-bias model, as the shipped one, also models
where mediapipe's points drift with the pose and expression, and the fit adds that drift to its
predictions) and the irises; OUT/<name>/{train,test}/ as
IMavatar's tools write it (test: the last --test-fraction of the clip), a report (report.json: per-frame
landmark error, frames without a face, frames with several faces) and overlay.mp4 (the fitted mesh shaded
over each crop; detected iBUG landmarks green, fitted red). The video is read twice (landmarks, then the
crops), so no pass holds the whole clip in memory.

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
from headstudio.flame.files import FLAME_ENV
from headstudio.utils.video import write_video_stream

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
    mediapipe_embedding: Optional[Path] = None
    """Where mediapipe's face-mesh points lie on the model (FLAME's mediapipe_landmark_embedding.npz layout);
    default: that file beside the model (headstudio's procedural model ships a calibrated one). With it the
    fit uses those points (dense); without, the 68 iBUG points mapped from mediapipe's."""
    photometric_steps: int = 0
    """> 0: after the landmark fit, this many steps of the photometric refinement (the colour under each face
    vertex held constant over the clip: headstudio.track.photometric; 100 measured in bench/track.py). Keeps
    every crop at --photometric-size in memory."""
    photometric_size: int = 256
    """Crop size the photometric term samples (pixels)."""
    detector_bias: bool = True
    """Use the embedding's detector-bias model where it has one (the shipped embedding of headstudio's
    procedural model does; FLAME's own file does not): the fit adds mediapipe's modelled drift with pose and
    expression to the points it predicts."""
    landmark_weight_with_dense: float = 0.0
    """Weight of the 68 mapped iBUG points beside the dense points (they are a subset of the same detections,
    with the mapping table's bias; bench/track.py measures both)."""

    def main(self) -> None:
        from headstudio.track.fit import LandmarkFitConfig, fit_flame_to_landmarks
        from headstudio.track.frames import ClipReader, face_crop
        from headstudio.track.landmarks import MediapipeDetector
        from headstudio.track.masks import Foreground, face_region

        import cv2

        out = Path(self.output)
        if out.exists():
            raise DataError(f"{out}: already exists; choose another output folder or remove it")
        if not 0.0 < self.test_fraction < 1.0:
            raise DataError(f"--test-fraction {self.test_fraction}: must lie between 0 and 1")
        started = time.monotonic()
        reader = ClipReader(self.source, fps=self.fps, max_frames=self.max_frames)
        if reader.count_hint is not None:
            _split(reader.count_hint, self.test_fraction, self.source)
        flame, flame_note, procedural, embedding, embedding_note = _flame(self.flame_path, self.mediapipe_embedding)
        if embedding is not None and embedding.bias is not None:
            embedding_note += (", with its detector-bias model" if self.detector_bias
                               else ", its detector-bias model off (--no-detector-bias)")  # fmt: skip
        console.print(f"{reader.source}: {reader.count_hint or 'unknown number of'} frames at {reader.fps:g} fps; "
                      f"{flame_note}; {embedding_note}", soft_wrap=True)  # fmt: skip

        # Pass 1: landmarks only (the frames are not kept).
        detector = MediapipeDetector()
        detections, frame_size = [], None
        with _progress() as bar:
            task = bar.add_task("landmarks", total=reader.count_hint)
            for rgb in reader.frames():
                frame_size = frame_size or (rgb.shape[1], rgb.shape[0])
                detections.append(detector(rgb))
                bar.advance(task)
        detector.close()
        count = len(detections)
        split, num_test = _split(count, self.test_fraction, self.source)
        missing = [i for i, d in enumerate(detections) if d is None]
        if len(missing) == count:
            raise DataError(f"{self.source}: mediapipe found no face in any of the {count} frames")
        several = [i for i, d in enumerate(detections) if d is not None and d.faces_found > 1]
        crop = face_crop([d.mesh for d in detections if d is not None], self.size, self.margin)
        # The camera's principal point: the source frame's centre (a phone's or webcam's optical axis), which
        # the face crop moves off the crop's centre.
        principal = tuple(float(v) for v in crop.points(np.array([[frame_size[0] / 2, frame_size[1] / 2]]))[0])
        mesh = [crop.points(d.mesh) if d is not None else None for d in detections]
        nan = np.full((478, 2), np.nan)
        ibug = np.stack([crop.points(d.ibug68) if d is not None else nan[:68] for d in detections])
        iris = np.stack([crop.points(d.iris) if d is not None else nan[:2] for d in detections])
        dense = None if embedding is None else np.stack([(m if m is not None else nan)[embedding.indices] for m in mesh])

        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
        try:
            from headstudio.track.imavatar_writer import write_flame_params, write_frame_files

            inner = tmp / out.name
            folders = [(inner / "train", i + 1) if i < split else (inner / "test", i - split + 1) for i in range(count)]
            # Pass 2: crops and masks, written as they come.
            segment = Foreground()
            photo_crops, photo_regions = [], []
            with _progress() as bar:
                task = bar.add_task("crops + masks", total=count)
                written = 0
                for i, rgb in enumerate(reader.frames()):
                    if i >= count:
                        break
                    written += 1
                    img = crop.apply(rgb)
                    fg = segment(img, mesh[i])
                    face = face_region(mesh[i], img.shape[:2]) if mesh[i] is not None else np.zeros(img.shape[:2], bool)
                    write_frame_files(*folders[i], img, fg, face)
                    if self.photometric_steps > 0:
                        side = (min(self.photometric_size, self.size),) * 2
                        photo_crops.append(cv2.resize(img, side, interpolation=cv2.INTER_AREA))
                        photo_regions.append(cv2.resize(face.astype(np.uint8), side,
                                                        interpolation=cv2.INTER_NEAREST) > 0)  # fmt: skip
                    bar.advance(task)
            segment.close()
            if written != count:
                raise DataError(f"{self.source}: the second read gave {written} frames, the first {count}; "
                                "is the file being written to?")  # fmt: skip

            cfg = LandmarkFitConfig(rigid_steps=self.rigid_steps, full_steps=self.full_steps,
                                    landmark_weight=1.0 if embedding is None else self.landmark_weight_with_dense,
                                    photometric_steps=self.photometric_steps, detector_bias=self.detector_bias)  # fmt: skip
            photometric = None
            if self.photometric_steps > 0:
                from headstudio.track.photometric import PhotometricTarget

                photometric = PhotometricTarget.from_crops(photo_crops, photo_regions, self.size,
                                                           size=min(self.photometric_size, self.size))  # fmt: skip
                del photo_crops, photo_regions
            with _progress() as bar:
                task = bar.add_task("FLAME fit", total=cfg.rigid_steps + cfg.full_steps + cfg.photometric_steps)
                fit = fit_flame_to_landmarks(
                    flame, torch.from_numpy(ibug).float(), (self.size, self.size), self.focal * self.size,
                    iris_px=torch.from_numpy(iris).float() if flame.has_iris else None, config=cfg,
                    progress=lambda done, total, loss: bar.update(task, completed=done),
                    dense_px=None if dense is None else torch.from_numpy(dense).float(), dense_embedding=embedding,
                    photometric=photometric, principal=principal,
                )  # fmt: skip

            detected = [np.concatenate([ibug[i], iris[i]]) if detections[i] is not None else None for i in range(count)]
            write_flame_params(inner / "train", list(range(split)), fit, detected, self.size)
            write_flame_params(inner / "test", list(range(split, count)), fit, detected, self.size)
            if procedural:
                from headstudio.flame.procedural import write_procedural_flame

                write_procedural_flame(tmp / "flame" / "generic_model.pkl", seed=0)
            with _progress() as bar:  # pass 3: the overlay, from the written crops
                task = bar.add_task("overlay", total=count)
                write_video_stream(tmp / "overlay.mp4", _overlays(flame, fit, folders, ibug, bar, task), reader.fps)
            errors = [None if not np.isfinite(e) else round(float(e), 3) for e in fit.error_px.tolist()]
            report = {
                "source": str(reader.source), "frames": count, "fps": reader.fps, "rotation": reader.rotation,
                "flame": flame_note, "landmarks_fitted": embedding_note,
                "crop": {"x0": crop.x0, "y0": crop.y0, "side": crop.side, "size": crop.size},
                "splits": {"train": [0, split - 1], "test": [split, count - 1]},
                "frames_without_face": missing, "frames_with_several_faces": several,
                "landmark_error_px": errors,
                "mean_landmark_error_px": float(np.nanmean(fit.error_px.numpy())),
                "focal_px": fit.focal, "principal_point_px": list(fit.principal), "photometric_steps": self.photometric_steps,
                "seconds": round(time.monotonic() - started, 1),
                "note": ("landmark errors: the fitted FLAME's 68 iBUG landmarks against mediapipe's points mapped to "
                         "them; frames without a face are bridged by the fit's smoothness between their neighbours; "
                         "frames with several faces use the largest"),
            }  # fmt: skip
            if fit.dense_error_px is not None:
                report["dense_error_px"] = [None if not np.isfinite(e) else round(float(e), 3) for e in fit.dense_error_px.tolist()]
                report["mean_dense_error_px"] = float(np.nanmean(fit.dense_error_px.numpy()))
            (tmp / "report.json").write_text(json.dumps(report, indent=1))
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        residual = (f"mediapipe's points {report['mean_dense_error_px']:.2f} px from the fitted mesh's"
                    if "mean_dense_error_px" in report else f"landmark error {report['mean_landmark_error_px']:.2f} px")  # fmt: skip
        console.print(
            f"wrote {out}: {split} train + {num_test} test frames at {self.size} px; {residual} (mean); "
            f"{len(missing)} frame(s) without a face; "
            f"{report['seconds']:.0f} s ({count / report['seconds']:.2f} frames/s)",
            soft_wrap=True,
        )


def _split(count: int, test_fraction: float, source: Path) -> tuple[int, int]:
    """(training frames, test frames) of a clip of ``count`` frames."""
    num_test = max(1, round(count * test_fraction))
    if count - num_test < 1:
        raise DataError(f"{source}: {count} frame(s), but train and test need at least one each")
    return count - num_test, num_test


def _flame(path: Optional[Path], embedding_path: Optional[Path]):
    """(model, what it is, whether it is headstudio's procedural stand-in, mediapipe embedding or None, which
    landmarks the fit uses)."""
    from headstudio.flame.constants import MEDIAPIPE_EMBEDDING_FILENAME
    from headstudio.flame.model import FlameModel
    from headstudio.flame.procedural import write_procedural_flame
    from headstudio.track.mediapipe_embedding import load_mediapipe_embedding

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
    try:
        with_eyes = Path(chosen).with_name("landmark_embedding_with_eyes.npy")
        model = FlameModel.from_file(chosen, landmark_path=with_eyes if with_eyes.exists() else None)
        beside = Path(chosen).with_name(MEDIAPIPE_EMBEDDING_FILENAME)
        source = embedding_path or (beside if beside.exists() else None)
        if source is not None and not Path(source).exists():
            raise DataError(f"{source}: no such mediapipe landmark embedding")
        embedding = None if source is None else load_mediapipe_embedding(source, num_faces=int(model.faces.shape[0]))
    finally:
        if procedural:
            shutil.rmtree(Path(chosen).parent, ignore_errors=True)
    if embedding is None:
        what = (f"landmarks: the 68 iBUG points mapped from mediapipe's (no {MEDIAPIPE_EMBEDDING_FILENAME} beside "
                "the model: pass --mediapipe-embedding for the dense fit)")  # fmt: skip
    else:
        shown = "headstudio's calibrated one" if procedural and embedding_path is None else str(source)
        what = f"landmarks: {len(embedding)} mediapipe face-mesh points through their mesh embedding ({shown})"
    return model, note, procedural, embedding, what


def _overlays(flame, fit, folders, ibug, bar, task, chunk: int = 32):
    """Overlay frames of the clip, read back from the written crops (one chunk of meshes at a time)."""
    import cv2

    from headstudio.flame.constants import WORLD_SCALE
    from headstudio.track.overlay import mesh_overlay

    faces = flame.faces
    for start in range(0, len(folders), chunk):
        stop = min(start + chunk, len(folders))
        with torch.no_grad():
            verts = flame(shape=fit.shape[None], expression=fit.expression[start:stop], pose=fit.pose[start:stop]).vertices
            verts = verts * WORLD_SCALE + fit.translation[start:stop, None]
        for j, i in enumerate(range(start, stop)):
            folder, k = folders[i]
            rgb = cv2.imread(str(folder / "image" / f"{k}.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
            yield mesh_overlay(rgb, verts[j], faces, fit.focal, ibug[i], fit.landmarks_px[i].numpy(), fit.principal)
            bar.advance(task)


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
