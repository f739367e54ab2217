"""tensorf-local-deform: TensoRF canonical head + local deformation fields on facial keypoints.

Chen et al. 2023 ("Implicit Neural Head Synthesis via Controllable Local Deformation
Fields", CVPR 2023, supplement §1). The whole story:

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

Sampling follows nerfstudio's TensoRF (uniform + importance) on the shared deformed-field
render path (``headstudio/rendering/deformed_nerf.py``): the uniform pass runs without
autograd and deforms every ``coarse_deform_stride``-th sample; only rays that can change the
image are deformed and shaded at their fine samples. The same path gives ``observed_density``
for ``hs-export mesh``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.utils import misc
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
from headstudio.fields.frame_codes import FrameCodes
from headstudio.deformers.deformation import Deformation
from headstudio.models.head_model import HeadModelConfig
from headstudio.rendering.deformed_nerf import DeformedRadianceModel, FrameRows


@dataclass
class TensoRFLocalDeformModelConfig(HeadModelConfig):
    """tensorf-local-deform (Chen et al. 2023). Iteration counts are multiplied by ``schedule_scale``."""

    _target: Type = field(default_factory=lambda: TensoRFLocalDeformModel)
    # --- local deformation fields
    num_keypoints: int = 34
    """Local fields (Chen et al. 2023, supp. §4, Fig. 9/10): 34 = every other DECA landmark, 5 = eyes, mouth corners,
    lower lip, 1 = one global field with about the parameters of the 34 local ones."""
    field_hidden_dim: int = 40
    """Neurons per layer of each local field (Chen et al. 2023, supp. §1: 40)."""
    field_num_layers: int = 3
    """Layers of each local field, LeakyReLU after each (Chen et al. 2023, supp. §1: 3)."""
    top_k_fields: Optional[int] = 4
    """Fields evaluated per point, the nearest ones (ours, for speed; None evaluates all K)."""
    blend_sigma: Optional[float] = None
    """Width of the distance blend in world units (not given in Chen et al. 2023; None: the mean spacing of
    the neutral keypoints)."""
    attention_radius: Optional[float] = None
    """Neighbourhood of a keypoint for its attention mask (not given in Chen et al. 2023; None: blend_sigma)."""
    deformation_latent_dim: int = 32
    """Per-frame deformation code size (not given in Chen et al. 2023; NerFace's 32)."""
    appearance_latent_dim: int = 32
    """Per-frame appearance code size (not given in Chen et al. 2023; NerFace's 32)."""
    # --- TensoRF canonical space
    init_resolution: int = 128
    """Initial grid resolution (Chen et al. 2023, supp. §1 / TensoRF: 128^3)."""
    final_resolution: int = 300
    """Final grid resolution (Chen et al. 2023, supp. §1: 300^3; 200^3 for a smaller subject)."""
    upsampling_iters: Tuple[int, ...] = (2000, 3000, 4000, 5500, 7000)
    """Grid upsampling iterations (TensoRF's schedule)."""
    alpha_mask_iters: Tuple[int, ...] = (2000, 4000)
    """Alpha-mask (pruning, bounding-box shrink) updates (TensoRF's update_AlphaMask_list)."""
    prune_density: float = 1e-4
    """Voxels with density below this are pruned (Chen et al. 2023, supp. §1: 1e-4)."""
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
    """Deformation frozen while TensoRF pre-trains (Chen et al. 2023, supp. §1: 14k iterations)."""
    schedule_scale: float = 1.0
    """Multiplies every iteration count above, for short runs (1.0 = the papers' schedule)."""
    loss_coefficients: Dict[str, float] = field(
        default_factory=lambda: {"rgb_loss": 1.0, "l1_reg": 5e-4, "control_loss": 1e-2, "prior_loss": 1.0}
    )
    """rgb and l1_reg (density sparsity) as nerfstudio's TensoRF; control and prior weights are ours
    (Chen et al. 2023 name the losses without weights)."""
    prior_points: int = 2048
    """Points on the frames' FLAME meshes per iteration for the 3DMM prior (ours)."""
    prior_noise: float = 0.01
    """Std of the offset of prior points from the mesh surface, world units (ours)."""
    background_color: str = "white"
    """Background the head is rendered over; matches the dataparser's compositing colour."""

    def scaled(self, iters: int) -> int:
        return max(1, int(round(iters * self.schedule_scale)))


class TensoRFLocalDeformModel(DeformedRadianceModel):
    """Model of tensorf-local-deform; see the module docstring."""

    config: TensoRFLocalDeformModelConfig
    export_kind = "density"

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
        self.setup_deformed_rendering(
            cfg.num_uniform_samples, cfg.num_samples, cfg.coarse_deform_stride, cfg.background_color
        )

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
            self.rebuild_grid_optimizer(attrs, keep_state=False)

        def prune(step: int) -> None:
            self.field.update_alpha_mask(self.config.prune_density)

        # A resumed run (``--load-dir``): nerfstudio built the optimizers before ``update_to_step`` grew the
        # grid, and loaded the checkpoint's optimizer state into them; move that state onto the grown grid.
        if attrs.optimizers is not None and "encodings" in attrs.optimizers.optimizers:
            held = {id(p) for g in attrs.optimizers.optimizers["encodings"].param_groups for p in g["params"]}
            if held != {id(p) for p in self.field.grid_parameters()}:
                self.rebuild_grid_optimizer(attrs, keep_state=True)
        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step, update_every_num_iters=1),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], upsample, iters=tuple(self.upsampling_iters)),
            TrainingCallback(
                [TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                prune,
                iters=tuple(self.config.scaled(i) for i in self.config.alpha_mask_iters),
            ),
        ]

    def rebuild_grid_optimizer(self, attrs: TrainingCallbackAttributes, keep_state: bool) -> None:
        """Optimizer (and scheduler) of the grid parameters rebuilt on the current grid tensors; with
        ``keep_state`` the moment estimates and the schedule position carry over (resume)."""
        opt_cfg = attrs.optimizers.config["encodings"]
        old_opt = attrs.optimizers.optimizers["encodings"]
        new_opt = opt_cfg["optimizer"].setup(params=self.get_param_groups()["encodings"])
        if keep_state:
            new_opt.load_state_dict(old_opt.state_dict())
        attrs.optimizers.optimizers["encodings"] = new_opt
        if opt_cfg["scheduler"]:
            old_sched = attrs.optimizers.schedulers.get("encodings")
            sched = opt_cfg["scheduler"].setup().get_scheduler(optimizer=new_opt, lr_init=opt_cfg["optimizer"].lr)
            if keep_state and old_sched is not None:
                sched.load_state_dict(old_sched.state_dict())
            attrs.optimizers.schedulers["encodings"] = sched

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

    # ------------------------------------------------------------------ deformation and canonical field
    @property
    def deformation_trainable(self) -> bool:
        return not self.deformation_frozen

    def frame_conditioning(self, frames: Tensor) -> Dict[str, Tensor]:
        """Keypoints, masked-field inputs, deformation codes and head/neck pose of the distinct frames."""
        track = self.subject.track
        pose = track.pose[frames]
        return {
            "keypoints": torch.einsum("kl,rlc->rkc", self.keypoint_rows, track.landmarks[frames]),
            "cond": torch.cat([track.expression[frames], pose[:, 6:9]], dim=-1),
            "latent": self.deformation_codes(frames),
            "pose": pose[:, :6],
        }

    def deform(self, points: Tensor, row: Tensor, rows: FrameRows) -> Deformation:
        """Local fields: offset to canonical space, and the local control penalty of each point."""
        d = rows.data
        return self.deformer(points, row, d["keypoints"], d["cond"], d["latent"], d["pose"])

    def canonical_density(self, points: Tensor) -> Tensor:
        return self.field.density(points)

    def canonical_radiance(self, points: Tensor, directions: Tensor, frames: Tensor) -> Tuple[Tensor, Tensor]:
        appearance = self.appearance_codes(frames)[:, None].expand(-1, points.shape[1], -1)
        return self.field.density(points), self.field.color(points, directions, appearance)

    # ------------------------------------------------------------------ losses
    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        loss = {
            "rgb_loss": F.mse_loss(outputs["rgb"], image),
            "l1_reg": torch.cat([p.reshape(-1) for p in self.field.density_grid.parameters()]).abs().mean(),
        }
        if self.training and not self.deformation_frozen:
            loss["control_loss"] = outputs["deformation_penalty"]
            loss["prior_loss"] = self.prior_loss(outputs["frame_rows"])
        return misc.scale_dict(loss, self.config.loss_coefficients)

    def prior_loss(self, rows: FrameRows) -> Tensor:
        """3DMM prior: near the frame's FLAME mesh the offset follows the mesh to its neutral pose."""
        track = self.subject.track
        points, targets, row = sample_mesh_prior(
            track.vertices[rows.frames],
            self.subject.canonical_vertices,
            self.config.prior_points,
            self.config.prior_noise,
        )
        offset = self.deform(points, row, rows).offset
        return F.mse_loss(offset, targets)
