"""A trained head's mesh in one frame, in world units: the one implementation behind ``hs-export mesh``
and the geometry metrics of ``ns-eval``.

What a model can mesh it declares in ``HeadModel.export_kind``:

- ``"density"``: marching cubes of ``observed_density(points, frame)`` at a density ``level``;
- ``"sdf"``: marching cubes of the zero level of ``frame_sdf(points, frame)``, the frame's posed SDF
  (negative inside; mononphm-track);
- ``"surface"``: the canonical zero level of ``canonical_sdf`` meshed once, its vertices moved into
  the frame by ``deform_vertices`` (imavatar-surface).

Each mesh keeps the head's connected components (``keep_head_components``) unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from headstudio.export.components import ComponentFilter, keep_head_components
from headstudio.export.density_mesh import density_grid, mesh_from_grid

DENSITY_LEVEL = 25.0
"""Default density level of volumetric methods (TensoRF's distance scale 25 x feature 1)."""


@dataclass
class FrameMesher:
    """Meshes a model in chosen frames (the canonical mesh of a surface method is computed once)."""

    model: torch.nn.Module
    resolution: int = 256
    """Marching-cubes lattice resolution over the scene box."""
    level: float = DENSITY_LEVEL
    """Density level of ``"density"`` models (the SDF kinds mesh their zero level)."""
    keep_all_components: bool = False
    min_component_fraction: float = 0.05
    progress: Optional[Callable[[int], None]] = None
    """Called with the number of lattice points evaluated since the last call."""
    reports: list[ComponentFilter] = field(default_factory=list)
    """What the component filter kept and dropped, one per mesh made."""
    _canonical: Optional[tuple[np.ndarray, np.ndarray]] = None

    @property
    def kind(self) -> str:
        kind = getattr(self.model, "export_kind", None)
        if kind not in ("density", "sdf", "surface"):
            raise ValueError(f"{type(self.model).__name__} declares no mesh export (export_kind)")
        return kind

    @property
    def lattice_points(self) -> int:
        """Lattice points one call of :meth:`__call__` evaluates (0 once a surface model's canonical mesh exists)."""
        return 0 if self.kind == "surface" and self._canonical is not None else self.resolution**3

    def clean(self, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.keep_all_components:
            return verts, faces
        verts, faces, report = keep_head_components(verts, faces, self.min_component_fraction)
        self.reports.append(report)
        return verts, faces

    def _grid_mesh(self, fn: Callable[[torch.Tensor], torch.Tensor], level: float) -> tuple[np.ndarray, np.ndarray]:
        aabb = self.model.scene_box.aabb.to(self.model.device)
        values = density_grid(fn, aabb, self.resolution, progress=self.progress)
        return mesh_from_grid(values, aabb, level)

    def canonical(self) -> tuple[np.ndarray, np.ndarray]:
        """A surface model's canonical mesh (computed on first use)."""
        if self._canonical is None:
            self._canonical = self.clean(*self._grid_mesh(lambda x: -self.model.canonical_sdf(x), 0.0))
        return self._canonical

    @torch.no_grad()
    def __call__(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Vertices (world units, float32) and faces (int32, outward) of the head in ``frame``."""
        model, kind = self.model, self.kind
        if kind == "surface":
            verts, faces = self.canonical()
            moved = model.deform_vertices(torch.from_numpy(verts).to(model.device), frame=frame)
            return moved.float().cpu().numpy(), faces
        if kind == "sdf":
            return self.clean(*self._grid_mesh(lambda x: -model.frame_sdf(x, frame), 0.0))
        return self.clean(*self._grid_mesh(lambda x: model.observed_density(x, frame), self.level))
