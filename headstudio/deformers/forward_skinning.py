"""IMavatar's forward map from canonical to deformed space, and its inverse by root finding.

    x_d = LBS(x_c + B_P(theta; P(x_c)) + B_E(psi; E(x_c)), J(psi), theta, W(x_c))     (Zheng et al. 2022, eq. 5)

FLAME's formula (``headstudio.flame.lbs``) with the deformation network's fields in place
of per-vertex data. The canonical space is FLAME posed with jaw pitch 0.2 (supp. 2.5), so
the bone transforms and pose features are taken relative to that pose. Correspondences
``x_c`` of a deformed point solve ``w(x_c) = x_d`` by Broyden's method from several starts:
the point mapped back by the inverse transform of the shoulder (global), head (neck) and
jaw bones (supp. 2.4).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from headstudio.data.track import FlameTrack
from headstudio.fields.imavatar import DeformationNetwork
from headstudio.flame.lbs import axis_angle_to_matrix, pose_feature, skin_points
from headstudio.ops.root_finding import broyden

CANONICAL_JAW_PITCH = 0.2
"""Jaw pitch of the canonical pose (Zheng et al. 2022, supp. 2.5: a slightly open mouth)."""
INIT_BONES = (0, 1, 2)
"""Bones whose inverse transforms start the correspondence search: shoulder (global), head (neck), jaw."""


def morph_and_skin(
    points: Float[Tensor, "N 3"],
    expr_dirs: Float[Tensor, "N 3 E"],
    pose_dirs: Float[Tensor, "N 3 P"],
    weights: Float[Tensor, "N J"],
    expression: Float[Tensor, "N E"],
    pose_feat: Float[Tensor, "N P"],
    transforms: Float[Tensor, "N J 4 4"],
) -> Float[Tensor, "N 3"]:
    """Eq. 5 per point: blendshape offsets, then the engine's skinning with per-point weights."""
    morphed = (
        points + torch.einsum("nce,ne->nc", expr_dirs, expression) + torch.einsum("ncp,np->nc", pose_dirs, pose_feat)
    )
    return skin_points(morphed[:, None], weights[:, None], transforms)[:, 0]


def canonical_pose(num_pose: int = 15, jaw_pitch: float = CANONICAL_JAW_PITCH) -> Float[Tensor, "1 P"]:
    pose = torch.zeros(1, num_pose)
    pose[0, 6] = jaw_pitch  # jaw axis-angle, x = pitch
    return pose


