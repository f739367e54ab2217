"""What every headstudio head model shares: the subject's per-frame state and the image metrics.

A method's model subclasses :class:`HeadModel`, builds its fields in ``populate_modules``
(calling ``super().populate_modules()`` first, which sets ``self.subject``) and renders
``rgb``, ``accumulation`` and ``depth``; evaluation images and metrics are the same for all.

Mesh export (``hs-export mesh``) reads what a model declares in ``export_kind``:

- ``"density"``: ``observed_density(points, frame)``, the density at world points with the head
  in a frame's state, meshed by marching cubes per frame (volumetric methods);
- ``"surface"``: ``canonical_sdf(points)`` meshed once, and ``deform_vertices`` moving the
  canonical vertices into a frame or explicit FLAME parameters (methods with a forward map).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Dict, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor

from headstudio.fields.frame_codes import FrameCodes
from headstudio.metrics.geometry import rendered_depth_normal_error
from headstudio.metrics.images import image_metrics
from headstudio.models.subject_state import SubjectState


@dataclass
class HeadModelConfig(ModelConfig):
    """What every headstudio method's config has (the viewer's Drive panel)."""

    _target: Type = field(default_factory=lambda: HeadModel)
    drive_expression_controls: int = 10
    """Manual expression sliders in the viewer's Drive panel: the first K expression components (ours; named
    from the FLAME-format model's metadata where it has names)."""


class HeadModel(Model):
    """nerfstudio Model with a :class:`SubjectState` (``self.subject``) and the papers' metrics."""

    config: HeadModelConfig

    export_kind: ClassVar[Optional[Literal["density", "surface"]]] = None
    """How ``hs-export mesh`` meshes this model (see the module docstring); None: it cannot."""

    def populate_modules(self) -> None:
        super().populate_modules()
        self.subject = SubjectState(self.kwargs["metadata"], self.config.drive_expression_controls)
        self.subject.on_driven(self.driven_state_changed)

    def driven_state_changed(self, row: int, nearest: int) -> None:
        """The subject's driven row changed: per-frame codes read the nearest tracked frame's, and the
        method refreshes its tables derived from the track (:meth:`refresh_track_row`)."""
        for module in self.modules():
            if isinstance(module, FrameCodes):
                module.follow(row, nearest)
        self.refresh_track_row(row, nearest)

    def refresh_track_row(self, row: int, nearest: int) -> None:
        """Recompute row ``row`` of any per-frame table the method derived from the subject's track (none here)."""

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        return {"psnr": -10.0 * torch.log10(F.mse_loss(outputs["rgb"], image).clamp_min(1e-10))}

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        rgb = outputs["rgb"]
        metrics = image_metrics(rgb, image)
        metrics.update(self.geometry_metrics(outputs, batch))
        depth = colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"])
        images = {
            "img": torch.cat([image, rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": depth,
        }
        if "normal" in outputs:
            images["normal"] = (outputs["normal"] + 1.0) * 0.5
        return metrics, images

    def geometry_metrics(self, outputs: Dict[str, Tensor], batch: Dict) -> Dict[str, float]:
        """Geometry metrics of an eval image: by default the normal angle error of the rendered depth's
        normals in the face region (synthetic subjects; methods with normals of their own override it)."""
        error = rendered_depth_normal_error(outputs, batch)
        return {} if error is None else {"normal_error": error}

    @contextlib.contextmanager
    def reduced_sampling(self, fraction: float) -> Iterator[None]:
        """Renders inside use about ``fraction`` of the samples per ray (test-time fitting renders);
        a model without sample counts to scale renders unchanged."""
        yield

    # ------------------------------------------------------------------ export hooks
    def observed_density(self, points: Tensor, frame: int) -> Tensor:
        """``export_kind == "density"``: density [N, 1] at world points in ``frame``'s state."""
        raise NotImplementedError(f"{type(self).__name__} has no density field to mesh")

    def canonical_sdf(self, points: Tensor) -> Tensor:
        """``export_kind == "surface"``: signed distance [N] of canonical points (negative inside)."""
        raise NotImplementedError(f"{type(self).__name__} has no canonical surface")

    def deform_vertices(
        self,
        vertices: Tensor,
        frame: Optional[int] = None,
        expression: Optional[Tensor] = None,
        pose: Optional[Tensor] = None,
    ) -> Tensor:
        """``export_kind == "surface"``: canonical vertices moved into a frame or explicit FLAME parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no forward map")
