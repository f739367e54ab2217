"""Calibrate the procedural model's mediapipe embedding from renders whose mesh is known.

    python -m headstudio.track.calibrate headstudio/flame/procedural/mediapipe_landmark_embedding.npz

For each seed: a procedural subject (``hs-synth subject``'s identity, look and training motion) rendered
at ``--size`` px; mediapipe's face mesh on each frame; under each detected point the visible surface point
(the rasterizer's face and barycentric coordinates), carried to the neutral template. Per point: the
robust centre of those template positions over all frames, snapped to the skin; its spread gives the
weight (:mod:`headstudio.track.mediapipe_embedding`), or, with the bias model, what that model leaves of
the point's offsets on identities it was not fitted on. Points seen on the skin in fewer than
``--min-hit`` of the frames are left out. Then (unless ``--no-bias``) the detector bias: each detected
point's image offset from its embedded point on the true mesh, in FLAME units at the head, ridge-regressed
on the frame's true pose and expression features (``bias_coefficients``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import tyro

from headstudio.flame.constants import WORLD_SCALE
from headstudio.flame.model import faces_points
from headstudio.track.mediapipe_embedding import (
    MediapipeEmbedding, bias_features, fit_detector_bias, save_mediapipe_embedding,
)  # fmt: skip

CALIBRATION_SEEDS = tuple(range(101, 173))
"""Identities the shipped embedding is calibrated on (72); the benches' subjects (seeds 0-21) are not among them."""

FACE_MESH_POINTS = 468
"""mediapipe's face-mesh points (the 10 iris points after them are the irises, embedded separately)."""


@dataclass
class CalibrationStats:
    hits: np.ndarray
    """(468,) frames in which the point fell on the skin."""
    spread_m: np.ndarray
    """(468,) median distance of the point's template positions from their centre (metres)."""
    frames: int