class ForwardSkinning(nn.Module):
    """Deformation network plus every frame's bone transforms relative to the canonical pose."""

    def __init__(
        self,
        deformer: DeformationNetwork,
        track: FlameTrack,
        jaw_pitch: float = CANONICAL_JAW_PITCH,
        init_bones: Sequence[int] = INIT_BONES,
    ) -> None:
        super().__init__()
        self.deformer = deformer
        self.init_bones = tuple(init_bones)
        pose_c = canonical_pose(track.pose.shape[1], jaw_pitch).to(track.pose)
        canon = track.evaluate(track.expression[:1] * 0, pose_c)
        rel = track.transforms @ torch.linalg.inv(canon.transforms)  # F J 4 4
        feat = pose_feature(axis_angle_to_matrix(track.pose.reshape(track.num_frames, -1, 3)))
        feat_c = pose_feature(axis_angle_to_matrix(pose_c.reshape(1, -1, 3)))
        self.register_buffer("transforms", rel.detach(), persistent=False)
        self.register_buffer("pose_features", (feat - feat_c).detach(), persistent=False)
        self.register_buffer("expression", track.expression.detach().clone(), persistent=False)
        self.register_buffer("canonical_vertices", canon.vertices[0].detach(), persistent=False)
        self.register_buffer("canonical_landmarks", canon.landmarks[0].detach(), persistent=False)
        self.register_buffer("canonical_inverse", torch.linalg.inv(canon.transforms[0]).detach(), persistent=False)
        self.register_buffer("canonical_pose_feature", feat_c[0].detach(), persistent=False)
        object.__setattr__(self, "_track", track)  # a reference, not a submodule (the subject owns it)

    @torch.no_grad()
    def refresh_row(self, row: int) -> None:
        """Recompute one frame's tables from the track (the subject's driven row after it changed)."""
        expression, feat, transforms = self.explicit_state(self._track.expression[row], self._track.pose[row])
        self.expression[row] = expression
        self.pose_features[row] = feat
        self.transforms[row] = transforms

    @torch.no_grad()
    def explicit_state(
        self, expression: Float[Tensor, "E"], pose: Float[Tensor, "15"]
    ) -> Tuple[Float[Tensor, "E"], Float[Tensor, "P"], Float[Tensor, "J 4 4"]]:
        """Expression, relative pose feature and relative bone transforms of explicit FLAME parameters."""
        out = self._track.evaluate(expression[None], pose[None])
        rot = axis_angle_to_matrix(pose.reshape(1, -1, 3).to(out.vertices))
        feat = pose_feature(rot)[0] - self.canonical_pose_feature
        return expression.to(out.vertices), feat, out.transforms[0] @ self.canonical_inverse

    def warp(
        self, points: Float[Tensor, "N 3"], frame: Int[Tensor, "N"]
    ) -> Tuple[Float[Tensor, "N 3"], Tuple[Tensor, Tensor, Tensor]]:
        """Canonical points to their frames' deformed space; also returns the fields ``(E, P, W)``."""
        expr_dirs, pose_dirs, weights = self.deformer(points)
        return self.apply_fields(points, frame, expr_dirs, pose_dirs, weights), (expr_dirs, pose_dirs, weights)

    def apply_fields(
        self,
        points: Float[Tensor, "N 3"],
        frame: Int[Tensor, "N"],
        expr_dirs: Float[Tensor, "N 3 E"],
        pose_dirs: Float[Tensor, "N 3 P"],
        weights: Float[Tensor, "N J"],
    ) -> Float[Tensor, "N 3"]:
        """Eq. 5 with given fields at the points' frames."""
        return morph_and_skin(
            points, expr_dirs, pose_dirs, weights, self.expression[frame], self.pose_features[frame], self.transforms[frame]
        )

    @torch.no_grad()
    def warp_explicit(
        self, points: Float[Tensor, "N 3"], expression: Float[Tensor, "E"], pose: Float[Tensor, "15"]
    ) -> Float[Tensor, "N 3"]:
        """Canonical points moved by explicit FLAME expression and pose (not a tracked frame)."""
        expr, feat, transforms = self.explicit_state(expression, pose)
        e_dirs, p_dirs, weights = self.deformer(points)
        n = points.shape[0]
        return morph_and_skin(
            points, e_dirs, p_dirs, weights, expr.expand(n, -1), feat.expand(n, -1), transforms.expand(n, -1, -1, -1)
        )

    def warp_jacobian(
        self, points: Float[Tensor, "N 3"], frame: Int[Tensor, "N"]
    ) -> Tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3 3"]]:
        """Deformed points and d x_d / d x_c (exact, by three backward passes; no graph kept)."""
        with torch.enable_grad():
            x = points.detach().requires_grad_(True)
            xd, _ = self.warp(x, frame)
            rows = [torch.autograd.grad(xd[:, i].sum(), x, retain_graph=i < 2)[0] for i in range(3)]
        return xd.detach(), torch.stack(rows, dim=1)

    @torch.no_grad()
    def initial_guesses(
        self, points: Float[Tensor, "N 3"], frame: Int[Tensor, "N"]
    ) -> Float[Tensor, "N I 3"]:
        """The deformed points mapped back by each init bone's inverse transform."""
        inv = torch.linalg.inv(self.transforms[frame][:, list(self.init_bones)])  # N I 4 4
        return (inv[..., :3, :3] @ points[:, None, :, None])[..., 0] + inv[..., :3, 3]

    @torch.no_grad()
    def correspondences(
        self,
        points: Float[Tensor, "N 3"],
        frame: Int[Tensor, "N"],
        max_steps: int = 10,
        tol: float = 1e-5,
        inits: Float[Tensor, "N I 3"] | None = None,
        drop_converged: bool = True,
        merge_radius: float = 0.0,
    ) -> Tuple[Float[Tensor, "N I 3"], Bool[Tensor, "N I"]]:
        """Canonical roots of ``w(x_c) = x_d`` from each start, and which converged (supp. 2.4).

        ``merge_radius`` > 0 solves the starts one after another; a start whose iterate comes
        within that distance of a root an earlier start converged to is stopped and given that
        root (an exact copy, so callers can skip it as a duplicate). 0: all starts independently.
        """
        if inits is None:
            inits = self.initial_guesses(points, frame)
        n, k = inits.shape[:2]
        if merge_radius <= 0.0 or k == 1:
            roots, ok = self._solve(points[:, None].expand(-1, k, -1).reshape(-1, 3), frame[:, None].expand(-1, k).reshape(-1),
                                    inits.reshape(-1, 3), max_steps, tol, drop_converged)  # fmt: skip
            return roots.reshape(n, k, 3), ok.reshape(n, k)
        roots, ok = inits.clone(), torch.zeros(n, k, dtype=torch.bool, device=points.device)
        for i in range(k):
            known, known_ok = roots[:, :i], ok[:, :i]

            def near_known(x: Tensor, ids: Tensor) -> Tensor:
                dist = (x[:, None] - known[ids]).norm(dim=-1)
                return ((dist < merge_radius) & known_ok[ids]).any(dim=1)

            res = self._solve(points, frame, inits[:, i], max_steps, tol, drop_converged, near_known if i else None,
                              full=True)  # fmt: skip
            root, conv = res.root, res.converged
            if i and res.stopped.any():  # take the known root the iterate reached
                rows = torch.nonzero(res.stopped).reshape(-1)
                dist = (root[rows, None] - known[rows]).norm(dim=-1).masked_fill(~known_ok[rows], float("inf"))
                root[rows] = known[rows, dist.argmin(dim=1)]
                conv = conv | res.stopped
            roots[:, i], ok[:, i] = root, conv
        return roots, ok

    def _solve(self, target, frame, x0, max_steps, tol, drop_converged, stop=None, full=False):
        """Broyden on ``w(x) - target`` from ``x0``, the initial inverse Jacobian from the skinning weights there."""
        _, _, w = self.deformer(x0)
        blended = torch.einsum("nj,njrc->nrc", w, self.transforms[frame][:, :, :3, :3])
        j_inv = torch.linalg.inv(blended)

        def residual(x: Tensor, ids: Tensor) -> Tensor:
            return self.warp(x, frame[ids])[0] - target[ids]

        result = broyden(residual, x0, j_inv, max_steps=max_steps, tol=tol, drop_converged=drop_converged, stop=stop)
        return result if full else (result.root, result.converged)
