"""A vectorised z-buffer triangle rasterizer in pure torch.

Used to render the synthetic head subjects (depth, face ids, barycentrics and any
per-vertex attribute) on the CPU without a compiled extension. Everything is a handful
of tensor operations over the (face, candidate pixel) pairs; there is no Python loop
over faces or pixels.

Conventions:

- Camera space is OpenCV: x right, y down, z forward. The camera sits at the origin.
- ``K`` maps camera points to continuous image coordinates in which pixel ``(row i,
  col j)`` covers ``[j, j+1) x [i, i+1)``; its centre is ``(j + 0.5, i + 0.5)``.
- A pixel is covered by a triangle when its centre lies inside or on the boundary of the
  projected triangle. Edge functions are evaluated from a canonical endpoint of each edge
  (the lexicographically smaller projected vertex), so two triangles sharing an edge get
  bitwise opposite values there: meshes rasterize without cracks.
- Front faces are those whose vertices run counter-clockwise as seen from the camera,
  i.e. whose normal ``(v1 - v0) x (v2 - v0)`` points towards the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

FACE_BITS = 23
"""Bits of the visibility key that hold the face index; meshes need fewer faces."""
DEPTH_BITS = 40
"""Bits of the visibility key that hold the quantised depth."""
_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """Per-pixel result of :func:`rasterize` for the nearest triangle."""

    face_id: Int[Tensor, "H W"]
    """Index of the visible face, -1 where no triangle covers the pixel centre."""
    bary: Float[Tensor, "H W 3"]
    """Perspective-correct barycentric coordinates in the visible face (0 where empty)."""
    depth: Float[Tensor, "H W"]
    """Camera-space depth z of the visible surface point (0 where empty)."""

    @property
    def mask(self) -> Int[Tensor, "H W"]:
        """Boolean coverage mask (``face_id >= 0``)."""
        return self.face_id >= 0


def project_points(points_cam: Float[Tensor, "N 3"], K: Float[Tensor, "3 3"]) -> Float[Tensor, "N 3"]:
    """Projects camera-space points with an OpenCV pinhole camera.

    The camera looks down +z. Pixel centres lie at integer + 0.5 in the returned
    coordinates. Points with ``z <= 0`` give non-finite or meaningless x, y; callers
    mask them by depth.

    Args:
        points_cam: Points in camera space (x right, y down, z forward).
        K: Intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``.

    Returns:
        Pixel x, pixel y and depth z of every point.
    """
    x, y, z = points_cam.unbind(-1)
    # Elementwise rather than a matmul: bitwise identical results for identical points,
    # which the crack-free edge rule relies on.
    u = (K[0, 0] * x + K[0, 1] * y + K[0, 2] * z) / z
    v = (K[1, 0] * x + K[1, 1] * y + K[1, 2] * z) / z
    return torch.stack([u, v, z], dim=-1)


def _empty(height: int, width: int, device: torch.device) -> Fragments:
    return Fragments(
        face_id=torch.full((height, width), -1, dtype=torch.int64, device=device),
        bary=torch.zeros((height, width, 3), dtype=torch.float32, device=device),
        depth=torch.zeros((height, width), dtype=torch.float32, device=device),
    )


def rasterize(
    points_cam: Float[Tensor, "V 3"],
    faces: Int[Tensor, "F 3"],
    K: Float[Tensor, "3 3"],
    height: int,
    width: int,
    cull_backfaces: bool = False,
    near: float = 1e-3,
) -> Fragments:
    """Rasterizes a triangle mesh with a z-buffer.

    For every face the pixels of its clipped bounding box are enumerated, the covered
    ones kept with edge functions, and the nearest face per pixel is picked with a single
    ``scatter_reduce("amin")`` on an int64 key ``(quantised depth << 23) | face index``
    (ties in depth go to the smaller face index).

    Faces with a vertex at ``z <= near`` and faces of zero projected area are skipped.
    Computation is in float32 (float64 for images wider or taller than 2048 pixels).

    Args:
        points_cam: Vertices in OpenCV camera space (x right, y down, z forward).
        faces: Vertex indices of the triangles; fewer than 2**23 faces.
        K: Pinhole intrinsics; pixel centres at integer + 0.5.
        height: Image height in pixels.
        width: Image width in pixels.
        cull_backfaces: Skip faces whose normal points away from the camera (see the
            module docstring for the winding convention).
        near: Near plane distance.

    Returns:
        :class:`Fragments` of shape ``(height, width)``; ``bary`` and ``depth`` are
        float32.
    """
    H, W = int(height), int(width)
    device = points_cam.device
    num_faces = faces.shape[0]
    assert num_faces < 2**FACE_BITS, f"rasterize supports fewer than 2**{FACE_BITS} faces, got {num_faces}"
    if num_faces == 0 or H <= 0 or W <= 0:
        return _empty(max(H, 0), max(W, 0), device)
    # float32 represents pixel centres and candidate offsets exactly up to 2**23.
    dtype = torch.float64 if max(H, W) > 2048 else torch.float32
    eps = torch.finfo(dtype).eps

    # ---- faces: drawable ones, pixel bounding boxes, edge functions -------------------
    pts = points_cam.to(dtype)
    in_front = pts[:, 2] > near
    pts_safe = torch.where(in_front[:, None], pts, pts.new_tensor([0.0, 0.0, 1.0]))
    proj = project_points(pts_safe, K.to(device=device, dtype=dtype)).T.contiguous()  # 3 V
    fT = faces.to(device=device, dtype=torch.int64).T.reshape(-1)  # 3F, vertex k of every face
    U = proj[0].index_select(0, fT).view(3, num_faces)  # pixel x of vertex k of each face
    V = proj[1].index_select(0, fT).view(3, num_faces)
    area2 = (U[1] - U[0]) * (V[2] - V[0]) - (V[1] - V[0]) * (U[2] - U[0])  # twice the signed area
    keep = in_front.index_select(0, fT).view(3, num_faces).all(0) & (area2 != 0) & torch.isfinite(area2)
    if cull_backfaces:
        P = pts.index_select(0, fT).view(3, num_faces, 3)
        normal = torch.linalg.cross(P[1] - P[0], P[2] - P[0], dim=-1)
        keep &= (normal * P[0]).sum(-1) < 0
    # Pixels i with i + 0.5 in [min, max], widened by the rounding error of the edge
    # functions (the exact test below decides), clipped to the image.
    slack = 16 * eps * (torch.maximum(U.abs().amax(0), V.abs().amax(0)) + max(H, W))
    row0 = torch.ceil(V.amin(0) - 0.5 - slack).clamp_(0, H)
    row1 = torch.floor(V.amax(0) - 0.5 + slack).clamp_(-1, H - 1)
    col0 = torch.ceil(U.amin(0) - 0.5 - slack).clamp_(0, W)
    col1 = torch.floor(U.amax(0) - 0.5 + slack).clamp_(-1, W - 1)
    keep &= (row1 >= row0) & (col1 >= col0)
    fids = keep.nonzero().squeeze(1)
    nf = fids.numel()
    if nf == 0:
        return _empty(H, W, device)
    U, V = U[:, fids], V[:, fids]
    area2, slack = area2[fids], slack[fids]
    row0, row1, col0, col1 = row0[fids], row1[fids], col0[fids], col1[fids]
    iz = 1.0 / pts_safe[:, 2].index_select(0, fT).view(3, num_faces)[:, fids]  # 3 F', 1/z

    # Edge k runs between vertices k+1 and k+2 (opposite vertex k). Its edge function
    #     E_k(p) = e_x * (p_y - A_y) - e_y * (p_x - A_x)
    # is evaluated from the lexicographically smaller endpoint A, with e = ±(B - A) signed
    # (exactly) so that E_k >= 0 inside the face. Two faces sharing an edge thus get
    # bitwise opposite values on it and every pixel centre goes to at least one of them.
    ax, bx = U.roll(-1, 0), U.roll(-2, 0)
    ay, by = V.roll(-1, 0), V.roll(-2, 0)
    swap = (ax > bx) | ((ax == bx) & (ay > by))
    Ax, Ay = torch.where(swap, bx, ax), torch.where(swap, by, ay)
    flip = torch.where(swap, -1.0, 1.0).to(dtype) * torch.sign(area2)
    ex = torch.where(swap, ax - bx, bx - ax) * flip
    ey = torch.where(swap, ay - by, by - ay) * flip
    # Along a row, E_k >= 0 bounds p_x from above (e_y > 0) or below (e_y < 0) by the line
    # x = c + m p_y, m = e_x / e_y; the bound is widened by its rounding error.
    ey_abs = ey.abs()
    m = ex / torch.where(ey_abs > 0, ey, torch.ones_like(ey))
    c = Ax - m * Ay
    bslack = 0.01 + slack * (1 + m.abs())
    usable = (ey_abs > 0) & (bslack < 2.0 * (W + 1))
    lower, upper = usable & (ey < 0), usable & (ey > 0)
    zeros = torch.zeros_like(m)
    lines = [
        torch.where(lower, m, zeros),
        torch.where(lower, c - bslack, torch.full_like(c, -float("inf"))),
        torch.where(upper, m, zeros),
        torch.where(upper, c + bslack, torch.full_like(c, float("inf"))),
    ]
    # 1/z is affine in screen space: 1/z = d + gx p_x + gy p_y (float64 for accuracy).
    U64, V64, iz64 = U.double(), V.double(), iz.double()
    du, dv = U64.roll(-2, 0) - U64.roll(-1, 0), V64.roll(-2, 0) - V64.roll(-1, 0)
    a64 = area2.double()
    gx = -(iz64 * dv).sum(0) / a64
    gy = (iz64 * du).sum(0) / a64
    d0 = iz64[0] - gx * U64[0] - gy * V64[0]

    # ---- rows: one entry per (face, image row) of the bounding box --------------------
    ny = (row1 - row0).long() + 1
    num_rows = int(ny.sum())
    rface = torch.repeat_interleave(torch.arange(nf, device=device), ny, output_size=num_rows)
    rstart = torch.cumsum(ny, 0) - ny
    ridx = torch.arange(num_rows, device=device) + (row0.long() - rstart).index_select(0, rface)  # image row
    py = ridx.to(dtype) + 0.5
    lo = col0.index_select(0, rface)
    hi = col1.index_select(0, rface)
    for k in range(3):
        g = [t[k].index_select(0, rface) for t in lines]
        lo = torch.maximum(lo, torch.ceil(g[1] + g[0] * py - 0.5))
        hi = torch.minimum(hi, torch.floor(g[3] + g[2] * py - 0.5))
    ncol = (hi - lo + 1).clamp_(min=0).long()
    c0 = lo.clamp_(0, W)  # first column of the span
    # Per-row parts of the edge functions: t_k = e_x (p_y - A_y), e_y, A_x.
    t1 = [ex[k].index_select(0, rface) * (py - Ay[k].index_select(0, rface)) for k in range(3)]
    eyr = [ey[k].index_select(0, rface) for k in range(3)]
    axr = [Ax[k].index_select(0, rface) for k in range(3)]
    # 1/z at the span start and its step per column.
    gxr = gx.index_select(0, rface)
    iz_start = (d0.index_select(0, rface) + gy.index_select(0, rface) * py.double() + gxr * (c0.double() + 0.5)).to(
        dtype
    )
    iz_step = gxr.to(dtype)

    # ---- candidates: the columns of every row span, exact inside test -----------------
    num_cand = int(ncol.sum())
    if num_cand == 0:
        return _empty(H, W, device)
    assert num_cand < 2**32, "too many candidate pixels"
    rid = torch.repeat_interleave(torch.arange(num_rows, device=device), ncol, output_size=num_cand)
    cstart = torch.cumsum(ncol, 0) - ncol
    ar = torch.arange(num_cand, device=device)
    dcol = (ar - cstart.index_select(0, rid)).to(dtype)  # column offset in the span
    px = dcol + (c0 + 0.5).index_select(0, rid)
    pix = ar + (ridx * W + c0.long() - cstart).index_select(0, rid)
    E = []
    for k in range(3):
        e = axr[k].index_select(0, rid)
        torch.sub(px, e, out=e)
        e *= eyr[k].index_select(0, rid)
        e = torch.sub(t1[k].index_select(0, rid), e, out=e)
        E.append(e)
    del px, t1, eyr, axr
    outside = torch.minimum(torch.minimum(E[0], E[1]), E[2]) < 0

    # ---- visibility: one amin over (depth bits << 32 | candidate index) ---------------
    inv_depth = iz_step.index_select(0, rid)
    inv_depth *= dcol
    inv_depth += iz_start.index_select(0, rid)
    depth = torch.reciprocal(inv_depth).float()
    # Positive float32 values order like their bit patterns, so the key holds the exact
    # depth in its high 32 bits; the candidate index (in face order, so depth ties go to
    # the smaller face index) fills the low 32 bits.
    key = depth.view(torch.int32).long()
    key <<= 32
    key |= ar
    key.masked_fill_(outside, _INT64_MAX)
    del ar, dcol, inv_depth, depth, outside
    zbuf = torch.full((H * W,), _INT64_MAX, dtype=torch.int64, device=device)
    zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
    del key, pix

    # ---- winners: face ids, perspective-correct barycentrics, depth --------------------
    covered = (zbuf != _INT64_MAX).nonzero().squeeze(1)
    wkey = zbuf.index_select(0, covered)
    win = wkey & 0xFFFFFFFF
    wface = rface.index_select(0, rid.index_select(0, win))
    w = torch.stack([E[k].index_select(0, win) * iz[k].index_select(0, wface) for k in range(3)], 1)
    wsum = w.sum(1, keepdim=True)
    bary = torch.where(wsum > 0, w / wsum, torch.full_like(w, 1.0 / 3.0)).float()
    depth = (wkey >> 32).int().view(torch.float32)

    face_id = torch.full((H * W,), -1, dtype=torch.int64, device=device)
    face_id.index_copy_(0, covered, fids.index_select(0, wface))
    bary_out = torch.zeros((H * W, 3), dtype=torch.float32, device=device)
    bary_out.index_copy_(0, covered, bary)
    depth_out = torch.zeros((H * W,), dtype=torch.float32, device=device)
    depth_out.index_copy_(0, covered, depth)
    return Fragments(face_id=face_id.view(H, W), bary=bary_out.view(H, W, 3), depth=depth_out.view(H, W))


def interpolate(attrs: Float[Tensor, "V C"], faces: Int[Tensor, "F 3"], frags: Fragments) -> Float[Tensor, "H W C"]:
    """Interpolates per-vertex attributes with the fragments' barycentric coordinates.

    Args:
        attrs: Per-vertex attributes.
        faces: The faces given to :func:`rasterize`.
        frags: Output of :func:`rasterize`.

    Returns:
        Attributes at every pixel, zeros where no face is visible.
    """
    H, W = frags.face_id.shape
    out = attrs.new_zeros((H, W, attrs.shape[-1]))
    mask = frags.face_id >= 0
    fid = frags.face_id[mask]
    tri = attrs[faces.to(attrs.device).long()[fid]]  # M 3 C
    b = frags.bary[mask].to(attrs.dtype)
    out[mask] = (tri * b[..., None]).sum(1)
    return out