def observed_template_points(
    face_id: torch.Tensor, bary: torch.Tensor, template: torch.Tensor, faces: torch.Tensor, allowed: torch.Tensor,
    points_px: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """(N, 3) template positions of the surface under each pixel point (NaN off the image or off ``allowed`` faces)."""
    h, w = face_id.shape
    out = np.full((len(points_px), 3), np.nan)
    cols, rows = np.floor(points_px[:, 0]).astype(int), np.floor(points_px[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    idx = np.nonzero(inside)[0]
    f = face_id[rows[idx], cols[idx]]
    ok = f >= 0
    ok[ok.clone()] = allowed[f[ok]]
    idx, f = idx[ok.numpy()], f[ok]
    b = bary[rows[idx], cols[idx]]
    out[idx] = faces_points(template[None], faces, f, b)[0].double().numpy()
    return out


def robust_centre(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre of (n, 3) samples (the mean of those within 2.5 median distances of the coordinate-wise
    median) and their median distance from it."""
    med = np.median(samples, axis=0)
    d = np.linalg.norm(samples - med, axis=-1)
    keep = d <= 2.5 * max(np.median(d), 1e-6)
    centre = samples[keep].mean(0)
    return centre, float(np.median(np.linalg.norm(samples - centre, axis=-1)))


def rendered_detections(seed: int, frames: int, size: int = 512) -> Iterator[tuple]:
    """``frames`` renders of seed ``seed``'s procedural subject (its identity, look and training motion, seen
    by hs-synth's default camera) and mediapipe's detection in each: (rendered Frame, posed vertices in
    world units, camera, FaceLandmarks or None, FLAME pose (15,), expression (E,)) per frame."""
    import tempfile

    from headstudio.data.synth.render import HeadRenderer, PinholeCamera
    from headstudio.data.synth.sequences import training_sequence
    from headstudio.data.synth.subject import SubjectConfig, subject_shape
    from headstudio.data.synth.texture import Look
    from headstudio.data.track import FlameTrack
    from headstudio.flame.constants import MODEL_FILENAME
    from headstudio.flame.model import FlameModel
    from headstudio.flame.procedural import build_template, write_procedural_flame
    from headstudio.track.landmarks import MediapipeDetector

    cfg = SubjectConfig(size=size)
    camera = PinholeCamera.looking_at_origin(size, cfg.focal, cfg.distance)
    with tempfile.TemporaryDirectory(prefix="hs-calibrate-") as tmp:
        model_path = Path(tmp) / MODEL_FILENAME
        write_procedural_flame(model_path, seed=seed, mediapipe_embedding=False)
        flame = FlameModel.from_file(model_path, num_shape=cfg.num_shape, num_expression=cfg.num_expression)
    seq = training_sequence(frames, cfg.num_expression, seed, cfg.fps)
    track = FlameTrack(flame, torch.as_tensor(subject_shape(seed, cfg.num_shape), dtype=torch.float32),
                       torch.as_tensor(seq.expression, dtype=torch.float32), torch.as_tensor(seq.pose, dtype=torch.float32))  # fmt: skip
    renderer = HeadRenderer(build_template(), Look.from_seed(seed), camera)
    detector = MediapipeDetector()
    try:
        for k in range(frames):
            frame = renderer.render(track.vertices[k])
            rgb = (frame.rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
            yield frame, track.vertices[k], camera, detector(rgb), seq.pose[k], seq.expression[k]
    finally:
        detector.close()


def calibrate(
    seeds: Sequence[int] = CALIBRATION_SEEDS, frames: int = 240, size: int = 512, min_hit: float = 0.5,
    spread_scale_m: float = 0.0015, progress: Optional[Callable[[int, int], None]] = None,
    bias_num_expression: int = 30, bias_ridge: float = 1.0, residual_scale_m: float = 0.002,
) -> tuple[MediapipeEmbedding, CalibrationStats]:  # fmt: skip
    """The embedding from ``frames`` renders of each seed's subject (see the module docstring).

    ``spread_scale_m``: a point whose spread is this (about 2 px at 512 px from hs-synth's camera) gets
    weight 1/2 (weight = 1 / (1 + (spread / scale)^2)). ``bias_num_expression``: expression coefficients
    among the detector-bias features (30 chosen on bench/track.py's seeds 0 and 7); ``bias_ridge``: its ridge
    weight (negative: no bias model; 1 leaves less than 3 of the offsets on identities left out of the fit,
    on the calibration's own renders with 18, 36 and 72 identities). With the bias model the weights come instead from what
    it leaves of each point's offsets on identities it was not fitted on (:func:`held_out_residuals`): a
    point whose root-mean-square residual is ``residual_scale_m`` gets weight 1/2 (2 mm, about 2.7 px at
    512 px; 1 and 2 mm measured alike on bench/track.py's seeds 0, 7, 13)."""
    from headstudio.flame.procedural import EAR_L, EAR_R, SKIN, build_template
    from headstudio.ops.mesh import closest_points_on_mesh

    template = build_template()
    faces = torch.as_tensor(template.faces, dtype=torch.long)
    canon = torch.as_tensor(template.vertices, dtype=torch.float32)
    allowed = torch.as_tensor(np.isin(template.face_part, [SKIN, EAR_L, EAR_R]))
    samples = [[] for _ in range(FACE_MESH_POINTS)]
    seen, identity = [], []  # (detected points, posed vertices, camera, pose, expression) for the bias model
    total, done = len(seeds) * frames, 0
    for seed in seeds:
        for frame, verts, camera, found, pose, expression in rendered_detections(seed, frames, size):
            if found is not None:
                pts = observed_template_points(frame.face_id, frame.bary, canon, faces, allowed, found.mesh[:FACE_MESH_POINTS])
                for i in np.nonzero(np.isfinite(pts).all(-1))[0]:
                    samples[i].append(pts[i])
                seen.append((found.mesh[:FACE_MESH_POINTS], verts, camera, pose, expression))
                identity.append(seed)
            done += 1
            if progress is not None:
                progress(done, total)

    hits = np.array([len(s) for s in samples])
    keep = np.nonzero(hits >= max(3, min_hit * total))[0]
    centres, spreads = np.zeros((len(keep), 3)), np.full(FACE_MESH_POINTS, np.nan)
    for j, i in enumerate(keep):
        centres[j], spreads[i] = robust_centre(np.stack(samples[i]))
    skin = torch.nonzero(allowed).squeeze(-1)
    face, bary, _ = closest_points_on_mesh(torch.from_numpy(centres), canon.double(), faces[skin])
    weights = 1.0 / (1.0 + (spreads[keep] / spread_scale_m) ** 2)
    embedding = MediapipeEmbedding(indices=keep.astype(np.int64), faces=skin[face].numpy().astype(np.int64),
                                   bary=bary.numpy(), weights=weights)  # fmt: skip
    if bias_ridge >= 0 and seen:
        features = seen_features(seen, bias_num_expression, embedding.bias_feature_set)
        residuals = detector_residuals(embedding, faces, seen)
        embedding.bias = fit_detector_bias(residuals, features, bias_ridge)
        embedding.bias_num_expression = bias_num_expression
        if len(set(identity)) > 1:
            left = held_out_residuals(residuals, features, np.asarray(identity), bias_ridge)
            rms = np.sqrt(np.nanmean((left**2).sum(-1), axis=0))
            embedding.weights = 1.0 / (1.0 + (rms / residual_scale_m) ** 2)
    return embedding, CalibrationStats(hits=hits, spread_m=spreads, frames=total)


def held_out_residuals(
    residuals: np.ndarray, features: np.ndarray, identity: np.ndarray, ridge: float
) -> np.ndarray:  # fmt: skip
    """(T, K, 2) what the detector-bias model leaves of each frame's residuals when fitted on the other
    identities only (leave one identity out): the error the fit meets on a new face."""
    out = np.full_like(residuals, np.nan)
    for who in np.unique(identity):
        train, test = identity != who, identity == who
        coefficients = fit_detector_bias(residuals[train], features[train], ridge)
        out[test] = residuals[test] - np.einsum("tf,fkc->tkc", features[test], coefficients)
    return out


def pixels_per_unit(camera) -> float:
    """Pixels per FLAME unit at the FLAME origin's depth (the head's) in a camera looking at it."""
    return float(camera.K[0, 0]) * WORLD_SCALE / float(camera.t[2])


def seen_features(seen: Sequence[tuple], num_expression: int, feature_set: int = 2) -> np.ndarray:
    """(T, F) detector-bias features of the frames' true pose and expression."""
    pose = torch.as_tensor(np.stack([s[3] for s in seen])).double()
    expression = torch.as_tensor(np.stack([s[4] for s in seen])).double()
    return bias_features(pose, expression, num_expression, feature_set).numpy()


def detector_residuals(embedding: MediapipeEmbedding, faces: torch.Tensor, seen: Sequence[tuple]) -> np.ndarray:
    """(T, K, 2) detected minus embedded points, projected, in FLAME units at the head (x right, y down)."""
    out = []
    for points, verts, camera, _, _ in seen:
        at = faces_points(verts[None].double(), faces, torch.as_tensor(embedding.faces), torch.as_tensor(embedding.bary))[0]
        out.append((points[embedding.indices] - camera.project(at).numpy()) / pixels_per_unit(camera))
    return np.stack(out)


def embedding_residuals(embedding: MediapipeEmbedding, seed: int, frames: int, size: int = 512,
                        with_bias: bool = True) -> np.ndarray:  # fmt: skip
    """(frames, K) pixel distances between mediapipe's points and their embedded points on the true mesh,
    projected (moved by the embedding's detector-bias model at the true pose, where it has one and
    ``with_bias``), on renders of seed ``seed`` (NaN where no face was found): how well the embedding holds
    on an identity it was not calibrated on."""
    from headstudio.flame.procedural import build_template

    faces = torch.as_tensor(build_template().faces, dtype=torch.long)
    seen, rows = [], []
    for k, (_, verts, camera, found, pose, expression) in enumerate(rendered_detections(seed, frames, size)):
        if found is not None:
            seen.append((found.mesh[:FACE_MESH_POINTS], verts, camera, pose, expression))
            rows.append(k)
    out = np.full((frames, len(embedding)), np.nan)
    if seen:
        residual = detector_residuals(embedding, faces, seen)
        if with_bias and embedding.bias is not None:
            residual = residual - np.einsum("tf,fkc->tkc", seen_features(seen, embedding.bias_num_expression, embedding.bias_feature_set),
                                                 embedding.bias)
        per_unit = np.array([pixels_per_unit(s[2]) for s in seen])
        out[rows] = np.linalg.norm(residual, axis=-1) * per_unit[:, None]
    return out


@dataclass
class Calibrate:
    """Calibrate the procedural model's mediapipe landmark embedding from renders (writes an npz)."""

    output: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="OUT.npz")]
    seeds: tuple[int, ...] = CALIBRATION_SEEDS
    """Identities rendered (keep the benches' subjects out)."""
    frames: int = 240
    """Frames of each identity's training motion."""
    size: int = 512
    """Render size in pixels (mediapipe's points are most precise on large faces)."""
    bias: bool = True
    """Also fit the detector-bias model (ridge 1, 30 expression coefficients; ``--no-bias``: none). bench/track.py
    measures both (the variant without it): the landmarks 0.4-1.4 px closer to the truth with it."""

    def main(self) -> None:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        with Progress(console=console) as bar:
            task = bar.add_task("render + mediapipe", total=len(self.seeds) * self.frames)
            embedding, stats = calibrate(self.seeds, self.frames, self.size, bias_ridge=1.0 if self.bias else -1.0,
                                         progress=lambda d, t: bar.update(task, completed=d))  # fmt: skip
        save_mediapipe_embedding(embedding, self.output)
        spread_px = stats.spread_m[embedding.indices] * cfg_pixels_per_metre(self.size)
        console.print(f"wrote {self.output}: {len(embedding)} of {FACE_MESH_POINTS} points from {stats.frames} frames; "
                      f"spread median {np.median(spread_px):.2f} px, 90th percentile {np.percentile(spread_px, 90):.2f} px "
                      f"at {self.size} px; weight median {np.median(embedding.weights):.2f}")  # fmt: skip


def cfg_pixels_per_metre(size: int) -> float:
    """Pixels per FLAME metre at the head's distance from hs-synth's default camera."""
    from headstudio.data.synth.subject import SubjectConfig
    from headstudio.flame.constants import WORLD_SCALE

    cfg = SubjectConfig(size=size)
    return cfg.focal * size * WORLD_SCALE / cfg.distance


def entrypoint(argv: Optional[Sequence[str]] = None) -> None:
    tyro.cli(Calibrate, description=__doc__, args=argv).main()


if __name__ == "__main__":
    entrypoint()
