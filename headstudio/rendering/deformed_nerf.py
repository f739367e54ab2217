"""Rendering a deformed radiance field: the one render path of the volumetric head methods.

tensorf-local-deform and rignerf-star differ only in how observed points move to canonical
space and in the canonical field they read there. Everything else lives here, once:

1. The rays' frames are grouped (:class:`FrameRows`): each distinct frame's conditioning is
   computed once, each ray knows its row.
2. Coarse-to-fine sampling. The uniform pass only feeds the importance sampler, so it runs
   without autograd and deforms every ``coarse_deform_stride``-th sample, interpolating the
   offsets along the ray (``strided_offsets``).
3. Rays whose coarse weights sum below ``1e-4`` cannot change the image: only the others
   (``active``) are deformed, shaded and composited at their fine samples; the rest keep the
   background colour and zero accumulation, and the per-ray results are placed among them.
4. The same deformation gives per-frame densities for mesh export (``observed_density``).

A method subclasses :class:`DeformedRadianceModel` and supplies ``frame_conditioning``,
``deform``, ``canonical_density`` and ``canonical_radiance``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from nerfstudio.utils import colors
from torch import Tensor

from headstudio.deformers.deformation import Deformation
from headstudio.models.head_model import HeadModel
from headstudio.rendering.deformed_sampling import strided_offsets

ACTIVE_ACCUMULATION = 1e-4
"""Rays whose coarse accumulation is below this are left as background (no fine deformation)."""


@dataclass
class FrameRows:
    """The distinct frames of a ray batch, each ray's row among them, and per-row conditioning."""

    frames: Int[Tensor, "U"]
    """The distinct frame indices."""
    ray_row: Int[Tensor, "R"]
    """Each ray's row in ``frames``."""
    data: Dict[str, Tensor]
    """Per-row conditioning of the deformation (first dimension U), as the method defines it."""


class DeformedRadianceModel(HeadModel):
    """Head model rendering a canonical radiance field through a per-frame deformation."""

    def setup_deformed_rendering(
        self, num_coarse: int, num_fine: int, coarse_deform_stride: int, background_color: str
    ) -> None:
        """Collider, samplers and renderers; call from ``populate_modules``."""
        self.coarse_deform_stride = coarse_deform_stride
        self.collider = AABBBoxCollider(scene_box=self.scene_box, near_plane=0.05)
        self.sampler_uniform = UniformSampler(num_samples=num_coarse, single_jitter=True)
        self.sampler_pdf = PDFSampler(num_samples=num_fine, single_jitter=True, include_original=False)
        self.background = colors.get_color(background_color)
        self.renderer_rgb = RGBRenderer(background_color=self.background)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer()

    # ------------------------------------------------------------------ what a method supplies
    def frame_conditioning(self, frames: Int[Tensor, "U"]) -> Dict[str, Tensor]:
        """Per-frame inputs of the deformation for the distinct ``frames`` (first dimension U)."""
        raise NotImplementedError

    def deform(self, points: Float[Tensor, "N 3"], row: Int[Tensor, "N"], rows: FrameRows) -> Deformation:
        """Offsets taking observed points whose frame is ``rows.frames[row]`` to canonical space."""
        raise NotImplementedError

    def canonical_density(self, points: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 1"]:
        """Density of the canonical field."""
        raise NotImplementedError

    def canonical_radiance(
        self, points: Float[Tensor, "A K 3"], directions: Float[Tensor, "A K 3"], frames: Int[Tensor, "A"]
    ) -> Tuple[Float[Tensor, "A K 1"], Float[Tensor, "A K 3"]]:
        """Density and colour of the canonical field at the canonical samples of rays of ``frames``."""
        raise NotImplementedError

    @property
    def deformation_trainable(self) -> bool:
        """False while the deformation is frozen (its forward pass then runs without autograd)."""
        return True

    # ------------------------------------------------------------------ the shared path
    def frame_rows(self, frames: Int[Tensor, "R"]) -> FrameRows:
        uniq, inverse = torch.unique(frames, return_inverse=True)
        return FrameRows(frames=uniq, ray_row=inverse, data=self.frame_conditioning(uniq))

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        frames = self.subject.frame_of(ray_bundle)
        rows = self.frame_rows(frames)
        samples = self.sampler_uniform(ray_bundle)
        with torch.no_grad():
            pos = samples.frustums.get_positions()  # R S 3
            off = strided_offsets(
                pos, rows.ray_row, lambda x, row: self.deform(x, row, rows).offset, self.coarse_deform_stride
            )
            weights = samples.get_weights(self.canonical_density(pos + off))
            active = self.renderer_accumulation(weights).reshape(-1) >= ACTIVE_ACCUMULATION
        fine = self.sampler_pdf(ray_bundle, samples, weights)
        device = pos.device
        n = fine.shape[0]
        rgb = self.background.to(device).expand(n, 3).clone()
        accumulation = torch.zeros(n, 1, device=device)
        with torch.no_grad():  # depth is not trained: rays left inactive have all-zero weights
            depth = self.renderer_depth(torch.zeros(*fine.shape, 1, device=device), fine)
        penalty = torch.zeros((), device=device)
        if active.any():
            sub = fine[active]
            p = sub.frustums.get_positions()
            k = p.shape[1]
            point_row = rows.ray_row[active][:, None].expand(-1, k).reshape(-1)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.deformation_trainable):
                result = self.deform(p.reshape(-1, 3), point_row, rows)
            canonical = p + result.offset.reshape(p.shape)
            d, c = self.canonical_radiance(canonical, sub.frustums.directions, frames[active])
            w = sub.get_weights(d)
            # Composited per ray (active rays only), then placed among the background rays.
            rgb = rgb.index_put((active,), self.renderer_rgb(rgb=c, weights=w))
            accumulation = accumulation.index_put((active,), self.renderer_accumulation(w))
            depth = depth.index_put((active,), self.renderer_depth(w.detach(), sub))
            if result.penalty is not None:
                penalty = result.penalty.mean()
        outputs = {"rgb": rgb, "accumulation": accumulation, "depth": depth}
        if self.training:
            outputs["deformation_penalty"] = penalty
            outputs["frame_rows"] = rows
        return outputs

    @contextlib.contextmanager
    def reduced_sampling(self, fraction: float) -> Iterator[None]:
        saved = self.sampler_uniform.num_samples, self.sampler_pdf.num_samples
        self.sampler_uniform.num_samples = max(2, round(saved[0] * fraction))
        self.sampler_pdf.num_samples = max(2, round(saved[1] * fraction))
        try:
            yield
        finally:
            self.sampler_uniform.num_samples, self.sampler_pdf.num_samples = saved

    # ------------------------------------------------------------------ export hook
    @torch.no_grad()
    def observed_density(self, points: Float[Tensor, "N 3"], frame: int) -> Float[Tensor, "N 1"]:
        frames = torch.full((1,), int(frame), dtype=torch.long, device=points.device)
        rows = self.frame_rows(frames)
        row = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
        return self.canonical_density(points + self.deform(points, row, rows).offset)
