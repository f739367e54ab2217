"""rignerf-star: RigNeRF (Athar et al., CVPR 2022) adapted to monocular video, as seed 000's RigNeRF*.

Seed 000 (supplement, "RigNeRF*") and ../shared/REFERENCE.md. The whole story:

1. The tracked head pose is folded into the camera extrinsics by the dataparser
   (``flame-video-data``'s default): the head is static, the camera moves.
2. Each ray carries its frame (``SubjectState``). The frame's FLAME mesh without the rigid
   head pose is the 3DMM guide; samples move to canonical space by the 3DMM-guided
   displacement of their nearest guide vertex plus a residual MLP on positional encodings
   of the point and of that displacement and the frame's deformation code
   (``headstudio/deformers/rignerf.py``; nearest vertices from ``headstudio/nearest.py``).
3. A canonical NeRF MLP (``headstudio/fields/nerf_mlp.py``) gives density, and colour from
   the view direction, the frame's appearance code and (RigNeRF Fig. 2) its expression and pose.
4. Coarse-to-fine sampling with one network: a uniform pass without autograd (deforming every
   ``coarse_deform_stride``-th sample, ``headstudio/rendering/deformed_sampling.py``) feeds
   the importance sampler; the fine samples are rendered and trained with the RGB loss.
5. Per-frame deformation and appearance codes (``FrameCodes``), the same sizes as
   tensorf-local-deform; unseen frames use the first training frame's codes (RigNeRF*†) or
   codes fitted at test time (RigNeRF*), both in ``ns-eval`` (``headstudio/pipeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.utils import colors, misc
from torch import Tensor
from torch.nn import Parameter

from headstudio.deformers.rignerf import RigNeRFDeformation, guided_displacement
from headstudio.fields.nerf_mlp import APPEARANCE, CONDITION, ConditionedNeRFField
from headstudio.latent_codes import FrameCodes
from headstudio.models.head_model import HeadModel
from headstudio.nearest import NearestVertex
from headstudio.rendering.deformed_sampling import strided_offsets


@dataclass
class RigNeRFStarModelConfig(ModelConfig):
    """RigNeRF* (seed 000's monocular adaptation of RigNeRF)."""

    _target: Type = field(default_factory=lambda: RigNeRFStarModel)
    # --- deformation
    deformation_latent_dim: int = 32
    """Per-frame deformation code (seed 000: the same latent sizes as its own method; ours is 32)."""
    appearance_latent_dim: int = 32
    """Per-frame appearance code (seed 000: the same latent sizes as its own method; ours is 32)."""
    deformation_num_layers: int = 6
    """Residual deformation MLP depth (RigNeRF extends Nerfies' deformation MLP: 6 layers, skip at 4)."""
    deformation_layer_width: int = 128
    """Residual deformation MLP width (Nerfies' deformation MLP: 128)."""
    point_frequencies: int = 8
    """Positional-encoding frequencies of the point into the residual MLP (Nerfies' warp field: 8)."""
    displacement_frequencies: int = 4
    """Positional-encoding frequencies of the 3DMM displacement (not given in our sources; ours)."""
    guide_falloff: float = 1.0
    """3DMM displacement damped by exp(-distance / falloff), world units (RigNeRF eq. 3 divides by
    exp(DistToMesh): 1 scene unit; our world is FLAME x 4, so 1 unit is 25 cm)."""
    guide_includes_neck: bool = True
    """RigNeRF* guides with the mesh without head pose. flame-video-data folds FLAME's global rotation
    into the camera; the neck rotation stays in the scene and is part of the guide mesh (False: the
    guide is expression, jaw and eyes only, the residual MLP must learn the neck)."""
    nearest_backend: Literal["auto", "kdtree", "torch", "pytorch3d"] = "auto"
    """Nearest-vertex search: auto = pytorch3d when importable, else chunked torch on CUDA, KD-trees on CPU."""
    # --- canonical NeRF
    num_layers: int = 8
    """Canonical NeRF trunk depth (NeRF: 8)."""
    layer_width: int = 256
    """Canonical NeRF trunk width (NeRF: 256)."""
    head_num_layers: int = 2
    """Colour head layers (nerfstudio's NeRF field: 2)."""
    head_layer_width: int = 128
    """Colour head width (NeRF: 128)."""
    position_frequencies: int = 10
    """Positional-encoding frequencies of the canonical point (NeRF: 10)."""
    direction_frequencies: int = 4
    """Positional-encoding frequencies of the view direction (NeRF: 4)."""
    condition_color_on_expression: bool = True
    """The colour head also reads the frame's expression and non-rigid pose (RigNeRF Fig. 2: the colour
    MLP takes beta_exp and beta_pose)."""
    num_coarse_samples: int = 64
    """Uniform samples per ray (NeRF: 64)."""
    num_importance_samples: int = 128
    """Importance samples per ray, rendered and trained (NeRF: 128)."""
    coarse_deform_stride: int = 8
    """Deform every n-th uniform sample and interpolate (ours, for speed; 1 deforms all)."""
    loss_coefficients: Dict[str, float] = field(default_factory=lambda: {"rgb_loss": 1.0})
    """RGB loss only (RigNeRF trains with the photometric loss)."""
    background_color: str = "white"
    """Background the head is rendered over; matches the dataparser's compositing colour."""


class RigNeRFStarModel(HeadModel):
    """Model of rignerf-star; see the module docstring."""

    config: RigNeRFStarModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        meta = self.kwargs["metadata"]
        if not meta.get("head_pose_folded", True):
            raise ValueError(
                "rignerf-star folds the tracked head pose into the cameras (RigNeRF*): "
                "drop --pipeline.datamanager.dataparser.fold-head-pose False"
            )
        track = self.subject.track
        if cfg.guide_includes_neck:
            guide = track.vertices
        else:
            pose = track.pose.clone()
            pose[:, :6] = 0.0
            guide = torch.cat(
                [track.evaluate(track.expression[i : i + 128], pose[i : i + 128]).vertices for i in range(0, len(pose), 128)]
            )
        self.register_buffer("guide_vertices", guide.detach().clone(), persistent=False)
        self.nearest = NearestVertex(cfg.nearest_backend)
        bound = float(self.scene_box.aabb.abs().max())
        self.deformer = RigNeRFDeformation(
            latent_dim=cfg.deformation_latent_dim,
            num_layers=cfg.deformation_num_layers,
            layer_width=cfg.deformation_layer_width,
            point_frequencies=cfg.point_frequencies,
            displacement_frequencies=cfg.displacement_frequencies,
            scene_scale=bound,
        )
        train = self.subject.train_frames
        self.deformation_codes = FrameCodes(self.subject.num_frames, cfg.deformation_latent_dim, train)
        self.appearance_codes = FrameCodes(self.subject.num_frames, cfg.appearance_latent_dim, train)
        self.condition_dim = (self.subject.num_expression + 12) if cfg.condition_color_on_expression else 0
        self.field = ConditionedNeRFField(
            self.scene_box.aabb,
            appearance_dim=cfg.appearance_latent_dim,
            condition_dim=self.condition_dim,
            num_layers=cfg.num_layers,
            layer_width=cfg.layer_width,
            head_num_layers=cfg.head_num_layers,
            head_layer_width=cfg.head_layer_width,
            position_frequencies=cfg.position_frequencies,
            direction_frequencies=cfg.direction_frequencies,
        )
        self.collider = AABBBoxCollider(scene_box=self.scene_box, near_plane=0.05)
        self.sampler_uniform = UniformSampler(num_samples=cfg.num_coarse_samples, single_jitter=True)
        self.sampler_pdf = PDFSampler(num_samples=cfg.num_importance_samples, single_jitter=True, include_original=False)
        self.background = colors.get_color(cfg.background_color)
        self.renderer_rgb = RGBRenderer(background_color=self.background)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer()

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "fields": list(self.field.parameters()),
            "deformation": list(self.deformer.parameters()) + list(self.deformation_codes.parameters()),
            "appearance_codes": list(self.appearance_codes.parameters()),
        }

    # ------------------------------------------------------------------ deformation
    def frame_rows(self, frames: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Unique frames of the rays, each ray's row among them, and the rows' deformation codes."""
        uniq, inverse = torch.unique(frames, return_inverse=True)
        return uniq, inverse, self.deformation_codes(uniq)

    def guided(self, points: Tensor, frame: Tensor) -> Tensor:
        """3DMM-guided displacement of observed points of the given frames."""
        return guided_displacement(
            points, frame, self.guide_vertices, self.subject.canonical_vertices, self.nearest, self.config.guide_falloff
        )

    def offset(self, points: Tensor, row: Tensor, uniq: Tensor, latent: Tensor) -> Tensor:
        """Observed-to-canonical offset of points whose frame is ``uniq[row]``."""
        return self.deformer(points, self.guided(points, uniq[row]), latent[row])

    def condition(self, frames: Tensor) -> Tensor:
        """Colour conditioning of the frames: expression and non-rigid pose (neck, jaw, eyes)."""
        track = self.subject.track
        return torch.cat([track.expression[frames], track.pose[frames, 3:]], dim=-1)

    # ------------------------------------------------------------------ rendering
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        frames = self.subject.frame_of(ray_bundle)
        uniq, ray_row, latent = self.frame_rows(frames)
        samples = self.sampler_uniform(ray_bundle)
        with torch.no_grad():
            pos = samples.frustums.get_positions()
            off = strided_offsets(
                pos, ray_row, lambda x, row: self.offset(x, row, uniq, latent), self.config.coarse_deform_stride
            )
            density, _ = self.field.density_at(pos + off)
            weights = samples.get_weights(density)
            active = self.renderer_accumulation(weights).reshape(-1) >= 1e-4
        fine = self.sampler_pdf(ray_bundle, samples, weights)
        density = torch.zeros(*fine.shape, 1, device=pos.device)
        rgb = self.background.to(pos.device).expand(*fine.shape, 3).clone()
        if active.any():
            sub = fine[active]
            p = sub.frustums.get_positions()
            k = p.shape[1]
            point_row = ray_row[active][:, None].expand(-1, k).reshape(-1)
            sub.frustums.set_offsets(self.offset(p.reshape(-1, 3), point_row, uniq, latent).reshape(p.shape))
            sub_frames = frames[active]
            sub.metadata = {APPEARANCE: self.appearance_codes(sub_frames)[:, None]}
            if self.condition_dim:
                sub.metadata[CONDITION] = self.condition(sub_frames)[:, None]
            out = self.field(sub)
            density = density.index_put((active,), out[FieldHeadNames.DENSITY])
            rgb = rgb.index_put((active,), out[FieldHeadNames.RGB])
        weights = fine.get_weights(density)
        return {
            "rgb": self.renderer_rgb(rgb=rgb, weights=weights),
            "accumulation": self.renderer_accumulation(weights),
            "depth": self.renderer_depth(weights, fine),
        }

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        return misc.scale_dict({"rgb_loss": F.mse_loss(outputs["rgb"], image)}, self.config.loss_coefficients)

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def observed_density(self, points: Tensor, frame: int) -> Tensor:
        """Density at world points with the head in ``frame``'s state (for per-frame meshes)."""
        frames = torch.full((1,), int(frame), dtype=torch.long, device=points.device)
        uniq, _, latent = self.frame_rows(frames)
        row = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
        return self.field.density_at(points + self.offset(points, row, uniq, latent))[0]
