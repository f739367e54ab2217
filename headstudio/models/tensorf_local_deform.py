"""tensorf-local-deform: TensoRF canonical head + local deformation fields on facial keypoints.

Seed 000 (Chen et al., "Implicit Neural Head Synthesis via Controllable Local Deformation
Fields", CVPR 2023, supplement §1) and ../shared/REFERENCE.md. The whole story:

1. Each ray carries its frame (``SubjectState``); the frame gives FLAME landmarks (the
   keypoints move with them), expression, jaw, head/neck pose, and per-frame deformation
   and appearance codes (``FrameCodes``).
2. Samples along the ray are moved to canonical space by ``LocalDeformationFields``:
   34 (or 5, or 1 global) 3-layer 40-neuron LeakyReLU MLPs blended by keypoint distance,
   each seeing the expression and jaw masked by its attention row.
3. A TensoRF VM field (``TensoRFCanonicalField``) gives ReLU density and colour, the
   appearance code entering the colour decoder; the lookup passes gradients to the points.
4. Losses: RGB, TensoRF's L1 density sparsity, the local control loss (each field's
   offset penalised where other fields own the point) and the 3DMM prior (at points on the
   frame's FLAME mesh the offset should match the mesh's motion to the neutral mesh).
5. Schedule: the deformation (fields and deformation codes) is frozen while TensoRF
   pre-trains; the grid grows 128^3 -> 300^3 on TensoRF's iterations; the alpha mask
   prunes canonical voxels with density below 1e-4.

Sampling follows nerfstudio's TensoRF (uniform + importance). The uniform pass only feeds
the importance sampler (no gradient), so it runs without autograd and evaluates the
deformation on every ``coarse_deform_stride``-th sample, interpolating along the ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.utils import colors, misc
from torch import Tensor
from torch.nn import Parameter

from headstudio.deformers.local_fields import (
    LocalDeformationFields,
    attention_mask,
    keypoint_selection,
    matched_global_width,
    mean_neighbour_distance,
)
from headstudio.deformers.mesh_prior import sample_mesh_prior
from headstudio.fields.tensorf import TensoRFCanonicalField, upsampling_resolutions
from headstudio.latent_codes import FrameCodes
from headstudio.models.head_model import HeadModel
from headstudio.rendering.deformed_sampling import strided_offsets


@dataclass
class TensoRFLocalDeformModelConfig(ModelConfig):
    """tensorf-local-deform (seed 000). Iteration counts are multiplied by ``schedule_scale``."""

    _target: Type = field(default_factory=lambda: TensoRFLocalDeformModel)
    # --- local deformation fields
    num_keypoints: int = 34
    """Local fields (seed 000 §4, Fig. 9/10): 34 = every other DECA landmark, 5 = eyes, mouth corners,
    lower lip, 1 = one global field with about the parameters of the 34 local ones."""
    field_hidden_dim: int = 40
    """Neurons per layer of each local field (seed 000 §1: 40)."""
    field_num_layers: int = 3
    """Layers of each local field, LeakyReLU after each (seed 000 §1: 3)."""
    top_k_fields: Optional[int] = 4
    """Fields evaluated per point, the nearest ones (ours, for speed; None evaluates all K)."""
    blend_sigma: Optional[float] = None
    """Width of the distance blend in world units (not given in seed 000; None: the mean spacing of
    the neutral keypoints)."""
    attention_radius: Optional[float] = None
    """Neighbourhood of a keypoint for its attention mask (not given in seed 000; None: blend_sigma)."""
    deformation_latent_dim: int = 32
    """Per-frame deformation code size (not given in seed 000; NerFace's 32)."""
    appearance_latent_dim: int = 32
    """Per-frame appearance code size (not given in seed 000; NerFace's 32)."""
    # --- TensoRF canonical space
    init_resolution: int = 128
    """Initial grid resolution (seed 000 §1 / TensoRF: 128^3)."""
    final_resolution: int = 300
    """Final grid resolution (seed 000 §1: 300^3; 200^3 for a smaller subject)."""
    upsampling_iters: Tuple[int, ...] = (2000, 3000, 4000, 5500, 7000)
    """Grid upsampling iterations (TensoRF's schedule)."""
    alpha_mask_iters: Tuple[int, ...] = (2000, 4000)
    """Alpha-mask (pruning, bounding-box shrink) updates (TensoRF's update_AlphaMask_list)."""
    prune_density: float = 1e-4
    """Voxels with density below this are pruned (seed 000 §1: 1e-4)."""
    num_density_components: int = 16
    """VM density components per plane (TensoRF: 16)."""
    num_color_components: int = 48
    """VM colour components per plane (TensoRF: 48)."""
    color_feature_dim: int = 27
    """Colour feature size into the decoder (TensoRF: 27)."""
    density_scale: float = 25.0
    """Multiplier on the ReLU density (TensoRF's distance_scale: 25)."""
    num_uniform_samples: int = 200
    """Uniform samples per ray (nerfstudio's TensoRF: 200)."""
    num_samples: int = 50
    """Importance samples per ray (nerfstudio's TensoRF: 50)."""
    coarse_deform_stride: int = 8
    """Deform every n-th uniform sample and interpolate (ours, for speed; 1 deforms all)."""
    # --- schedule and losses
    pretrain_iters: int = 14000
    """Deformation frozen while TensoRF pre-trains (seed 000 §1: 14k iterations)."""
    schedule_scale: float = 1.0
    """Multiplies every iteration count above, for short runs (1.0 = the papers' schedule)."""
    loss_coefficients: Dict[str, float] = field(
        default_factory=lambda: {"rgb_loss": 1.0, "l1_reg": 5e-4, "control_loss": 1e-2, "prior_loss": 1.0}
    )
    """rgb and l1_reg (density sparsity) as nerfstudio's TensoRF; control and prior weights are ours
    (seed 000 names the losses without weights)."""
    prior_points: int = 2048
    """Points on the frames' FLAME meshes per iteration for the 3DMM prior (ours)."""
    prior_noise: float = 0.01
    """Std of the offset of prior points from the mesh surface, world units (ours)."""
    background_color: str = "white"
    """Background the head is rendered over; matches the dataparser's compositing colour."""

    def scaled(self, iters: int) -> int:
        return max(1, int(round(iters * self.schedule_scale)))


class TensoRFLocalDeformModel(HeadModel):
    """Model of tensorf-local-deform; see the module docstring."""

    config: TensoRFLocalDeformModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        self.step = 0
        # Keypoints as combinations of the 68 landmarks; neutral positions set the scales.
        self.register_buffer("keypoint_rows", keypoint_selection(cfg.num_keypoints), persistent=False)
        canonical_kp = self.keypoint_rows @ self.subject.canonical_landmarks
        spacing = mean_neighbour_distance(canonical_kp)
        if cfg.num_keypoints == 1:
            spacing = mean_neighbour_distance(self.subject.canonical_landmarks[::2])
        sigma = cfg.blend_sigma or spacing
        radius = cfg.attention_radius or sigma
        num_expr = self.subject.num_expression
        if cfg.num_keypoints == 1:
            attention = torch.ones(1, num_expr + 3)
            width = matched_global_width(
                3 + num_expr + 3 + cfg.deformation_latent_dim + 6, cfg.field_hidden_dim, cfg.field_num_layers, 34
            )
        else:
            attention = attention_mask(
                lambda e, p: self.subject.track.evaluate(e, p).vertices, canonical_kp, num_expr, radius
            )
            width = cfg.field_hidden_dim
        self.deformer = LocalDeformationFields(
            attention,
            latent_dim=cfg.deformation_latent_dim,
            pose_dim=6,
            hidden_dim=width,
            num_layers=cfg.field_num_layers,
            blend_sigma=sigma,
            top_k=cfg.top_k_fields,
        )
        train = self.subject.train_frames
        self.deformation_codes = FrameCodes(self.subject.num_frames, cfg.deformation_latent_dim, train)
        self.appearance_codes = FrameCodes(self.subject.num_frames, cfg.appearance_latent_dim, train)
        self.field = TensoRFCanonicalField(
            self.scene_box.aabb,
            resolution=cfg.init_resolution,
            num_density_components=cfg.num_density_components,
            num_color_components=cfg.num_color_components,
            color_feature_dim=cfg.color_feature_dim,
            appearance_dim=cfg.appearance_latent_dim,
            density_scale=cfg.density_scale,
        )
        self.upsampling_iters = [cfg.scaled(i) for i in cfg.upsampling_iters]
        self.upsampling_steps = upsampling_resolutions(
            cfg.init_resolution, cfg.final_resolution, len(cfg.upsampling_iters)
        )
        self.collider = AABBBoxCollider(scene_box=self.scene_box, near_plane=0.05)
        self.sampler_uniform = UniformSampler(num_samples=cfg.num_uniform_samples, single_jitter=True)
        self.sampler_pdf = PDFSampler(num_samples=cfg.num_samples, single_jitter=True, include_original=False)
        self.background = colors.get_color(cfg.background_color)
        self.renderer_rgb = RGBRenderer(background_color=self.background)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer()

    # ------------------------------------------------------------------ schedule
    @property
    def deformation_frozen(self) -> bool:
        return self.training and self.step < self.config.scaled(self.config.pretrain_iters)

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        def set_step(step: int) -> None:
            self.step = step

        def upsample(step: int) -> None:
            resolution = self.upsampling_steps[self.upsampling_iters.index(step)]
            self.field.upsample(resolution)
            # New parameter tensors: the grid optimizer must be rebuilt on them (as nerfstudio's TensoRF).
            opt_cfg = attrs.optimizers.config["encodings"]
            params = self.get_param_groups()["encodings"]
            attrs.optimizers.optimizers["encodings"] = opt_cfg["optimizer"].setup(params=params)
            if opt_cfg["scheduler"]:
                attrs.optimizers.schedulers["encodings"] = (
                    opt_cfg["scheduler"]
                    .setup()
                    .get_scheduler(optimizer=attrs.optimizers.optimizers["encodings"], lr_init=opt_cfg["optimizer"].lr)
                )

        def prune(step: int) -> None:
            self.field.update_alpha_mask(self.config.prune_density)

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step, update_every_num_iters=1),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], upsample, iters=tuple(self.upsampling_iters)),
            TrainingCallback(
                [TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                prune,
                iters=tuple(self.config.scaled(i) for i in self.config.alpha_mask_iters),
            ),
        ]

    def update_to_step(self, step: int) -> None:
        """Grow the grid to the resolution it had at ``step`` (before loading a checkpoint)."""
        self.step = step
        done = [r for it, r in zip(self.upsampling_iters, self.upsampling_steps) if it <= step]
        if done and done[-1] != self.field.density_grid.resolution:
            self.field.upsample(done[-1])

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "fields": self.field.network_parameters(),
            "encodings": self.field.grid_parameters(),
            "deformation": list(self.deformer.parameters()) + list(self.deformation_codes.parameters()),
            "appearance_codes": list(self.appearance_codes.parameters()),
        }

    # ------------------------------------------------------------------ deformation
    def frame_rows(self, frames: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Per-unique-frame conditioning of the local fields, and each ray's row in it."""
        uniq, inverse = torch.unique(frames, return_inverse=True)
        track = self.subject.track
        pose = track.pose[uniq]
        rows = {
            "keypoints": torch.einsum("kl,rlc->rkc", self.keypoint_rows, track.landmarks[uniq]),
            "cond": torch.cat([track.expression[uniq], pose[:, 6:9]], dim=-1),
            "latent": self.deformation_codes(uniq),
            "pose": pose[:, :6],
            "frames": uniq,
        }
        return inverse, rows

    def deform(self, points: Tensor, row: Tensor, rows: Dict[str, Tensor]):
        """Observed points -> local-field result (offset to canonical, control penalty)."""
        return self.deformer(points, row, rows["keypoints"], rows["cond"], rows["latent"], rows["pose"])

    # ------------------------------------------------------------------ rendering
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        frames = self.subject.frame_of(ray_bundle)
        ray_row, rows = self.frame_rows(frames)
        samples = self.sampler_uniform(ray_bundle)
        with torch.no_grad():
            pos = samples.frustums.get_positions()  # R S 3
            off = strided_offsets(
                pos, ray_row, lambda x, row: self.deform(x, row, rows).offset, self.config.coarse_deform_stride
            )
            density = self.field.density(pos + off)
            weights = samples.get_weights(density)
            active = self.renderer_accumulation(weights).reshape(-1) >= 1e-4
        fine = self.sampler_pdf(ray_bundle, samples, weights)
        density = torch.zeros(*fine.shape, 1, device=pos.device)
        rgb = self.background.to(pos.device).expand(*fine.shape, 3).clone()
        control = torch.zeros((), device=pos.device)
        if active.any():
            sub = fine[active]
            p = sub.frustums.get_positions()
            k = p.shape[1]
            point_row = ray_row[active][:, None].expand(-1, k).reshape(-1)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.deformation_frozen):
                result = self.deform(p.reshape(-1, 3), point_row, rows)
            canonical = p + result.offset.reshape(p.shape)
            appearance = self.appearance_codes(frames[active])[:, None].expand(-1, k, -1)
            directions = sub.frustums.directions
            density = density.index_put((active,), self.field.density(canonical))
            rgb = rgb.index_put((active,), self.field.color(canonical, directions, appearance))
            control = result.control.mean()
        weights = fine.get_weights(density)
        outputs = {
            "rgb": self.renderer_rgb(rgb=rgb, weights=weights),
            "accumulation": self.renderer_accumulation(weights),
            "depth": self.renderer_depth(weights, fine),
        }
        if self.training:
            outputs["control"] = control
            outputs["frame_rows"] = rows
        return outputs

    # ------------------------------------------------------------------ losses
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        loss = {
            "rgb_loss": F.mse_loss(outputs["rgb"], image),
            "l1_reg": torch.cat([p.reshape(-1) for p in self.field.density_grid.parameters()]).abs().mean(),
        }
        if self.training and not self.deformation_frozen:
            loss["control_loss"] = outputs["control"]
            loss["prior_loss"] = self.prior_loss(outputs["frame_rows"])
        return misc.scale_dict(loss, self.config.loss_coefficients)

    def prior_loss(self, rows: Dict[str, Tensor]) -> Tensor:
        """3DMM prior: near the frame's FLAME mesh the offset follows the mesh to its neutral pose."""
        track = self.subject.track
        points, targets, row = sample_mesh_prior(
            track.vertices[rows["frames"]],
            self.subject.canonical_vertices,
            self.config.prior_points,
            self.config.prior_noise,
        )
        offset = self.deform(points, row, rows).offset
        return F.mse_loss(offset, targets)

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def observed_density(self, points: Tensor, frame: int) -> Tensor:
        """Density at world points with the head in ``frame``'s state (for per-frame meshes)."""
        frames = torch.full((1,), int(frame), dtype=torch.long, device=points.device)
        _, rows = self.frame_rows(frames)
        row = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
        return self.field.density(points + self.deform(points, row, rows).offset)
