"""TensoRF canonical field (VM decomposition) whose lookup passes gradients to the points.

nerfstudio's ``TensorVMEncoding`` detaches its input coordinates, so points produced by a
deformation field would give that field no gradient. :func:`vm_features` is the same
vector-matrix product, differentiable in the coordinates; :class:`TensoRFCanonicalField`
adds the TensoRF colour path with a per-frame appearance code in the decoder (Chen et al. 2023),
ReLU density (Chen et al. 2023: "RELU ... instead of Softplus"), grid upsampling and an alpha mask.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from nerfstudio.field_components.encodings import NeRFEncoding
from torch import Tensor, nn

# VM pairing: plane (x,y) with line z, plane (x,z) with line y, plane (y,z) with line x.
_PLANE_AXES = ((0, 1), (0, 2), (1, 2))
_LINE_AXES = (2, 1, 0)


def vm_features(
    planes: Float[Tensor, "3 C R R"], lines: Float[Tensor, "3 C R 1"], xyz: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 3C"]:
    """Vector-matrix features at normalised points in [-1, 1]^3, differentiable in ``xyz``."""
    batch = xyz.shape[:-1]
    pts = xyz.reshape(1, -1, 1, 3)
    plane_coord = torch.cat([pts[..., list(a)] for a in _PLANE_AXES])  # 3 N 1 2
    line_z = torch.cat([pts[..., [a]] for a in _LINE_AXES])
    line_coord = torch.cat([torch.zeros_like(line_z), line_z], dim=-1)  # 3 N 1 2
    p = F.grid_sample(planes, plane_coord, mode="bilinear", align_corners=True)  # 3 C N 1
    l = F.grid_sample(lines, line_coord, mode="bilinear", align_corners=True)  # noqa: E741
    feats = (p * l)[..., 0]  # 3 C N
    return feats.reshape(-1, feats.shape[-1]).transpose(0, 1).reshape(*batch, -1)


class VMGrid(nn.Module):
    """A learned VM-decomposed grid of ``3 * num_components`` channels."""

    def __init__(self, resolution: int, num_components: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.num_components = num_components
        self.planes = nn.Parameter(init_scale * torch.randn(3, num_components, resolution, resolution))
        self.lines = nn.Parameter(init_scale * torch.randn(3, num_components, resolution, 1))

    @property
    def resolution(self) -> int:
        return self.planes.shape[-1]

    def forward(self, xyz: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch out"]:
        return vm_features(self.planes, self.lines, xyz)

    @torch.no_grad()
    def upsample(self, resolution: int) -> None:
        """Resample the factors to ``resolution`` (TensoRF's coarse-to-fine schedule)."""
        planes = F.interpolate(self.planes.data, size=(resolution, resolution), mode="bilinear", align_corners=True)
        lines = F.interpolate(self.lines.data, size=(resolution, 1), mode="bilinear", align_corners=True)
        self.planes = nn.Parameter(planes)
        self.lines = nn.Parameter(lines)


def upsampling_resolutions(init: int, final: int, steps: int) -> list[int]:
    """TensoRF's schedule: resolutions log-linear between ``init`` and ``final`` (excluding ``init``)."""
    ratio = (final / init) ** (1.0 / steps)
    return [int(round(init * ratio**k)) for k in range(1, steps + 1)]


class TensoRFCanonicalField(nn.Module):
    """TensoRF VM field in canonical space with a per-frame appearance code in the decoder."""

    def __init__(
        self,
        aabb: Float[Tensor, "2 3"],
        resolution: int = 128,
        num_density_components: int = 16,
        num_color_components: int = 48,
        color_feature_dim: int = 27,
        appearance_dim: int = 32,
        hidden_dim: int = 128,
        density_scale: float = 25.0,
        alpha_mask_resolution: int = 128,
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.float().clone())
        self.density_grid = VMGrid(resolution, num_density_components)
        self.color_grid = VMGrid(resolution, num_color_components)
        self.basis = nn.Linear(3 * num_color_components, color_feature_dim, bias=False)
        self.feature_pe = NeRFEncoding(color_feature_dim, num_frequencies=2, min_freq_exp=0, max_freq_exp=2)
        self.direction_pe = NeRFEncoding(3, num_frequencies=2, min_freq_exp=0, max_freq_exp=2)
        in_dim = color_feature_dim + self.feature_pe.get_out_dim() + 3 + self.direction_pe.get_out_dim()
        self.decoder = nn.Sequential(
            nn.Linear(in_dim + appearance_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 3),
        )
        self.density_scale = density_scale
        # Alpha mask (TensoRF): voxels of the canonical grid that may hold density, and the
        # shrunk bounding box of the occupied ones. All-true until the first update.
        r = alpha_mask_resolution
        self.register_buffer("alpha_mask", torch.ones(r, r, r, dtype=torch.bool))
        self.register_buffer("occupied_aabb", aabb.float().clone())

    def normalize(self, positions: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
        lo, hi = self.aabb[0], self.aabb[1]
        return (positions - lo) / (hi - lo) * 2.0 - 1.0

    def valid(self, positions: Float[Tensor, "*batch 3"]) -> Bool[Tensor, "*batch"]:
        """Inside the occupied bounding box and an unpruned alpha-mask voxel."""
        lo, hi = self.occupied_aabb[0], self.occupied_aabb[1]
        inside = ((positions >= lo) & (positions <= hi)).all(-1)
        xyz = self.normalize(positions.detach())
        r = self.alpha_mask.shape[0]
        ijk = ((xyz + 1.0) * 0.5 * (r - 1)).round().long().clamp(0, r - 1)
        return inside & self.alpha_mask[ijk[..., 0], ijk[..., 1], ijk[..., 2]]

    def density(self, positions: Float[Tensor, "*batch 3"], use_mask: bool = True) -> Float[Tensor, "*batch 1"]:
        """ReLU density (times TensoRF's distance scale); zero outside the alpha mask."""
        sigma = torch.relu(self.density_grid(self.normalize(positions)).sum(-1, keepdim=True)) * self.density_scale
        if use_mask:
            sigma = sigma * self.valid(positions)[..., None].to(sigma)
        return sigma

    def color(
        self,
        positions: Float[Tensor, "*batch 3"],
        directions: Float[Tensor, "*batch 3"],
        appearance: Float[Tensor, "*batch A"],
    ) -> Float[Tensor, "*batch 3"]:
        feat = self.basis(self.color_grid(self.normalize(positions)))
        h = torch.cat([feat, self.feature_pe(feat), directions, self.direction_pe(directions), appearance], dim=-1)
        return torch.sigmoid(self.decoder(h))

    def grid_parameters(self) -> list[nn.Parameter]:
        return list(self.density_grid.parameters()) + list(self.color_grid.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        return list(self.basis.parameters()) + list(self.decoder.parameters())

    def upsample(self, resolution: int) -> None:
        self.density_grid.upsample(resolution)
        self.color_grid.upsample(resolution)

    @torch.no_grad()
    def update_alpha_mask(self, threshold: float = 1e-4, chunk: int = 1 << 18, dilate: int = 1) -> Tuple[int, int]:
        """Prune voxels whose density is below ``threshold``; shrink the bounding box.

        Returns (kept voxels, total voxels). The mask is dilated by ``dilate`` voxels so
        surfaces at a voxel boundary are not clipped.
        """
        r = self.alpha_mask.shape[0]
        lin = torch.linspace(0.0, 1.0, r, device=self.aabb.device)
        lo, hi = self.aabb[0], self.aabb[1]
        grid = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
        grid = lo + grid * (hi - lo)
        sigma = torch.cat([self.density(grid[i : i + chunk], use_mask=False) for i in range(0, len(grid), chunk)])
        keep = (sigma.reshape(r, r, r) / self.density_scale) >= threshold
        if dilate > 0:
            k = 2 * dilate + 1
            keep = F.max_pool3d(keep[None, None].float(), k, stride=1, padding=dilate)[0, 0] > 0
        self.alpha_mask.copy_(keep)
        if keep.any():
            pts = grid.reshape(r, r, r, 3)[keep]
            step = (hi - lo) / (r - 1)
            self.occupied_aabb.copy_(torch.stack([pts.min(0).values - step, pts.max(0).values + step]))
        return int(keep.sum()), keep.numel()

