"""Small triangle-mesh helpers shared by the engine."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def vertex_normals(verts: Float[Tensor, "*batch V 3"], faces: Int[Tensor, "F 3"]) -> Float[Tensor, "*batch V 3"]:
    """Area-weighted unit vertex normals (counter-clockwise faces point outward)."""
    tri = verts[..., faces, :]  # *batch F 3 3
    n = torch.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :], dim=-1)
    vn = torch.zeros_like(verts)
    for k in range(3):
        vn.index_add_(-2, faces[:, k], n)
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sample_surface(
    verts: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"], count: int, generator: torch.Generator | None = None
) -> tuple[Int[Tensor, "N"], Float[Tensor, "N 3"], Float[Tensor, "N 3"], Float[Tensor, "N 3"]]:
    """Points uniform by area on a triangle mesh.

    Returns the face of each sample, its barycentric coordinates (so the same samples can be
    placed on another mesh of the same topology), its position and the unit face normal
    (counter-clockwise faces point outward).
    """
    tri = verts[faces]  # F 3 3
    cross = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    area = cross.norm(dim=-1)
    face = torch.multinomial(area / area.sum(), count, replacement=True, generator=generator)
    u, v = torch.rand(2, count, dtype=verts.dtype, device=verts.device, generator=generator)
    flip = u + v > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    bary = torch.stack([1 - u - v, u, v], -1)
    points = (tri[face] * bary[..., None]).sum(-2)
    normals = cross[face] / area[face, None].clamp_min(1e-20)
    return face, bary, points, normals


def closest_points_on_mesh(
    points: Float[Tensor, "N 3"], verts: Float[Tensor, "V 3"], faces: Int[Tensor, "F 3"], chunk: int = 64
) -> tuple[Int[Tensor, "N"], Float[Tensor, "N 3"], Float[Tensor, "N"]]:
    """The nearest surface point of each query, exactly (every triangle; chunked over the queries).

    Returns its face, barycentric coordinates and the distance. The nearest point of a triangle is the
    query's projection onto its plane when that falls inside, else the nearest point of one of its edges.
    """
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]  # F 3
    ab, ac = b - a, c - a
    d00, d01, d11 = (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
    den = (d00 * d11 - d01 * d01).clamp_min(1e-30)
    out_face, out_bary, out_dist = [], [], []
    for start in range(0, len(points), chunk):
        p = points[start : start + chunk, None, :]  # n 1 3
        ap = p - a
        d20, d21 = (ap * ab).sum(-1), (ap * ac).sum(-1)
        v = (d11 * d20 - d01 * d21) / den  # n F
        w = (d00 * d21 - d01 * d20) / den
        inside = (v >= 0) & (w >= 0) & (v + w <= 1)
        plane = (p - (a + v[..., None] * ab + w[..., None] * ac)).norm(dim=-1)
        cand_v, cand_w = [v], [w]
        cand_d = [torch.where(inside, plane, torch.full_like(plane, float("inf")))]
        for e0, d, to_vw in ((a, ab, lambda t: (t, 0 * t)), (a, ac, lambda t: (0 * t, t)), (b, c - b, lambda t: (1 - t, t))):
            t = (((p - e0) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-30)).clamp(0, 1)
            ev, ew = to_vw(t)
            cand_v.append(ev)
            cand_w.append(ew)
            cand_d.append((p - (e0 + t[..., None] * d)).norm(dim=-1))
        dist = torch.stack(cand_d)  # 4 n F
        best, which = dist.min(0)  # n F
        face = best.argmin(-1)  # n
        rows = torch.arange(len(face), device=points.device)
        k = which[rows, face]
        vb = torch.stack(cand_v)[k, rows, face]
        wb = torch.stack(cand_w)[k, rows, face]
        out_face.append(face)
        out_bary.append(torch.stack([1 - vb - wb, vb, wb], -1))
        out_dist.append(best[rows, face])
    return torch.cat(out_face), torch.cat(out_bary), torch.cat(out_dist)
