"""The subject's per-frame FLAME state, as a model sees it (shared by every method).

Built from the dataparser metadata (FLAME file, shape, the frame table of all splits), kept
on the device, looked up by the frame index each ray carries. Rays without a frame (the
viewer's cameras) follow the viewer's Drive panel (:mod:`headstudio.viewer.controls`): a tracked
frame, or the manual controls; ``fixed_frame`` forces every ray into one frame's state (the head
pipeline sets it from ``HEADSTUDIO_FRAME``, so that ``ns-export tsdf|poisson``, which renders all
training cameras, fuses one expression; ``hs-render`` sets it to the driven row).

**The driven row.** The track holds one row past the subject's frames, ``driven_frame``: an
explicit FLAME state (manual controls, another subject's parameters in cross-reenactment, a
turntable's frame). :meth:`SubjectState.drive_to` writes it and tells the model
(:meth:`HeadModel.driven_state_changed`), which refreshes whatever per-frame tables it derived from
the track and points its per-frame codes at the nearest tracked frame
(:func:`headstudio.viewer.drive.nearest_frame`). Methods thus render a driven state through the
same code path as a tracked frame.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from jaxtyping import Int
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor, nn

from headstudio.data.errors import DataError
from headstudio.data.track import FlameTrack
from headstudio.flame.model import FlameModel
from headstudio.viewer.controls import DriveControls
from headstudio.viewer.start_camera import StartAtTrainingCamera, vertical_fov
from headstudio.viewer.drive import compose_drive, nearest_frame


class SubjectState(nn.Module):
    """FLAME track of every frame of the subject plus the neutral (canonical) mesh."""

    def __init__(self, metadata: Dict, expression_controls: int = 10) -> None:
        super().__init__()
        missing = [k for k in ("flame_path", "shape", "frame_table") if k not in metadata]
        if missing:
            raise ValueError(
                f"dataparser metadata lacks {', '.join(missing)}: headstudio methods need a FLAME-tracked "
                "subject (use the flame-video-data or kinect-data dataparser)"
            )
        if metadata.get("flame_tracked") is False:
            raise DataError(
                f"{metadata.get('subject_root', 'the subject')}: {metadata.get('layout', 'this')} layout: "
                f"{metadata.get('flame_missing', 'it has no FLAME track')}; headstudio's methods need FLAME expression "
                "and pose per frame: track the video with a FLAME tracker (metrical-tracker, then INSTA's transforms.py, or "
                "IMavatar's preprocessing) and train on that folder"
            )
        table = metadata["frame_table"]
        shape = torch.as_tensor(metadata["shape"], dtype=torch.float32)
        expression = torch.as_tensor(table["expression"], dtype=torch.float32)
        pose = torch.as_tensor(table["pose"], dtype=torch.float32)
        self.num_expression = expression.shape[1]
        flame = FlameModel.from_file(
            metadata["flame_path"], num_shape=shape.shape[0], num_expression=self.num_expression
        )
        self._num_frames = expression.shape[0]
        self.driven_frame = self._num_frames
        """Index of the driven row (one past the subject's frames)."""
        self.train_frames = sorted(int(i) for i in table["split"]["train"])
        self.default_frame = self.train_frames[0]
        first = self.default_frame  # the driven row starts as a copy of the first training frame
        expression = torch.cat([expression, expression[first : first + 1]])
        pose = torch.cat([pose, pose[first : first + 1]])
        self.track = FlameTrack(flame, shape, expression, pose, world_scale=float(metadata.get("world_scale", 4.0)))
        neutral = self.track.evaluate(expression[:1] * 0, pose[:1] * 0)
        self.register_buffer("canonical_vertices", neutral.vertices[0], persistent=False)
        self.register_buffer("canonical_landmarks", neutral.landmarks[0], persistent=False)
        self.fixed_frame: Optional[int] = None
        self._listeners: List[Callable[[int, int], None]] = []
        self._applied_key: tuple = ()
        labels = [flame.expression_label(k) for k in range(min(expression_controls, self.num_expression))]
        self.drive = DriveControls(
            self.num_frames, self.default_frame, labels, float(metadata.get("frame_rate", 25.0)), self.frame_state
        )
        if "camera_to_world" in table and "intrinsics" in table and "image_size" in table:
            f = self.default_frame
            fy, height = float(table["intrinsics"][f][1]), float(table["image_size"][f][1])
            self.start_camera = StartAtTrainingCamera(
                torch.as_tensor(table["camera_to_world"][f]).double().numpy(), vertical_fov(fy, height)
            )

    @property
    def num_frames(self) -> int:
        """Frames of the subject (the driven row is not one)."""
        return self._num_frames

    def frame_state(self, frame: int) -> Tuple[Tensor, Tensor]:
        """A tracked frame's FLAME (expression, pose)."""
        return self.track.expression[frame].clone(), self.track.pose[frame].clone()

    def on_driven(self, listener: Callable[[int, int], None]) -> None:
        """Call ``listener(driven_frame, nearest_tracked_frame)`` whenever the driven row changes."""
        self._listeners.append(listener)

    @torch.no_grad()
    def drive_to(self, expression: Tensor, pose: Tensor) -> int:
        """Make the driven row this explicit FLAME state; returns its frame index (:attr:`driven_frame`)."""
        e = torch.zeros(self.num_expression, device=self.track.expression.device)
        k = min(expression.shape[-1], self.num_expression)
        e[:k] = expression.reshape(-1)[:k].to(e)
        p = pose.reshape(-1).to(self.track.pose)
        self.track.set_row(self.driven_frame, e, p)
        self._applied_key = ()  # the viewer's controls no longer describe the row
        nearest = nearest_frame(self.track.expression, self.track.pose, self.train_frames, e, p)
        for listener in self._listeners:
            listener(self.driven_frame, nearest)
        return self.driven_frame

    def viewer_frame_index(self) -> int:
        """The frame index the viewer renders: the Drive panel's tracked frame, or the driven row in manual mode."""
        drive = self.drive
        if not drive.manual:
            return drive.frame
        key = drive.key()
        if key != self._applied_key:
            base_expression, base_pose = self.frame_state(drive.frame)
            self.drive_to(*compose_drive(base_expression, base_pose, drive.values()))
            self._applied_key = key
        return self.driven_frame

    @property
    def faces(self) -> Tensor:
        return self.track.flame.faces

    def frame_of(self, ray_bundle: RayBundle) -> Int[Tensor, "N"]:
        """Each ray's frame: forced frame, else the ray's metadata, else the viewer's slider."""
        n = ray_bundle.origins.shape[:-1].numel()
        device = ray_bundle.origins.device
        if self.fixed_frame is not None:
            return torch.full((n,), int(self.fixed_frame), dtype=torch.long, device=device)
        meta = ray_bundle.metadata or {}
        if "frame_index" in meta:
            return meta["frame_index"].reshape(-1).long().to(device)
        return torch.full((n,), self.viewer_frame_index(), dtype=torch.long, device=device)
