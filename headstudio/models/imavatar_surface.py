"""imavatar-surface: IMavatar (Zheng et al., CVPR 2022) as a nerfstudio model.

The whole story:

1. Three canonical fields (``headstudio/fields/imavatar.py``): a geometry network (SDF with
   a per-frame latent code), a deformation network giving expression blendshapes, pose
   correctives and skinning weights at each canonical point, and a texture network.
2. The forward map is FLAME's LBS with those fields (``headstudio/deformers/forward_skinning.py``,
   on the engine's ``headstudio.flame.lbs``); canonical pose: jaw pitch 0.2.
3. Each pixel's ray is marched in deformed space; samples find their canonical
   correspondences by batched Broyden from the shoulder, head and jaw bones' inverse
   transforms; the first crossing of the surface is refined by secant steps
   (``headstudio/rendering/implicit_surface.py``).
4. The surface point gets its gradient by implicit differentiation of
   ``[sdf(x_c) = 0, w(x_c) on the ray]`` (eq. 8-10, ``headstudio/ops/root_finding.py``); rays that
   miss take the mask loss at their smallest-SDF sample, whose correspondence
   ``w(x_c) = x_d*`` is differentiated the same way.
5. Colour from the canonical point, the deformed normal (eq. 6), jaw pose and expression.
6. Losses: RGB L1 on hit pixels, mask cross-entropy (weight 2), FLAME pseudo ground truth for
   E, P, W from the nearest canonical FLAME vertex (weights 1000, 1000, 0.1); eq. 11-14.

The surface is the zero level of an SDF; the paper's occupancy is ``sigmoid(-alpha sdf)``,
whose 0.5 level is that same surface (``occupancy_sharpness``); ``surface`` picks which of the
two levels the renderer refines (the same crossings and gradients; the SDF refines closer).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.utils import colors
from torch import Tensor
from torch.nn import Parameter

from headstudio.data.scans import observed_surface_samples
from headstudio.deformers.forward_skinning import CANONICAL_JAW_PITCH, ForwardSkinning
from headstudio.fields.imavatar import (
    CanonicalHeadField,
    DeformationNetwork,
    DisplacementNetwork,
    GeometryNetwork,
    TextureNetwork,
)
from headstudio.fields.frame_codes import FrameCodes
from headstudio.fields.mesh_sdf_init import fit_sdf_to_surface
from headstudio.metrics.geometry import normal_angle_error, project
from headstudio.models.head_model import HeadModel, HeadModelConfig
from headstudio.ops.nearest import NearestVertex
from headstudio.rendering.implicit_surface import march_in_bounds
from headstudio.ops.root_finding import implicit_root


@dataclass
class IMavatarSurfaceModelConfig(HeadModelConfig):
    """IMavatar (Zheng et al. 2022). Sizes the paper shows only in its Fig. 7 come from the authors' public configuration."""

    _target: Type = field(default_factory=lambda: IMavatarSurfaceModel)
    # --- fields
    latent_dim: int = 32
    """Per-frame latent code of the geometry network (supp. 2.2: l in R^32)."""
    geometry_dims: Tuple[int, ...] = (512,) * 8
    """Geometry MLP hidden layers (supp. Fig. 7; public configuration: 8 x 512)."""
    geometry_skip: Tuple[int, ...] = (4,)
    """Layer that re-reads the input (public configuration: 4)."""
    geometry_frequencies: int = 6
    """Positional-encoding frequencies of the geometry network (supp. 2.2: 6)."""
    geometry_init_radius: float = 0.6
    """Sphere of the geometric initialisation, in units of the scene's half-size (public configuration: 0.6)."""
    geometry_init: Literal["sphere", "flame"] = "sphere"
    """Start of the geometry: "sphere", the paper's geometric initialisation (Zheng et al. 2022, supp. 2.2); "flame"
    (ours, for short CPU runs, where the sphere is still a blob after a few hundred iterations): the network is
    first fitted to the signed distance of the outer surface of the subject's canonical FLAME mesh for
    ``flame_init_steps`` steps (``headstudio/fields/mesh_sdf_init.py``)."""
    flame_init_steps: int = 300
    """Adam steps of the "flame" start (ours; 4096 points each, half near the mesh)."""
    feature_dim: int = 256
    """Geometry feature z passed to the texture network (supp. Fig. 7: z in R^256)."""
    deformation_dims: Tuple[int, ...] = (128,) * 4
    """Deformation MLP hidden layers (supp. Fig. 7; public configuration: 4 x 128)."""
    skinning_temperature: float = 20.0
    """Skinning weights are softmax(temperature * logits) (public code: 20)."""
    texture_dims: Tuple[int, ...] = (512,) * 4
    """Texture MLP hidden layers (supp. Fig. 7; public configuration: 4 x 512)."""
    texture_frequencies: int = 4
    """Positional-encoding frequencies of the canonical point into the texture (public configuration: 4)."""
    deformer: Literal["forward", "d-net", "b-morph"] = "forward"
    """forward: IMavatar's forward skinning fields on canonical points with root finding. Ablations of §4.2,
    backward maps on the deformed point, expression and pose (no root finding): d-net (displacement) and
    b-morph (blendshapes, correctives and weights, inverse LBS); both supervised by FLAME like eq. 13."""
    flame_displacement_mult: float = 1000.0
    """D-Net's FLAME displacement loss weight (§4.2 says "similar to Eq. 13"; ours: lambda_e's 1000)."""
    canonical_jaw_pitch: float = CANONICAL_JAW_PITCH
    """Jaw pitch of the canonical pose (supp. 2.5: 0.2)."""
    surface: Literal["sdf", "occupancy"] = "sdf"
    """Which level the renderer finds: sdf, the network output's 0 level (public code); occupancy, the 0.5 level
    of ``sigmoid(-sharpness * sdf / half-size)`` (the paper). The same surface, the same bracketed crossings,
    the same implicit gradients and losses; only the secant steps differ, and they land closer on the SDF
    (README, ``bench/imavatar_surface.py``)."""
    # --- rendering
    num_steps: int = 100
    """Samples per ray of the deformed-space march (public configuration: 100)."""
    num_secant_steps: int = 8
    """Secant refinements of a crossing (public configuration: 8)."""
    broyden_max_steps: int = 10
    """Broyden updates per correspondence (supp. 2.4: 10)."""
    broyden_tolerance: float = 1e-5
    """Convergence threshold of the correspondence residual (supp. 2.4: 1e-5)."""
    renderer: Literal["fast", "dense"] = "fast"
    """fast: march only the dense renderer's samples around the frame's FLAME mesh bounds, front to back,
    dropping converged and merged roots; dense: num-steps samples over the scene box, every start, every Broyden
    step (the reference)."""
    root_merge_radius: float = 1e-3
    """Fast renderer: a start whose Broyden iterate comes this close (world units; 0.25 mm of FLAME at the
    default world scale 4) to a root an earlier start found stops and shares it, so each distinct root is
    solved and read once (ours; 0 solves every start to the end)."""
    bounds_margin: float = 0.15
    """Margin around the frame's deformed FLAME mesh box for the fast renderer, world units (ours)."""
    chunk_steps: int = 8
    """Samples per ray evaluated at a time by the fast renderer before hit rays stop (ours)."""
    march_stride: int = 1
    """Fast renderer: march every n-th of the dense renderer's samples, then the dense samples between the pair
    that brackets the first crossing (ours; 1, the default, marches every sample). The same crossing as the dense
    renderer unless the surface is thinner along the ray than n samples: 4 renders about 1.8x faster and loses
    about 7 % of the hit pixels at grazing silhouettes (README, ``bench/imavatar_surface.py``)."""
    # --- losses
    occupancy_sharpness: float = 50.0
    """Occupancy = sigmoid(-sharpness * sdf / scene half-size) for the mask loss (public configuration: alpha 50)."""
    rgb_loss_mult: float = 1.0
    """RGB L1 on hit pixels (eq. 11)."""
    mask_loss_mult: float = 2.0
    """Mask cross-entropy on the other pixels (eq. 14: lambda_M = 2)."""
    use_flame_loss: bool = True
    """FLAME pseudo ground truth on E, P, W (eq. 13); False is the paper's Ours-."""
    flame_loss_mult: float = 1.0
    """lambda_FL (eq. 14: 1)."""
    flame_expression_mult: float = 1000.0
    """lambda_e (eq. 13: 1000)."""
    flame_pose_mult: float = 1000.0
    """lambda_p (eq. 13: 1000)."""
    flame_weights_mult: float = 0.1
    """lambda_w (eq. 13: 0.1)."""
    background_color: str = "white"
    """Background of pixels whose ray misses; matches the dataparser's compositing colour."""
    sdf_field: bool = True
    """The field is an SDF (``ns-export marching-cubes`` checks for this and reads ``field.forward_geonetwork``)."""


