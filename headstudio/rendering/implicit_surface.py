"""Non-rigid ray marching to a canonical implicit surface seen through a forward warp (IMavatar §3.3).

Rays are marched in deformed space (IDR-style sampling, no sphere tracing: SDF values are
not distances after a non-rigid warp, supp. 2.3). Each sample's SDF is read at its
canonical correspondences (for the forward map ``ForwardSkinning.correspondences``: Broyden
from several bones' inverse transforms; for a backward deformer, its one mapped point); of
the converged roots the largest SDF wins (the paper's minimum occupancy). The first outside-to-inside sign change is refined by secant steps; a ray
without one reports its sample of smallest SDF, where the mask loss acts.

Two modes, the same answer where the surface lies inside the FLAME mesh's bounds:

- ``dense``: every sample over the whole near-far range, every start, every Broyden step;
- fast (default): only the ray segment inside the frame's deformed FLAME mesh bounds
  (plus a margin), samples marched front to back in chunks with rays leaving once they
  hit, converged correspondences dropped from the solver, starts that reach a root another
  start found merged into it and each distinct root read once. A ray whose first sample is
  already inside (a surface reaching out of the bounds, like the initial sphere) has its
  front segment marched as well (``MarchResult.starts_inside``, done by the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

SdfFn = Callable[[Float[Tensor, "M 3"], Int[Tensor, "M"]], Float[Tensor, "M"]]
CorrespondFn = Callable[[Float[Tensor, "M 3"], Int[Tensor, "M"]], Tuple[Float[Tensor, "M K 3"], Bool[Tensor, "M K"]]]
"""Canonical candidates of deformed points and which are valid: root finding for a forward map
(``ForwardSkinning.correspondences``), the single mapped point for a backward one."""


@dataclass
class MarchResult:
    hit: Bool[Tensor, "N"]
    """A sign change was found and refined."""
    t: Float[Tensor, "N"]
    """Ray parameter of the surface point (hit) or of the smallest-SDF sample (miss)."""
    canonical: Float[Tensor, "N 3"]
    """Canonical correspondence of that point (detached)."""
    valid: Bool[Tensor, "N"]
    """A correspondence converged at that point (only these take the losses)."""
    num_samples: int
    """Deformed samples whose correspondences were searched (cost measure)."""
    starts_inside: Bool[Tensor, "N"]
    """The first sample is already inside (the surface reaches out past ``near``)."""
    bracket: Tuple[Float[Tensor, "N"], Float[Tensor, "N"]] | None = None
    """Ray parameters of the samples on both sides of the first crossing (where ``hit``)."""

    def take(self, rows: Int[Tensor, "R"], other: "MarchResult") -> None:
        """Adopt ``other`` (a march of the rays ``rows``) where it hit."""
        won = rows[other.hit]
        self.hit[won], self.t[won] = True, other.t[other.hit]
        self.canonical[won], self.valid[won] = other.canonical[other.hit], True
        self.num_samples += other.num_samples


@torch.no_grad()
def ray_box(
    origins: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"], lo: Float[Tensor, "N 3"], hi: Float[Tensor, "N 3"]
) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N"]]:
    """Entry and exit ray parameters of per-ray axis-aligned boxes (exit < entry: miss)."""
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


@torch.no_grad()
def deformed_sdf(
    points: Float[Tensor, "M 3"], frame: Int[Tensor, "M"], correspond: CorrespondFn, sdf_fn: SdfFn
) -> Tuple[Float[Tensor, "M"], Float[Tensor, "M 3"], Bool[Tensor, "M"]]:
    """SDF of deformed points: the largest over their valid canonical candidates (+inf: none).

    A candidate identical to an earlier one of the same point (a merged start) is read once."""
    roots, ok = correspond(points, frame)
    m, k = ok.shape
    sdf = torch.full((m, k), -float("inf"), device=points.device)
    read = ok.clone()
    for i in range(1, k):
        same = (roots[:, i : i + 1] == roots[:, :i]).all(dim=-1) & ok[:, :i]
        read[:, i] &= ~same.any(dim=1)
    if read.any():
        fr = frame[:, None].expand(-1, k)
        sdf[read] = sdf_fn(roots[read], fr[read])
    best, arg = sdf.max(dim=1)
    valid = ok.any(dim=1)
    best = torch.where(valid, best, torch.full_like(best, float("inf")))
    return best, roots[torch.arange(m, device=points.device), arg], valid


@torch.no_grad()
def march(
    origins: Float[Tensor, "N 3"],
    directions: Float[Tensor, "N 3"],
    frame: Int[Tensor, "N"],
    near: Float[Tensor, "N"],
    far: Float[Tensor, "N"],
    correspond: CorrespondFn,
    sdf_fn: SdfFn,
    num_steps: int = 100,
    num_secant: int = 8,
    chunk_steps: int = 0,
    bracket_unconverged: bool = False,
) -> MarchResult:
    """March rays between ``near`` and ``far`` to the first surface crossing.

    ``chunk_steps`` > 0 evaluates that many samples per ray at a time, front to back, and
    stops rays that have crossed (0: all samples at once). ``num_secant`` 0 only brackets the
    crossings (``MarchResult.bracket``), without refining them; ``bracket_unconverged`` also takes
    an unconverged sample followed by an inside one as a bracket (for a coarse pass whose brackets
    are searched again at the dense samples).
    """
    n, dev = origins.shape[0], origins.device
    hit = torch.zeros(n, dtype=torch.bool, device=dev)
    valid = torch.zeros(n, dtype=torch.bool, device=dev)
    t_out = near.clone()
    canon = torch.zeros(n, 3, device=dev)
    best_sdf = torch.full((n,), float("inf"), device=dev)
    # Bracket of the crossing: (t, sdf, root) on both sides.
    lo_t, hi_t = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    lo_s, hi_s = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    prev_s = torch.full((n,), float("nan"), device=dev)  # no sample before the first: never a crossing
    prev_t = near.clone()
    live = torch.nonzero(far > near).reshape(-1)
    starts_inside = torch.zeros(n, dtype=torch.bool, device=dev)
    steps = torch.linspace(0.0, 1.0, num_steps, device=dev)
    chunk = num_steps if chunk_steps <= 0 else chunk_steps
    num_samples = 0
    for start in range(0, num_steps, chunk):
        if live.numel() == 0:
            break
        s = steps[start : start + chunk]
        t = near[live, None] + (far - near)[live, None] * s  # L S
        pts = origins[live, None] + t[..., None] * directions[live, None]
        fr = frame[live, None].expand_as(t)
        sdf, roots, ok = deformed_sdf(pts.reshape(-1, 3), fr.reshape(-1), correspond, sdf_fn)
        num_samples += pts.shape[0] * pts.shape[1]
        sdf, roots, ok = sdf.reshape(t.shape), roots.reshape(*t.shape, 3), ok.reshape(t.shape)
        # Smallest SDF so far (the mask loss point of a ray that misses).
        masked = torch.where(ok, sdf, torch.full_like(sdf, float("inf")))
        cmin, carg = masked.min(dim=1)
        better = cmin < best_sdf[live]
        rows = live[better]
        best_sdf[rows] = cmin[better]
        t_out[rows] = t[better, carg[better]]
        canon[rows] = roots[better, carg[better]]
        valid[rows] = True
        if start == 0:
            starts_inside[live] = ok[:, 0] & (sdf[:, 0] < 0)
        # First outside-to-inside crossing, including the step from the previous chunk.
        seq_s = torch.cat([prev_s[live, None], sdf], dim=1)
        seq_t = torch.cat([prev_t[live, None], t], dim=1)
        before = seq_s[:, :-1] > 0
        if not bracket_unconverged:  # an outside sample whose correspondence did not converge (+inf) is no bracket
            before &= torch.isfinite(seq_s[:, :-1])
        cross = before & (seq_s[:, 1:] < 0)
        found = cross.any(dim=1)
        first = cross.float().argmax(dim=1)
        rows = live[found]
        f = first[found]
        lo_t[rows], hi_t[rows] = seq_t[found, f], seq_t[found, f + 1]
        lo_s[rows], hi_s[rows] = seq_s[found, f], seq_s[found, f + 1]
        hit[rows] = True
        prev_s[live], prev_t[live] = sdf[:, -1], t[:, -1]
        if chunk_steps > 0:
            live = live[~found]
    if num_secant <= 0:
        return MarchResult(hit=hit, t=t_out, canonical=canon, valid=valid, num_samples=num_samples,
                           starts_inside=starts_inside, bracket=(lo_t, hi_t))  # fmt: skip
    # Secant refinement of the crossings.
    rows = torch.nonzero(hit).reshape(-1)
    if rows.numel():
        a_t, b_t, a_s, b_s = lo_t[rows], hi_t[rows], lo_s[rows], hi_s[rows]
        mid_t = b_t
        mid_root = None
        for _ in range(max(1, num_secant)):
            mid_t = a_t - a_s * (b_t - a_t) / (b_s - a_s)
            pts = origins[rows] + mid_t[:, None] * directions[rows]
            s, r, ok = deformed_sdf(pts, frame[rows], correspond, sdf_fn)
            num_samples += pts.shape[0]
            s = torch.where(ok, s, torch.zeros_like(s))
            inside = s < 0
            b_t, b_s = torch.where(inside, mid_t, b_t), torch.where(inside, s, b_s)
            a_t, a_s = torch.where(inside, a_t, mid_t), torch.where(inside, a_s, s)
            mid_root, mid_ok = r, ok
        t_out[rows] = mid_t
        canon[rows] = mid_root
        valid[rows] = mid_ok
    return MarchResult(hit=hit & valid, t=t_out, canonical=canon, valid=valid, num_samples=num_samples,
                       starts_inside=starts_inside, bracket=(lo_t, hi_t))  # fmt: skip


@torch.no_grad()
def march_in_bounds(
    origins: Float[Tensor, "N 3"],
    directions: Float[Tensor, "N 3"],
    frame: Int[Tensor, "N"],
    scene_lo: Float[Tensor, "3"],
    scene_hi: Float[Tensor, "3"],
    correspond: CorrespondFn,
    sdf_fn: SdfFn,
    num_steps: int = 100,
    num_secant: int = 8,
    bounds: Tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"]] | None = None,
    chunk_steps: int = 8,
    stride: int = 1,
) -> MarchResult:
    """March rays through the scene box: every one of ``num_steps`` samples (``bounds`` None, the dense
    reference), or only the same sample positions around per-ray ``bounds`` (the fast renderer).

    The fast path keeps the dense spacing, so both bracket the same crossings; it marches front to back in
    chunks of ``chunk_steps``, and a ray that starts inside the bounds' surface (one reaching out of them)
    also marches its segment in front of the bounds. With ``stride`` > 1 it first marches every
    ``stride``-th of those samples, then the dense samples between the two that bracket the first coarse
    crossing: the same crossing, unless the surface is thinner along the ray than ``stride`` samples.
    """
    box_near, box_far = ray_box(origins, directions, scene_lo.expand_as(origins), scene_hi.expand_as(origins))
    if bounds is None:
        return march(origins, directions, frame, box_near, box_far, correspond, sdf_fn, num_steps=num_steps,
                     num_secant=num_secant)  # fmt: skip
    near, far = ray_box(origins, directions, bounds[0], bounds[1])
    dt = (box_far - box_near).clamp_min(1e-6) / (num_steps - 1)
    live = far > near
    first = torch.floor((near - box_near) / dt).clamp(0, num_steps - 1)
    last = torch.ceil((far - box_near) / dt).clamp(0, num_steps - 1)
    steps = max(2, int((last - first + 1)[live].max())) if live.any() else 2
    near = torch.where(live, box_near + first * dt, near)
    far = torch.where(live, near + (steps - 1) * dt, far)
    if stride > 1:
        res = _march_strided(origins, directions, frame, near, dt, steps, stride, correspond, sdf_fn, num_secant,
                             chunk_steps)  # fmt: skip
    else:
        res = march(origins, directions, frame, near, far, correspond, sdf_fn, num_steps=steps,
                    num_secant=num_secant, chunk_steps=chunk_steps)  # fmt: skip
    rows = torch.nonzero(res.starts_inside & (first > 0)).reshape(-1)
    if rows.numel():
        k = int(first[rows].max()) + 1
        front = march(origins[rows], directions[rows], frame[rows], box_near[rows], box_near[rows] + (k - 1) * dt[rows],
                      correspond, sdf_fn, num_steps=k, num_secant=num_secant, chunk_steps=chunk_steps)  # fmt: skip
        res.take(rows, front)
    return res


def _march_strided(
    origins: Float[Tensor, "N 3"],
    directions: Float[Tensor, "N 3"],
    frame: Int[Tensor, "N"],
    near: Float[Tensor, "N"],
    dt: Float[Tensor, "N"],
    steps: int,
    stride: int,
    correspond: CorrespondFn,
    sdf_fn: SdfFn,
    num_secant: int,
    chunk_steps: int,
) -> MarchResult:
    """Every ``stride``-th of ``steps`` samples spaced ``dt`` from ``near``, then the samples between the pair
    bracketing each ray's first coarse crossing, refined; rays whose fine samples lose the crossing (a
    correspondence that does not converge there) are refined on the coarse bracket."""
    count = (steps - 2) // stride + 2  # the coarse samples cover the dense ones (the last may lie one stride on)
    coarse = march(origins, directions, frame, near, near + (count - 1) * stride * dt, correspond, sdf_fn,
                   num_steps=count, num_secant=0, chunk_steps=max(2, chunk_steps // stride),
                   bracket_unconverged=True)  # fmt: skip
    rows = torch.nonzero(coarse.hit).reshape(-1)
    coarse.hit[rows] = False
    if rows.numel() == 0:
        return coarse
    lo, hi = coarse.bracket[0][rows], coarse.bracket[1][rows]
    fine = march(origins[rows], directions[rows], frame[rows], lo, hi, correspond, sdf_fn, num_steps=stride + 1,
                 num_secant=num_secant)  # fmt: skip
    coarse.take(rows, fine)
    lost = ~fine.hit
    if lost.any():
        r = rows[lost]
        again = march(origins[r], directions[r], frame[r], lo[lost], hi[lost], correspond, sdf_fn, num_steps=2,
                      num_secant=num_secant)  # fmt: skip
        coarse.take(r, again)
    return coarse
