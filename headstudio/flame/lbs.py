"""Linear blend skinning as pure tensor functions.

One implementation of FLAME's forward formula, usable on the model's own vertices and on
arbitrary points that carry their own skinning weights, expression blendshapes and pose
correctives (the fields of imavatar-surface):

    x_posed = sum_j W_j(x) * T_j(theta) * (x + B_E(psi; E(x)) + B_P(theta; P(x)))

Rotations are axis-angle vectors; transforms are 4x4 homogeneous matrices.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


def axis_angle_to_matrix(rotvec: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3 3"]:
    """Rodrigues' formula, smooth at zero angle."""
    angle_sq = (rotvec * rotvec).sum(-1, keepdim=True)
    angle = torch.sqrt(angle_sq + 1e-16)
    small = angle_sq < 1e-8
    # sin(a)/a and (1-cos(a))/a^2 with Taylor expansions near zero.
    sin_term = torch.where(small, 1.0 - angle_sq / 6.0, torch.sin(angle) / angle)
    cos_term = torch.where(small, 0.5 - angle_sq / 24.0, (1.0 - torch.cos(angle)) / (angle_sq + 1e-16))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(skew)
    return eye + sin_term[..., None] * skew + cos_term[..., None] * (skew @ skew)


def matrix_to_axis_angle(rot: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 3"]:
    """Inverse of :func:`axis_angle_to_matrix` for angles below pi."""
    cos = ((rot.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) * 0.5).clamp(-1.0, 1.0)
    angle = torch.acos(cos)
    vec = torch.stack(
        [rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0], rot[..., 1, 0] - rot[..., 0, 1]], -1
    )
    sin = torch.sin(angle)
    scale = torch.where(sin.abs() < 1e-6, 0.5 + angle**2 / 12.0, angle / (2.0 * sin + 1e-16))
    return vec * scale[..., None]


def blend_shapes(
    coeffs: Float[Tensor, "batch K"], dirs: Float[Tensor, "*points 3 K"]
) -> Float[Tensor, "batch *points 3"]:
    """Linear blendshape offsets sum_k coeffs_k * dirs[..., k] for shared directions."""
    return torch.einsum("bk,...ck->b...c", coeffs, dirs)


def pose_feature(rot_mats: Float[Tensor, "batch J 3 3"]) -> Float[Tensor, "batch P"]:
    """FLAME's pose-corrective feature: (R_j - I) of every non-root joint, flattened."""
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).flatten(1)


def rigid_transforms(
    rot_mats: Float[Tensor, "batch J 3 3"],
    joints: Float[Tensor, "batch J 3"],
    parents: Sequence[int],
) -> tuple[Float[Tensor, "batch J 3"], Float[Tensor, "batch J 4 4"]]:
    """Walk the kinematic chain.

    Returns the posed joint locations and, per joint, the transform that maps a point in
    rest pose to its posed location when fully bound to that joint (rest joint removed).
    """
    batch, num_joints = joints.shape[:2]
    rel_joints = joints.clone()
    for j in range(1, num_joints):
        rel_joints[:, j] = joints[:, j] - joints[:, parents[j]]
    local = torch.zeros(batch, num_joints, 4, 4, dtype=joints.dtype, device=joints.device)
    local[:, :, :3, :3] = rot_mats
    local[:, :, :3, 3] = rel_joints
    local[:, :, 3, 3] = 1.0
    chain = [local[:, 0]]
    for j in range(1, num_joints):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)
    posed_joints = world[:, :, :3, 3]
    # Remove the rest-pose joint location: T_j = world_j * translate(-J_j).
    offset = (world[:, :, :3, :3] @ joints[..., None])[..., 0]
    transforms = world.clone()
    transforms[:, :, :3, 3] = posed_joints - offset
    return posed_joints, transforms


