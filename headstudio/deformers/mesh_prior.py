"""3DMM deformation prior: FLAME mesh motion as supervision for an observed-to-canonical field."""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


def sample_mesh_prior(
    frame_vertices: Float[Tensor, "R V 3"],
    canonical_vertices: Float[Tensor, "V 3"],
    num_points: int,
    noise: float,
) -> Tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"], Int[Tensor, "N"]]:
    """Random points near the frames' meshes and the offsets that take them to the neutral mesh.

    A point is a random vertex of a random frame row, jittered by ``noise`` (world units);
    its target offset is that vertex's neutral position minus its position in the frame.
    Returns (points, target offsets, frame row of each point).
    """
    r, v, _ = frame_vertices.shape
    device = frame_vertices.device
    row = torch.randint(0, r, (num_points,), device=device)
    vid = torch.randint(0, v, (num_points,), device=device)
    on_mesh = frame_vertices[row, vid]
    targets = canonical_vertices[vid] - on_mesh
    points = on_mesh + noise * torch.randn_like(on_mesh)
    return points, targets, row
