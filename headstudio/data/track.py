"""Per-subject FLAME track: every frame's mesh, landmarks and joint transforms, on the device.

Computed once, in batches, from the frame table a dataparser provides; looked up by the
frame index that rides on every ray (``RayBundle.metadata["frame_index"]``). Explicit
expression / pose vectors (viewer sliders, export, reenactment) go through
:meth:`FlameTrack.evaluate` instead.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from headstudio.flame.constants import WORLD_SCALE
from headstudio.flame.model import FlameModel, FlameOutput


class FlameTrack(nn.Module):
    """FLAME states of all frames of a subject, in world units (FLAME x ``world_scale``)."""

    def __init__(
        self,
        flame: FlameModel,
        shape: Float[Tensor, "S"],
        expression: Float[Tensor, "F E"],
        pose: Float[Tensor, "F 15"],
        world_scale: float = WORLD_SCALE,
        batch_size: int = 128,
    ) -> None:
        super().__init__()
        self.flame = flame
        self.world_scale = world_scale
        self.register_buffer("shape", shape.float().reshape(1, -1), persistent=False)
        self.register_buffer("expression", expression.float(), persistent=False)
        self.register_buffer("pose", pose.float(), persistent=False)
        verts, lms, transforms = [], [], []
        with torch.no_grad():
            for start in range(0, expression.shape[0], batch_size):
                out = self.evaluate(expression[start : start + batch_size], pose[start : start + batch_size])
                verts.append(out.vertices)
                lms.append(out.landmarks)
                transforms.append(out.transforms)
        self.register_buffer("vertices", torch.cat(verts), persistent=False)
        self.register_buffer("landmarks", torch.cat(lms), persistent=False)
        self.register_buffer("transforms", torch.cat(transforms), persistent=False)

    @property
    def num_frames(self) -> int:
        return self.vertices.shape[0]

    def evaluate(self, expression: Float[Tensor, "B E"], pose: Float[Tensor, "B 15"]) -> FlameOutput:
        """FLAME state for explicit parameters, in world units."""
        expression = expression.to(self.shape)
        out = self.flame(shape=self.shape, expression=expression, pose=pose.to(self.shape))
        s = self.world_scale
        transforms = out.transforms.clone()
        transforms[:, :, :3, 3] *= s
        return FlameOutput(
            vertices=out.vertices * s,
            joints=out.joints * s,
            landmarks=out.landmarks * s,
            transforms=transforms,
            rest_vertices=out.rest_vertices * s,
            rest_joints=out.rest_joints * s,
        )

    @torch.no_grad()
    def set_row(self, row: int, expression: Float[Tensor, "E"], pose: Float[Tensor, "15"]) -> None:
        """Replace one row's state by explicit parameters (the subject's driven row)."""
        out = self.evaluate(expression[None], pose[None])
        self.expression[row] = expression.to(self.expression)
        self.pose[row] = pose.to(self.pose)
        self.vertices[row] = out.vertices[0]
        self.landmarks[row] = out.landmarks[0]
        self.transforms[row] = out.transforms[0]

    def lookup(self, frame_index: Int[Tensor, "*batch"], default: Optional[int] = None) -> dict[str, Tensor]:
        """State of the frames with the given indices (``-1`` falls back to ``default``)."""
        idx = frame_index.long()
        if default is not None:
            idx = torch.where(idx < 0, torch.full_like(idx, default), idx)
        if (idx < 0).any() or (idx >= self.num_frames).any():
            raise IndexError(f"frame index out of range 0..{self.num_frames - 1}")
        return {
            "vertices": self.vertices[idx],
            "landmarks": self.landmarks[idx],
            "transforms": self.transforms[idx],
            "expression": self.expression[idx],
            "pose": self.pose[idx],
        }