class IMavatarSurfaceModel(HeadModel):
    """Model of imavatar-surface; see the module docstring."""

    config: IMavatarSurfaceModelConfig
    export_kind = "surface"

    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        track = self.subject.track
        self.scene_scale = float(self.scene_box.aabb.abs().max())
        geometry = GeometryNetwork(
            latent_dim=cfg.latent_dim,
            feature_dim=cfg.feature_dim,
            dims=cfg.geometry_dims,
            skip_in=cfg.geometry_skip,
            frequencies=cfg.geometry_frequencies,
            radius=cfg.geometry_init_radius,
            scene_scale=self.scene_scale,
        )
        deformer = DeformationNetwork(
            num_expression=self.subject.num_expression,
            num_pose_features=9 * (len(track.flame.parents) - 1),
            num_joints=len(track.flame.parents),
            dims=cfg.deformation_dims,
            weight_temperature=cfg.skinning_temperature,
            scene_scale=self.scene_scale,
        )
        self.skin = ForwardSkinning(deformer, track, jaw_pitch=cfg.canonical_jaw_pitch)
        self.backward_net: Optional[torch.nn.Module] = None
        if cfg.deformer != "forward":  # ablations: conditioned on the deformed point, expression and pose
            cond = self.subject.num_expression + track.pose.shape[1]
            if cfg.deformer == "d-net":
                self.backward_net = DisplacementNetwork(cond, dims=cfg.deformation_dims, scene_scale=self.scene_scale)
            else:
                self.backward_net = DeformationNetwork(
                    num_expression=self.subject.num_expression, num_pose_features=deformer.num_pose_features,
                    num_joints=deformer.num_joints, dims=cfg.deformation_dims,
                    weight_temperature=cfg.skinning_temperature, scene_scale=self.scene_scale, condition_dim=cond,
                )  # fmt: skip
        texture = TextureNetwork(
            condition_dim=3 + self.subject.num_expression,
            feature_dim=cfg.feature_dim,
            dims=cfg.texture_dims,
            frequencies=cfg.texture_frequencies,
            scene_scale=self.scene_scale,
        )
        codes = FrameCodes(self.subject.num_frames, cfg.latent_dim, self.subject.train_frames)
        self.field = CanonicalHeadField(geometry, texture, codes, self.subject.default_frame, cfg.occupancy_sharpness)
        self.geometry_init_losses: list[float] = []
        self.geometry_init_seconds = 0.0
        if cfg.geometry_init == "flame":
            start = time.perf_counter()
            aabb = self.scene_box.aabb
            gen = torch.Generator().manual_seed(0)
            samples, normals = observed_surface_samples(self.skin.canonical_vertices, self.subject.faces, 20_000, gen)
            self.geometry_init_losses = fit_sdf_to_surface(
                lambda x: self.field.forward_geonetwork(x)[:, 0], geometry.parameters(), samples, normals,
                aabb[0], aabb[1], steps=cfg.flame_init_steps,
            )  # fmt: skip
            self.geometry_init_seconds = time.perf_counter() - start
        pad = cfg.bounds_margin
        self.register_buffer("mesh_lo", track.vertices.amin(1) - pad, persistent=False)
        self.register_buffer("mesh_hi", track.vertices.amax(1) + pad, persistent=False)
        flame = track.flame
        s = track.world_scale
        # FLAME pseudo ground truth at the canonical mesh (eq. 13), world units like the fields.
        self.register_buffer("gt_expr_dirs", flame.exprdirs.detach() * s, persistent=False)
        self.register_buffer("gt_pose_dirs", flame.posedirs.detach() * s, persistent=False)
        self.register_buffer("gt_weights", flame.weights.detach().clone(), persistent=False)
        self.nearest = NearestVertex()
        self.background = colors.get_color(self.config.background_color)

    @property
    def geometry(self) -> GeometryNetwork:
        return self.field.geometry

    @property
    def texture(self) -> TextureNetwork:
        return self.field.texture

    def refresh_track_row(self, row: int, nearest: int) -> None:
        self.skin.refresh_row(row)

    @property
    def latent_codes(self) -> FrameCodes:
        return self.field.latent_codes

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "fields": list(self.geometry.parameters()) + list(self.texture.parameters()),
            "deformation": list((self.backward_net or self.skin.deformer).parameters()),
            "latent_codes": list(self.latent_codes.parameters()),
        }

    # ------------------------------------------------------------------ geometry
    def sdf(self, canonical: Tensor, frame: Tensor) -> Tensor:
        """SDF of canonical points under their frames' latent codes."""
        return self.geometry.sdf(canonical, self.latent_codes(frame))

    def correspond(self, points: Tensor, frame: Tensor) -> Tuple[Tensor, Tensor]:
        """Canonical candidates of deformed points (root finding, or the backward ablation's one point)."""
        cfg = self.config
        if self.backward_net is None:
            fast = cfg.renderer == "fast"
            return self.skin.correspondences(points, frame, max_steps=cfg.broyden_max_steps, tol=cfg.broyden_tolerance,
                                             drop_converged=fast, merge_radius=cfg.root_merge_radius if fast else 0.0)  # fmt: skip
        x_c = self.backward_canonical(points, frame)
        return x_c[:, None], torch.ones(points.shape[0], 1, dtype=torch.bool, device=points.device)

    def backward_condition(self, frame: Tensor) -> Tensor:
        return torch.cat([self.skin.expression[frame], self.subject.track.pose[frame]], dim=-1)

    def backward_canonical(self, points: Tensor, frame: Tensor) -> Tensor:
        """D-Net / B-Morph: deformed points straight to canonical space (differentiable)."""
        cond = self.backward_condition(frame)
        if self.config.deformer == "d-net":
            return points + self.backward_net(points, cond)
        expr_dirs, pose_dirs, weights = self.backward_net(points, cond)
        blended = torch.einsum("nj,njrc->nrc", weights, self.skin.transforms[frame])
        unskinned = torch.linalg.solve(blended[:, :3, :3], (points - blended[:, :3, 3])[..., None])[..., 0]
        return (
            unskinned
            - torch.einsum("nce,ne->nc", expr_dirs, self.skin.expression[frame])
            - torch.einsum("ncp,np->nc", pose_dirs, self.skin.pose_features[frame])
        )

    def occupancy_logit(self, sdf: Tensor) -> Tensor:
        return -self.config.occupancy_sharpness * sdf / self.scene_scale

    def level(self, canonical: Tensor, frame: Tensor) -> Tensor:
        """The value the renderer brackets and refines (negative inside): the SDF, or 0.5 - occupancy."""
        sdf = self.sdf(canonical, frame)
        return sdf if self.config.surface == "sdf" else 0.5 - torch.sigmoid(self.occupancy_logit(sdf))

    def level_slope(self, sdf: Tensor) -> Tensor:
        """d level / d sdf (1 for the SDF; k s (1 - s) for 0.5 - sigmoid(-k sdf))."""
        if self.config.surface == "sdf":
            return torch.ones_like(sdf)
        occ = torch.sigmoid(self.occupancy_logit(sdf))
        return self.config.occupancy_sharpness / self.scene_scale * occ * (1.0 - occ)

    @contextlib.contextmanager
    def reduced_sampling(self, fraction: float) -> Iterator[None]:
        saved = self.config.num_steps
        self.config.num_steps = max(2, round(saved * fraction))
        try:
            yield
        finally:
            self.config.num_steps = saved

    # ------------------------------------------------------------------ rendering
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        cfg = self.config
        frames = self.subject.frame_of(ray_bundle)
        origins = ray_bundle.origins.reshape(-1, 3)
        directions = F.normalize(ray_bundle.directions.reshape(-1, 3), dim=-1)
        aabb = self.scene_box.aabb.to(origins)
        fast = cfg.renderer == "fast"
        res = march_in_bounds(
            origins, directions, frames, aabb[0], aabb[1], self.correspond, self.level, num_steps=cfg.num_steps,
            num_secant=cfg.num_secant_steps, bounds=(self.mesh_lo[frames], self.mesh_hi[frames]) if fast else None,
            chunk_steps=cfg.chunk_steps, stride=cfg.march_stride,
        )  # fmt: skip
        n = origins.shape[0]
        rgb = self.background.to(origins).expand(n, 3).clone()
        normal = torch.zeros(n, 3, device=origins.device)
        logit = torch.full((n,), -20.0, device=origins.device)
        canonical = res.canonical
        hit = torch.nonzero(res.hit).reshape(-1)
        if hit.numel():
            if self.backward_net is None:
                x_c, colour, n_d, sdf = self.shade(res.canonical[hit], frames[hit], origins[hit], directions[hit])
            else:
                x_c, colour, n_d, sdf = self.shade_backward(res.t[hit], frames[hit], origins[hit], directions[hit])
            rgb = rgb.index_put((hit,), colour)
            normal = normal.index_put((hit,), n_d)
            logit = logit.index_put((hit,), self.occupancy_logit(sdf))
            canonical = canonical.index_put((hit,), x_c)
        miss = torch.nonzero(res.valid & ~res.hit).reshape(-1)
        if miss.numel():
            target = origins[miss] + res.t[miss, None] * directions[miss]
            if self.backward_net is None:
                x_c = self.correspondence_with_gradient(res.canonical[miss], frames[miss], target)
            else:
                x_c = self.backward_canonical(target, frames[miss])
            logit = logit.index_put((miss,), self.occupancy_logit(self.sdf(x_c, frames[miss])))
            canonical = canonical.index_put((miss,), x_c)
        return {
            "rgb": rgb,
            "accumulation": res.hit.float()[:, None],
            "depth": torch.where(res.hit, res.t, torch.zeros_like(res.t))[:, None],
            "normal": normal,
            "occupancy_logit": logit[:, None],
            "hit": res.hit[:, None],
            "valid": res.valid[:, None],
            "canonical": canonical,
            "deformed": origins + res.t[:, None] * directions,
            "frame": frames[:, None],
        }

    def surface_point_with_gradient(
        self, root: Tensor, frames: Tensor, origins: Tensor, directions: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """The canonical surface point with the implicit gradient of eq. 8-10, and the warp Jacobian there.

        ``G(x_c) = [level(x_c), B (w(x_c) - o)]`` with ``B`` two unit vectors across the ray: zero
        exactly when x_c is on the surface and its deformed point on the ray. The gradient is attached
        whenever autograd is on: in training, and in test-time fitting of the geometry codes.
        """
        differentiable = torch.is_grad_enabled()
        _, jac_w = self.skin.warp_jacobian(root, frames)
        if not differentiable:  # evaluation: the root is the surface point; no geometry pass is needed here
            return root.detach(), jac_w
        helper = torch.where(directions[:, :1].abs() < 0.9, torch.tensor([1.0, 0.0, 0.0]).to(root),
                             torch.tensor([0.0, 1.0, 0.0]).to(root))  # fmt: skip
        b1 = F.normalize(torch.cross(directions, helper, dim=-1), dim=-1)
        b2 = torch.cross(directions, b1, dim=-1)
        basis = torch.stack([b1, b2], dim=1)  # N 2 3
        sdf, _, grad = self.geometry.gradient(root, self.latent_codes(frames), create_graph=False)
        grad = grad.detach() * self.level_slope(sdf.detach())[:, None]
        with torch.enable_grad():
            level_live = self.level(root.detach(), frames)
            warped, _ = self.skin.warp(root.detach(), frames)
            residual = torch.cat([level_live[:, None], (basis @ (warped - origins)[..., None])[..., 0]], dim=-1)
            jacobian = torch.cat([grad[:, None, :], basis @ jac_w], dim=1)
            x_c = implicit_root(root, residual, jacobian) if differentiable else root.detach()
        return x_c, jac_w

    def correspondence_with_gradient(self, root: Tensor, frames: Tensor, target: Tensor) -> Tensor:
        """Canonical correspondence of a fixed deformed point, differentiable in the deformation network."""
        if not torch.is_grad_enabled():
            return root.detach()
        _, jac_w = self.skin.warp_jacobian(root, frames)
        with torch.enable_grad():
            warped, _ = self.skin.warp(root.detach(), frames)
            return implicit_root(root, warped - target, jac_w)

    def shade(
        self, root: Tensor, frames: Tensor, origins: Tensor, directions: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Surface point (with gradient), colour, deformed normal (eq. 6) and SDF of hit rays."""
        x_c, jac_w = self.surface_point_with_gradient(root, frames, origins, directions)
        sdf, feature, grad = self.geometry.gradient(x_c, self.latent_codes(frames), create_graph=torch.is_grad_enabled())
        # Eq. 6: d sdf / d x_d = d sdf / d x_c (d x_d / d x_c)^-1.
        normal_d = torch.linalg.solve(jac_w.transpose(1, 2), grad[..., None])[..., 0]
        normal_d = F.normalize(normal_d, dim=-1)
        pose = self.subject.track.pose[frames]
        condition = torch.cat([pose[:, 6:9], self.subject.track.expression[frames]], dim=-1)  # jaw pose, expression
        colour = self.texture(x_c, normal_d, condition, feature)
        return x_c, colour, normal_d, sdf

    def shade_backward(
        self, t: Tensor, frames: Tensor, origins: Tensor, directions: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Hit rays of a backward ablation: the ray parameter gets the implicit gradient of
        ``sdf(b(o + t d)) = 0`` (1-D eq. 10), the normal is the SDF gradient through ``b``."""
        codes = self.latent_codes(frames)
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            t_leaf = t.detach().clone().requires_grad_(True)
            h = self.geometry.sdf(self.backward_canonical(origins + t_leaf[:, None] * directions, frames), codes)
            (dh_dt,) = torch.autograd.grad(h.sum(), t_leaf, retain_graph=True)
            t_s = t.detach()
            if differentiable:
                t_s = implicit_root(t_s[:, None], h[:, None], dh_dt.detach()[:, None, None])[:, 0]
            x_d = origins + t_s[:, None] * directions
            x_d_leaf = x_d.detach().requires_grad_(True)
            x_c_leaf = self.backward_canonical(x_d_leaf, frames)
            rows = [torch.autograd.grad(x_c_leaf[:, i].sum(), x_d_leaf, retain_graph=i < 2)[0] for i in range(3)]
            jac_b = torch.stack(rows, dim=1)  # d x_c / d x_d
            x_c = self.backward_canonical(x_d, frames)
        sdf, feature, grad = self.geometry.gradient(x_c, codes, create_graph=torch.is_grad_enabled())
        normal_d = F.normalize((jac_b.transpose(1, 2) @ grad[..., None])[..., 0], dim=-1)
        pose = self.subject.track.pose[frames]
        condition = torch.cat([pose[:, 6:9], self.subject.track.expression[frames]], dim=-1)
        return x_c, self.texture(x_c, normal_d, condition, feature), normal_d, sdf

    # ------------------------------------------------------------------ metrics
    def geometry_metrics(self, outputs: Dict[str, Tensor], batch: Dict) -> Dict[str, float]:
        """The paper's geometry metrics (§4.3): normal angle error (degrees) in the face region against
        ground-truth normal maps (synthetic subjects), and the error (pixels) of the 51 inner FLAME
        landmarks moved by the learned forward map and projected, against the tracked 2D landmarks."""
        out: Dict[str, float] = {}
        if "gt_normal_world" in batch:
            region = batch["face_mask"][..., 0].to(self.device).bool() if "face_mask" in batch else outputs["hit"][..., 0]
            region = region & outputs["hit"][..., 0].bool()
            out["normal_error"] = normal_angle_error(outputs["normal"], batch["gt_normal_world"].to(self.device), region)
        camera = batch.get("camera")
        forward = self.backward_net is None  # the ablations have no forward map to move landmarks with
        if forward and camera is not None and "landmarks_px" in batch and camera.metadata and "frame_index" in camera.metadata:
            frame = int(camera.metadata["frame_index"].reshape(-1)[0])
            # Rows 17..67 on both sides: the tracked keypoints may be IMavatar's 70 (17 contour + 51 inner
            # + 2 iris), the canonical landmarks are FLAME's 68; the iris rows are not part of the metric.
            inner = slice(17, 68)
            target = batch["landmarks_px"].to(self.device)[inner]
            lms = self.skin.canonical_landmarks[inner]
            if target.shape[0] == lms.shape[0] == 51:
                with torch.no_grad():
                    moved, _ = self.skin.warp(lms, torch.full((len(lms),), frame, dtype=torch.long, device=lms.device))
                c = camera.to(self.device)
                px = project(moved, c.camera_to_worlds[0], c.fx[0, 0], c.fy[0, 0], c.cx[0, 0], c.cy[0, 0])
                ok = torch.isfinite(target).all(-1)
                if ok.any():
                    out["keypoint_error"] = float((px[ok] - target[ok]).norm(dim=-1).mean())
        return out

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def canonical_sdf(self, points: Tensor) -> Tensor:
        """SDF of canonical points under the default frame's code (the canonical mesh)."""
        return self.field.forward_geonetwork(points)[:, 0]

    @torch.no_grad()
    def deform_vertices(
        self, vertices: Tensor, frame: Optional[int] = None, expression: Optional[Tensor] = None,
        pose: Optional[Tensor] = None, chunk: int = 1 << 15,
    ) -> Tensor:  # fmt: skip
        """Canonical mesh vertices moved by the learned fields into a tracked frame or explicit parameters."""
        out = []
        for start in range(0, vertices.shape[0], chunk):
            v = vertices[start : start + chunk]
            if frame is not None:
                out.append(self.skin.warp(v, torch.full((v.shape[0],), int(frame), dtype=torch.long, device=v.device))[0])
            else:
                out.append(self.skin.warp_explicit(v, expression, pose))
        return torch.cat(out)

    # ------------------------------------------------------------------ losses
    def flame_loss(self, canonical: Tensor) -> Tensor:
        """Eq. 13: E, P, W against the nearest canonical FLAME vertex, summed per point."""
        table = self.skin.canonical_vertices[None]
        idx, _ = self.nearest(canonical.detach(), torch.zeros_like(canonical[:, 0], dtype=torch.long), table)
        return self.blendshape_loss(*self.skin.deformer(canonical.detach()), idx)

    def blendshape_loss(self, expr: Tensor, pose: Tensor, weights: Tensor, idx: Tensor) -> Tensor:
        """Eq. 13's weighted squared errors of E, P, W against FLAME vertices ``idx``, summed per point."""
        cfg = self.config
        return (
            cfg.flame_expression_mult * (expr - self.gt_expr_dirs[idx]).square().flatten(1).sum(-1)
            + cfg.flame_pose_mult * (pose - self.gt_pose_dirs[idx]).square().flatten(1).sum(-1)
            + cfg.flame_weights_mult * (weights - self.gt_weights[idx]).square().sum(-1)
        )

    def backward_flame_loss(self, deformed: Tensor, frames: Tensor) -> Tensor:
        """D-Net / B-Morph pseudo ground truth from the nearest vertex of the frame's FLAME mesh."""
        cfg = self.config
        track = self.subject.track
        x_d = deformed.detach()
        idx, _ = self.nearest(x_d, frames, track.vertices)
        cond = self.backward_condition(frames)
        if cfg.deformer == "d-net":
            target = self.skin.canonical_vertices[idx] - track.vertices[frames, idx]
            return cfg.flame_displacement_mult * (self.backward_net(x_d, cond) - target).square().sum(-1)
        return self.blendshape_loss(*self.backward_net(x_d, cond), idx)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        cfg = self.config
        device = outputs["rgb"].device
        image = batch["image"][..., :3].to(device)
        if "mask" not in batch:
            raise ValueError("imavatar-surface needs foreground masks (mask/ images beside the frames) for its mask loss")
        gt_mask = batch["mask"].reshape(-1).to(device).bool()
        hit, valid = outputs["hit"].reshape(-1), outputs["valid"].reshape(-1)
        n = float(hit.numel())
        inside = hit & gt_mask
        losses = {"rgb_loss": cfg.rgb_loss_mult * (outputs["rgb"] - image).abs()[inside].sum() / n}
        others = valid & ~inside
        bce = F.binary_cross_entropy_with_logits(outputs["occupancy_logit"].reshape(-1)[others], gt_mask[others].float(),
                                                 reduction="sum")  # fmt: skip
        losses["mask_loss"] = cfg.mask_loss_mult * bce / n
        if cfg.use_flame_loss:
            fl = torch.zeros(0, device=device)
            if hit.any() and self.backward_net is None:
                fl = self.flame_loss(outputs["canonical"][hit])
            elif hit.any():
                fl = self.backward_flame_loss(outputs["deformed"][hit], outputs["frame"].reshape(-1)[hit])
            losses["flame_loss"] = cfg.flame_loss_mult * fl.sum() / n
        return losses
