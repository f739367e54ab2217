"""The subject's per-frame FLAME state, as a model sees it (shared by every method).

Built from the dataparser metadata (FLAME file, shape, the frame table of all splits), kept
on the device, looked up by the frame index each ray carries. Rays without a frame (the
viewer's cameras) use the viewer's frame slider; ``fixed_frame`` forces every ray into one
frame's state (the head pipeline sets it from ``HEADSTUDIO_FRAME``, so that ``ns-export
tsdf|poisson``, which renders all training cameras, fuses one expression).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from jaxtyping import Int
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.viewer.viewer_elements import ViewerSlider
from torch import Tensor, nn

from headstudio.data.errors import DataError
from headstudio.data.track import FlameTrack
from headstudio.flame.model import FlameModel


class SubjectState(nn.Module):
    """FLAME track of every frame of the subject plus the neutral (canonical) mesh."""

    def __init__(self, metadata: Dict) -> None:
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
        self.track = FlameTrack(flame, shape, expression, pose, world_scale=float(metadata.get("world_scale", 4.0)))
        neutral = self.track.evaluate(expression[:1] * 0, pose[:1] * 0)
        self.register_buffer("canonical_vertices", neutral.vertices[0], persistent=False)
        self.register_buffer("canonical_landmarks", neutral.landmarks[0], persistent=False)
        self.train_frames = sorted(int(i) for i in table["split"]["train"])
        self.default_frame = self.train_frames[0]
        self.fixed_frame: Optional[int] = None
        self.viewer_frame = ViewerSlider(
            name="Frame",
            default_value=self.default_frame,
            min_value=0,
            max_value=self.num_frames - 1,
            step=1,
            hint="Which tracked frame (expression, jaw, neck) the viewer renders",
        )

    @property
    def num_frames(self) -> int:
        return self.track.num_frames

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
        frame = int(round(float(self.viewer_frame.value)))
        return torch.full((n,), min(max(frame, 0), self.num_frames - 1), dtype=torch.long, device=device)
