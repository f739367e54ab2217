"""``hs-synth subject``: a self-contained synthetic subject with ground truth."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from scipy.ndimage import uniform_filter1d
import torch

from headstudio.data.synth.layouts import DEPTH_SCALE, WRITERS, FrameRecord, IMavatarWriter, KinectWriter
from headstudio.data.synth.render import HeadRenderer, PinholeCamera
from headstudio.data.synth.sequences import test_sequence, training_sequence
from headstudio.data.synth.texture import FACE_LABELS, LABELS, Look
from headstudio.data.track import FlameTrack
from headstudio.flame.constants import LANDMARK_WITH_EYES_FILENAME, MODEL_FILENAME, WORLD_SCALE
from headstudio.flame.files import load_landmark_embedding
from headstudio.flame.model import FlameModel, faces_points
from headstudio.flame.procedural import build_template, write_procedural_flame
from headstudio.utils.atomic import atomic_dir

@dataclass
class SubjectConfig:
    size: int = 512
    """Image width and height in pixels."""
    num_train: int = 300
    """Frames in the training sequence."""
    num_test: int = 100
    """Frames in the test sequence (stronger, unseen, asymmetric expressions)."""
    seed: int = 0
    """Identity, look and motion seed."""
    format: Literal["imavatar", "nerface", "insta"] = "imavatar"
    """Folder layout of the video."""
    kinect: bool = False
    """Write a MonoNPHM-style Kinect sequence (RGB-D, landmarks, segmentation) instead."""
    tracker_error: float = 0.0
    """Kinect: simulate the errors of a FLAME tracker in the written tracking (metrical-tracker meshes and
    identity.npy; the camera poses and landmarks stay exact): identity coefficients off by N(0, 0.5 e) times
    their prior std, expression by N(0, 0.3 e) and jaw by N(0, 0.03 e) rad, smooth over time. 0: the tracking
    is the truth. Ground truth (gt/) is always the truth."""
    focal: float = 2.8
    """Focal length in units of the image size."""
    distance: float = 4.0
    """Camera distance from the origin in world units (FLAME metres x 4)."""
    fps: float = 25.0
    video: bool = False
    """Also write each sequence as an H.264 MP4, ``video/<sequence>.mp4`` at ``fps`` (the input of
    ``hs-track``'s evaluation; the ground-truth tracking stays beside it)."""
    num_shape: int = 100
    """Identity components the subject uses (IMavatar: 100)."""
    num_expression: int = 50
    """Expression components the subject uses (IMavatar: 50)."""


def subject_shape(seed: int, num_shape: int) -> np.ndarray:
    """Identity coefficients: decaying variance, so early (designed) components dominate."""
    rng = np.random.default_rng(seed + 17)
    std = 1.0 / (1.0 + np.arange(num_shape) / 10.0)
    return np.clip(rng.normal(size=num_shape) * std, -2.0, 2.0)


def make_subject(
    out: Path, cfg: SubjectConfig, progress: Optional[Callable[[int, int], None]] = None
) -> dict:
    """Render a subject into ``out`` (which must not exist). Returns timing figures."""
    if cfg.format not in WRITERS:
        raise ValueError(f"unknown --format '{cfg.format}': choose one of {', '.join(WRITERS)}")
    t_start = time.perf_counter()
    with atomic_dir(out) as tmp:
        model_path = tmp / "flame" / MODEL_FILENAME
        write_procedural_flame(model_path, seed=cfg.seed)
        # The subject is rendered from the model as loaded back from disk: one code path.
        flame = FlameModel.from_file(model_path, num_shape=cfg.num_shape, num_expression=cfg.num_expression)
        template = build_template()
        camera = PinholeCamera.looking_at_origin(cfg.size, cfg.focal, cfg.distance)
        renderer = HeadRenderer(template, Look.from_seed(cfg.seed), camera)
        shape = subject_shape(cfg.seed, cfg.num_shape)
        faces = template.faces
        err_rng = np.random.default_rng(cfg.seed + 999)
        tracked_shape = None
        if cfg.kinect and cfg.tracker_error > 0:
            std = 1.0 / (1.0 + np.arange(cfg.num_shape) / 10.0)
            tracked_shape = shape + err_rng.normal(size=cfg.num_shape) * std * 0.5 * cfg.tracker_error
        if cfg.kinect:
            writer = KinectWriter(tmp, camera, shape, faces, seed=cfg.seed, tracked_shape=tracked_shape)
        elif cfg.format == "imavatar":
            writer = IMavatarWriter(tmp, camera, shape, faces, subject_name=Path(out).name)
        else:
            writer = WRITERS[cfg.format](tmp, camera, shape, faces)
        iris = load_landmark_embedding(model_path.with_name(LANDMARK_WITH_EYES_FILENAME), num_faces=len(faces))
        iris_faces = torch.as_tensor(iris.iris_faces)
        iris_bary = torch.as_tensor(iris.iris_bary, dtype=torch.float32)
        seqs = [
            training_sequence(cfg.num_train, cfg.num_expression, cfg.seed, cfg.fps),
            test_sequence(cfg.num_test, cfg.num_expression, cfg.seed, cfg.fps),
        ]
        total, done = sum(len(s) for s in seqs), 0
        t_render = time.perf_counter()
        for seq in seqs:
            video_frames = []
            track = FlameTrack(
                flame,
                torch.as_tensor(shape, dtype=torch.float32),
                torch.as_tensor(seq.expression, dtype=torch.float32),
                torch.as_tensor(seq.pose, dtype=torch.float32),
            )
            tracked = None
            if tracked_shape is not None:
                smooth = lambda a: uniform_filter1d(a, 5, axis=0, mode="nearest")  # noqa: E731  (about 5**-0.5 of the std)
                expr_err = smooth(err_rng.normal(size=seq.expression.shape)) * 0.3 * cfg.tracker_error * 5**0.5
                pose_err = np.zeros_like(seq.pose)
                pose_err[:, 6] = smooth(err_rng.normal(size=len(seq))) * 0.03 * cfg.tracker_error * 5**0.5
                tracked = FlameTrack(
                    flame,
                    torch.as_tensor(tracked_shape, dtype=torch.float32),
                    torch.as_tensor(seq.expression + expr_err, dtype=torch.float32),
                    torch.as_tensor(seq.pose + pose_err, dtype=torch.float32),
                )
            for k in range(len(seq)):
                verts = track.vertices[k]
                rec = FrameRecord(
                    index=k,
                    frame=renderer.render(verts),
                    expression=seq.expression[k],
                    pose=seq.pose[k],
                    landmarks_px=camera.project(track.landmarks[k].double()).numpy(),
                    iris_px=camera.project(faces_points(verts[None], flame.faces, iris_faces, iris_bary)[0].double()).numpy(),
                    head_transform=track.transforms[k, 0].double().numpy(),
                    vertices_world=verts.numpy(),
                    tracked_vertices_world=None if tracked is None else tracked.vertices[k].numpy(),
                )
                writer.write_frame(seq.name, rec)
                if cfg.video:
                    video_frames.append((rec.frame.rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
                done += 1
                if progress is not None:
                    progress(done, total)
            if cfg.video:
                from headstudio.utils.video import write_video

                write_video(tmp / "video" / f"{seq.name}.mp4", video_frames, cfg.fps)
        writer.finish()
        elapsed = time.perf_counter() - t_render
        meta = {
            "generator": "headstudio hs-synth subject",
            "config": asdict(cfg),
            "layout": "kinect" if cfg.kinect else cfg.format,
            "world_scale": WORLD_SCALE,
            "camera": {"K": camera.K.tolist(), "R": camera.R.tolist(), "t": camera.t.tolist(), "convention": "OpenCV world-to-camera"},
            "sequences": {s.name: len(s) for s in seqs},
            "shape_params": shape.tolist(),
            "flame_model": f"flame/{MODEL_FILENAME}",
            "conventions": "the layout's own, as its original tools write them (see headstudio.data.formats)",
            "ground_truth": {
                "depth": f"gt/<seq>/depth/<stem>.png: uint16, camera z in world units x {DEPTH_SCALE:g}, 0 = background",
                "normal": "gt/<seq>/normal/<stem>.png: uint16 RGB, (n + 1) / 2 * 65535, OpenCV camera axes",
                "semantic": "gt/<seq>/semantic/<stem>.png: uint8 labels (see labels)",
                "mesh": "gt/<seq>/mesh/<stem>.ply: posed FLAME-format mesh in world units (test sequence; Kinect: all)",
                "flame": "gt/<seq>/flame.npz: stem, shape, expression, pose (15, with the head rotation) of every frame",
            },
            "labels": list(LABELS),
            "face_labels": list(FACE_LABELS),
        }
        (tmp / "subject.json").write_text(json.dumps(meta, indent=1))
    total_s = time.perf_counter() - t_start
    return {"frames": total, "render_write_s": elapsed, "total_s": total_s, "fps": total / max(elapsed, 1e-9)}