def skin_points(
    points: Float[Tensor, "batch N 3"],
    weights: Float[Tensor, "*batch_or_none N J"],
    transforms: Float[Tensor, "batch J 4 4"],
) -> Float[Tensor, "batch N 3"]:
    """Blend the per-joint transforms by per-point weights and apply them."""
    if weights.dim() == 2:
        blended = torch.einsum("nj,bjrc->bnrc", weights, transforms[:, :, :3, :])
    else:
        blended = torch.einsum("bnj,bjrc->bnrc", weights, transforms[:, :, :3, :])
    return (blended[..., :3] @ points[..., None])[..., 0] + blended[..., 3]


def skin_surface_points(
    rest_vertices: Float[Tensor, "batch V 3"],
    weights: Float[Tensor, "V J"],
    transforms: Float[Tensor, "batch J 4 4"],
    corners: Int[Tensor, "*batch_or_none L 3"],
    bary: Float[Tensor, "*batch_or_none L 3"],
) -> Float[Tensor, "batch L 3"]:
    """Posed points given by barycentric coordinates in mesh triangles (``corners``: their vertex ids, shared
    by the batch or per batch element), equal to skinning every vertex and then interpolating, without
    skinning the vertices: both steps are linear, so each point blends each joint's transform of its
    corners, weighted by barycentric coordinate times skinning weight. Its cost grows with the points,
    not the mesh."""
    batch, joints = transforms.shape[0], transforms.shape[1]
    if corners.dim() == 2:
        tri = rest_vertices[:, corners]  # B L 3 3
        wb = bary[..., None] * weights[corners]  # L 3 J
        per_joint = torch.einsum("blic,lij->bljc", tri, wb)
        offset = torch.einsum("bjr,lj->blr", transforms[:, :, :3, 3], wb.sum(-2))
    else:
        frame = torch.arange(batch, device=corners.device)[:, None, None]
        tri = rest_vertices[frame, corners]  # B L 3 3
        wb = bary[..., None] * weights[corners]  # B L 3 J
        per_joint = torch.einsum("blic,blij->bljc", tri, wb)
        offset = torch.einsum("bjr,blj->blr", transforms[:, :, :3, 3], wb.sum(-2))
    rotation = transforms[:, :, :3, :3].transpose(-1, -2).reshape(batch, joints * 3, 3)  # [b, 3j + c, r]
    return per_joint.reshape(batch, per_joint.shape[1], joints * 3) @ rotation + offset


def lbs(
    points: Float[Tensor, "*batch_or_none N 3"],
    weights: Float[Tensor, "*batch_or_none N J"],
    rot_mats: Float[Tensor, "batch J 3 3"],
    joints: Float[Tensor, "batch J 3"],
    parents: Sequence[int],
    expression: Optional[Float[Tensor, "batch E"]] = None,
    expr_dirs: Optional[Float[Tensor, "*batch_or_none N 3 E"]] = None,
    pose_dirs: Optional[Float[Tensor, "*batch_or_none N 3 P"]] = None,
) -> tuple[Float[Tensor, "batch N 3"], Float[Tensor, "batch J 4 4"]]:
    """FLAME's forward map on arbitrary points.

    ``points`` are canonical (rest-pose, identity-shaped) positions. Per-point
    ``expr_dirs`` and ``pose_dirs`` may be shared by the batch (no leading batch dim) or
    given per batch element (fields evaluated per frame). ``joints`` are rest joints,
    typically regressed from the shaped and expressed mesh.
    Returns posed points and the per-joint transforms.
    """
    batch = rot_mats.shape[0]
    pts = points if points.dim() == 3 else points.unsqueeze(0).expand(batch, -1, -1)
    if expression is not None and expr_dirs is not None:
        if expr_dirs.dim() == 3:
            pts = pts + blend_shapes(expression, expr_dirs)
        else:
            pts = pts + torch.einsum("be,bnce->bnc", expression, expr_dirs)
    if pose_dirs is not None:
        feat = pose_feature(rot_mats)
        if pose_dirs.dim() == 3:
            pts = pts + blend_shapes(feat, pose_dirs)
        else:
            pts = pts + torch.einsum("bp,bncp->bnc", feat, pose_dirs)
    _, transforms = rigid_transforms(rot_mats, joints, parents)
    return skin_points(pts, weights, transforms), transforms
