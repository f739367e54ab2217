"""rignerf-star: RigNeRF (Athar et al., CVPR 2022) adapted to monocular video, as Chen et al. 2023's RigNeRF*.

Chen et al. 2023 (supplement, "RigNeRF*"). The whole story:

1. The tracked head pose is folded into the camera extrinsics by the dataparser
   (``flame-video-data``'s default): the head is static, the camera moves.
2. Each ray carries its frame (``SubjectState``). The frame's FLAME mesh without the rigid
   head pose is the 3DMM guide; samples move to canonical space by the 3DMM-guided
   displacement of their nearest guide vertex plus a residual MLP on positional encodings
   of the point and of that displacement and the frame's deformation code
   (``headstudio/deformers/rignerf.py``; nearest vertices from ``headstudio/ops/nearest.py``).
3. A canonical NeRF MLP (``headstudio/fields/nerf_mlp.py``) gives density, and colour from
   the view direction, the frame's appearance code and (RigNeRF Fig. 2) its expression and pose.
4. Coarse-to-fine sampling with one network on the shared deformed-field render path
   (``headstudio/rendering/deformed_nerf.py``): a uniform pass without autograd, deforming
   every ``coarse_deform_stride``-th sample, feeds the importance sampler; the fine samples
   are rendered and trained with the RGB loss.
5. Per-frame deformation and appearance codes (``FrameCodes``), the same sizes as
   tensorf-local-deform; unseen frames use the first training frame's codes (RigNeRF*†) or
   codes fitted at test time (RigNeRF*), both in ``ns-eval`` (``headstudio/pipelines/head_pipeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.utils import misc
from torch import Tensor
from torch.nn import Parameter

from headstudio.deformers.rignerf import RigNeRFDeformation, guided_displacement
from headstudio.fields.nerf_mlp import ConditionedNeRFField
from headstudio.fields.frame_codes import FrameCodes
from headstudio.ops.nearest import NearestVertex
from headstudio.deformers.deformation import Deformation
from headstudio.models.head_model import HeadModelConfig
from headstudio.rendering.deformed_nerf import DeformedRadianceModel, FrameRows


@dataclass
class RigNeRFStarModelConfig(HeadModelConfig):
    """RigNeRF* (Chen et al. 2023's monocular adaptation of RigNeRF)."""

    _target: Type = field(default_factory=lambda: RigNeRFStarModel)
    # --- deformation
    deformation_latent_dim: int = 32
    """Per-frame deformation code (Chen et al. 2023: the same latent sizes as its own method; ours is 32)."""
    appearance_latent_dim: int = 32
    """Per-frame appearance code (Chen et al. 2023: the same latent sizes as its own method; ours is 32)."""
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


class RigNeRFStarModel(DeformedRadianceModel):
    """Model of rignerf-star; see the module docstring."""

    config: RigNeRFStarModelConfig
    export_kind = "density"

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
        guide = torch.cat([self.guide_of(slice(i, i + 128)) for i in range(0, track.num_frames, 128)])
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
        self.setup_deformed_rendering(
            cfg.num_coarse_samples, cfg.num_importance_samples, cfg.coarse_deform_stride, cfg.background_color
        )

    @torch.no_grad()
    def guide_of(self, rows: slice) -> Tensor:
        """The 3DMM guide mesh of track rows: the tracked mesh, without global and neck rotation unless
        ``guide_includes_neck``."""
        track = self.subject.track
        if self.config.guide_includes_neck:
            return track.vertices[rows]
        pose = track.pose[rows].clone()
        pose[:, :6] = 0.0
        return track.evaluate(track.expression[rows], pose).vertices

    def refresh_track_row(self, row: int, nearest: int) -> None:
        self.guide_vertices[row] = self.guide_of(slice(row, row + 1))[0]

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "fields": list(self.field.parameters()),
            "deformation": list(self.deformer.parameters()) + list(self.deformation_codes.parameters()),
            "appearance_codes": list(self.appearance_codes.parameters()),
        }

    # ------------------------------------------------------------------ deformation and canonical field
    def frame_conditioning(self, frames: Tensor) -> Dict[str, Tensor]:
        """Deformation codes of the distinct frames (the guide mesh is looked up per point)."""
        return {"latent": self.deformation_codes(frames)}

    def guided(self, points: Tensor, frame: Tensor) -> Tensor:
        """3DMM-guided displacement of observed points of the given frames."""
        return guided_displacement(
            points, frame, self.guide_vertices, self.subject.canonical_vertices, self.nearest, self.config.guide_falloff
        )

    def deform(self, points: Tensor, row: Tensor, rows: FrameRows) -> Deformation:
        """Observed-to-canonical offset: the guided displacement plus the residual MLP."""
        guide = self.guided(points, rows.frames[row])
        return Deformation(offset=self.deformer(points, guide, rows.data["latent"][row]))

    def condition(self, frames: Tensor) -> Tensor:
        """Colour conditioning of the frames: expression and non-rigid pose (neck, jaw, eyes)."""
        track = self.subject.track
        return torch.cat([track.expression[frames], track.pose[frames, 3:]], dim=-1)

    def canonical_density(self, points: Tensor) -> Tensor:
        return self.field.density_at(points)[0]

    def canonical_radiance(self, points: Tensor, directions: Tensor, frames: Tensor) -> Tuple[Tensor, Tensor]:
        density, features = self.field.density_at(points)
        condition = self.condition(frames)[:, None] if self.condition_dim else None
        rgb = self.field.color_at(features, directions, self.appearance_codes(frames)[:, None], condition)
        return density, rgb

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        return misc.scale_dict({"rgb_loss": F.mse_loss(outputs["rgb"], image)}, self.config.loss_coefficients)
