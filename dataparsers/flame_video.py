"""nerfstudio dataparsers for FLAME-tracked videos (``flame-video-data``) and Kinect
sequences (``kinect-data``).

Both convert a subject into one world frame: FLAME coordinates x 4 (a head spans about
one unit), cameras camera-to-world with OpenGL axes as nerfstudio expects. By default the
tracked rigid head pose (FLAME's global rotation about its root joint) is folded into the
cameras: the head stays still and the camera moves, and the per-frame ``pose`` passed on
has a zero global rotation. With ``--fold-head-pose False`` the cameras stay as tracked and
the global rotation stays in ``pose`` (imavatar-surface reads it).

Every camera carries its frame in ``Cameras.metadata``: ``frame_index`` (an index into the
subject's frame table, the same in every split), ``expression``, ``pose``, ``landmarks``
(pixels, flattened; NaN where the layout has none) and ``bbox`` (pixels; NaN where none).
The whole frame table (all splits) is in ``DataparserOutputs.metadata["frame_table"]`` so a
model can build its per-subject FLAME track once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from headstudio.data.errors import DataError, Problems, install_excepthook
from headstudio.data.formats import VideoSubject, complete_subject, read_subject
from headstudio.data.track import FlameTrack
from headstudio.flame.constants import WORLD_SCALE
from headstudio.flame.files import FLAME_ENV, resolve_flame_path  # noqa: F401  (re-exported for callers)
from headstudio.utils.progress import progress_bar, stepper
from headstudio.flame.model import FlameModel
from headstudio.flame.safe_pickle import FlameFileError

@dataclass
class FlameVideoDataParserConfig(DataParserConfig):
    """FLAME-tracked monocular video in IMavatar, NerFace or INSTA layout."""

    _target: Type = field(default_factory=lambda: FlameVideoDataParser)
    data: Path = Path("subject1")
    """Subject folder."""
    format: Literal["auto", "imavatar", "nerface", "insta", "kinect"] = "auto"
    """Layout; detected from the files when 'auto'."""
    flame_path: Optional[Path] = None
    """FLAME generic_model.pkl; else $HEADSTUDIO_FLAME; else flame/generic_model.pkl inside the subject."""
    fold_head_pose: bool = True
    """Fold the tracked rigid head pose into the cameras (head static, camera moves)."""
    test_sequences: Tuple[str, ...] = ()
    """IMavatar/Kinect: sub-sequences held out for testing (default: 'test' if present, else the last)."""
    test_every: int = 10
    """IMavatar/Kinect: evaluate every n-th frame of the test sequences (IMavatar's protocol)."""
    background_color: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour the images are composited onto outside the mask (and the models' background)."""
    nerface_camera_depth: float = 1.0
    """NerFace: the real mean camera depth in metres. NerFace scales its cameras so that this depth becomes 0.5 and
    does not record the factor (Gafni et al. 2021, real_to_nerf.py); translations are multiplied by 8 x this value
    to reach headstudio's units (FLAME metres x 4)."""
    kinect_intrinsics: Optional[Path] = None
    """MonoNPHM: the Kinect calibration ``kinect_intrinsics.txt`` (``cx cy fx fy ...``, MonoNPHM's assets/); default: that
    file in the sequence or subject folder, else the tracker's K in the camera npz (MonoNPHM's video case)."""
    frame_rate: float = 25.0
    """Frames per second of the video (the layouts do not record it): the viewer's Play and hs-render's default."""
    scene_bound: float = 1.0
    """Half-size of the scene box around the head, in world units (a head spans about one unit)."""
    one_line_errors: bool = True
    """When the dataparser is set up (ns-train, ns-eval, ns-viewer, ns-export), install the handler that prints a
    bad-data error reaching the top of the process as one line, without a traceback (exit status 1). Importing
    headstudio changes nothing; False leaves Python's own handler."""


class FlameVideoDataParser(DataParser):
    config: FlameVideoDataParserConfig

    def __init__(self, config: FlameVideoDataParserConfig) -> None:
        super().__init__(config=config)
        if config.one_line_errors:
            install_excepthook()
        self._cache: Optional[tuple[VideoSubject, Optional[FlameModel], Optional[Path], np.ndarray, np.ndarray, np.ndarray]] = None

    def load_subject(self) -> tuple[VideoSubject, Optional[FlameModel], Optional[Path], np.ndarray, np.ndarray, np.ndarray]:
        """Read and validate the subject, load FLAME, compute cameras and poses in the world frame."""
        if self._cache is not None:
            return self._cache
        cfg = self.config
        root = Path(cfg.data)
        subject, problems = read_subject(
            root, cfg.format, Problems(), cfg.test_sequences, cfg.test_every, cfg.nerface_camera_depth, cfg.kinect_intrinsics
        )
        problems.raise_if_any(hint=f"run `hs-check-data {root}` to list them all")
        try:
            flame_path: Optional[Path] = resolve_flame_path(cfg.flame_path, root)
        except FlameFileError as exc:
            if subject.flame_tracked:
                raise DataError(str(exc)) from None
            flame_path = None  # no FLAME parameters to evaluate; the methods refuse such a subject
        with progress_bar() as bar:
            complete_subject(subject, problems, flame_path, stepper(bar))
        problems.raise_if_any(hint=f"run `hs-check-data {root}` to list them all")
        pose = np.stack([f.pose for f in subject.frames]).copy()
        c2w = np.stack([f.c2w for f in subject.frames])
        shape = subject.shape if len(subject.shape) else np.zeros(1)
        flame = None
        if subject.flame_tracked:
            num_expr = len(subject.frames[0].expression)
            try:
                flame = FlameModel.from_file(flame_path, num_shape=len(shape), num_expression=num_expr)
            except FlameFileError as exc:
                raise DataError(str(exc)) from None
            except ValueError as exc:
                raise DataError(f"{flame_path}: the subject's parameters do not fit this FLAME model: {exc}") from None
            expr = np.stack([f.expression for f in subject.frames])
            # Rigid head pose of each frame in world units: FLAME's root-joint transform.
            f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
            g = FlameTrack(flame, f32(shape), f32(expr), f32(pose)).transforms[:, 0].double().numpy()
            if cfg.fold_head_pose and not subject.head_folded:
                c2w = np.linalg.inv(g) @ c2w
            elif not cfg.fold_head_pose and subject.head_folded:
                c2w = g @ c2w
        if cfg.fold_head_pose:
            pose[:, :3] = 0.0
        self._cache = (subject, flame, flame_path, c2w, pose, shape)
        return self._cache

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        subject, flame, flame_path, c2w, pose, shape = self.load_subject()
        if split not in subject.splits:
            raise DataError(f"{subject.root}: unknown split '{split}' (have {', '.join(subject.splits)})")
        idx = subject.splits[split]
        if not idx:
            raise DataError(f"{subject.root}: the '{split}' split has no frames")
        frames = [subject.frames[i] for i in idx]
        intr = torch.tensor(np.stack([f.intrinsics for f in frames]), dtype=torch.float32)
        n_lm = max((len(f.landmarks) for f in frames if f.landmarks is not None), default=68)
        lms = np.full((len(frames), n_lm, 2), np.nan)
        bbox = np.full((len(frames), 4), np.nan)
        for k, f in enumerate(frames):
            if f.landmarks is not None and len(f.landmarks) == n_lm:
                lms[k] = f.landmarks
            if f.bbox is not None:
                bbox[k] = f.bbox
        cameras = Cameras(
            camera_to_worlds=torch.tensor(c2w[idx][:, :3, :4], dtype=torch.float32),
            fx=intr[:, 0:1],
            fy=intr[:, 1:2],
            cx=intr[:, 2:3],
            cy=intr[:, 3:4],
            width=torch.tensor([[f.size[0]] for f in frames], dtype=torch.long),
            height=torch.tensor([[f.size[1]] for f in frames], dtype=torch.long),
            camera_type=CameraType.PERSPECTIVE,
            metadata={
                "frame_index": torch.tensor(idx, dtype=torch.long)[:, None],
                "expression": torch.tensor(np.stack([f.expression for f in frames]), dtype=torch.float32),
                "pose": torch.tensor(pose[idx], dtype=torch.float32),
                "landmarks": torch.tensor(lms.reshape(len(frames), -1), dtype=torch.float32),
                "bbox": torch.tensor(bbox, dtype=torch.float32),
            },
        )
        has_masks = all(f.mask is not None for f in frames)
        bg = torch.tensor(self.config.background_color, dtype=torch.float32)
        b = self.config.scene_bound
        all_intr = np.stack([f.intrinsics for f in subject.frames])
        all_lms = np.full((len(subject.frames), n_lm, 2), np.nan)
        for k, f in enumerate(subject.frames):
            if f.landmarks is not None and len(f.landmarks) == n_lm:
                all_lms[k] = f.landmarks
        metadata = {
            "flame_path": flame_path,
            "shape": torch.tensor(shape, dtype=torch.float32),
            "frame_table": {
                "expression": torch.tensor(np.stack([f.expression for f in subject.frames]), dtype=torch.float32),
                "pose": torch.tensor(pose, dtype=torch.float32),
                "sequence": [f.sequence for f in subject.frames],
                "image": [f.image for f in subject.frames],
                "split": {name: list(ix) for name, ix in subject.splits.items()},
                # Full-resolution cameras and landmarks of every frame (trackers project into any frame).
                "camera_to_world": torch.tensor(c2w[:, :3, :4], dtype=torch.float32),
                "intrinsics": torch.tensor(all_intr, dtype=torch.float32),
                "image_size": torch.tensor([f.size for f in subject.frames], dtype=torch.float32),
                "landmarks": torch.tensor(all_lms, dtype=torch.float32),
            },
            "num_frames": len(subject.frames),
            "frame_rate": float(self.config.frame_rate),
            "head_pose_folded": self.config.fold_head_pose,
            "world_scale": WORLD_SCALE,
            "layout": subject.layout,
            "subject_root": subject.root,
            "flame_tracked": subject.flame_tracked,
            "flame_missing": subject.flame_missing,
            "landmarks_px": torch.tensor(lms, dtype=torch.float32),
        }
        if all(f.mask_recipe is not None and f.mask_recipe[0] == "facer" for f in frames):
            # Face-parsing labels per image (Kinect): mononphm-track down-weights the mouth interior.
            metadata["segmentation_filenames"] = [f.mask_recipe[1] for f in frames]
        if has_masks:
            metadata["mask_color"] = tuple(self.config.background_color)
        if subject.depth_to_world and all(f.depth is not None for f in frames):
            # Kept for geometry evaluation only; the methods do not train on depth.
            metadata["eval_depth_filenames"] = [f.depth for f in frames]
            metadata["eval_depth_to_world"] = subject.depth_to_world
        return DataparserOutputs(
            image_filenames=[f.image for f in frames],
            cameras=cameras,
            alpha_color=bg,
            scene_box=SceneBox(aabb=torch.tensor([[-b, -b, -b], [b, b, b]], dtype=torch.float32)),
            mask_filenames=[f.mask for f in frames] if has_masks else None,
            metadata=metadata,
        )


@dataclass
class KinectDataParserConfig(FlameVideoDataParserConfig):
    """MonoNPHM-style Kinect RGB-D sequence (depth kept for geometry evaluation only)."""

    _target: Type = field(default_factory=lambda: FlameVideoDataParser)
    format: Literal["auto", "imavatar", "nerface", "insta", "kinect"] = "kinect"
    """Layout: Kinect sequences."""
