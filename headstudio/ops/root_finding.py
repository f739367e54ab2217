"""Batched root finding for warps, and gradients of the roots by implicit differentiation.

``broyden`` solves ``g(x) = 0`` for many independent 3-D problems at once (Broyden's "good"
method on the inverse Jacobian, as SNARF and IMavatar use it for the correspondence search
``w(x_c) = x_d``). Converged problems leave the active set, so later iterations only touch
the ones still moving. It runs without autograd.

``ImplicitRoot`` attaches gradients to a root found that way: if ``G(x*, sigma) = 0`` then
``dx*/dsigma = -(dG/dx)^-1 dG/dsigma`` (IMavatar eq. 10). Given the detached root, the
residual ``G(x*, sigma)`` computed *with* autograd and the detached Jacobian ``dG/dx`` at the
root, it returns ``x*`` whose backward pass is exactly that formula: no backpropagation
through the iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass
class RootResult:
    root: Float[Tensor, "N D"]
    """Last iterate of each problem."""
    converged: Bool[Tensor, "N"]
    """Residual norm below the tolerance."""
    residual: Float[Tensor, "N"]
    """Residual norm at ``root``."""
    steps: Int[Tensor, "N"]
    """Iterations each problem took."""
    stopped: Bool[Tensor, "N"]
    """Left early because ``stop`` said so (``root`` is then the iterate it said it for)."""


@torch.no_grad()
def broyden(
    fn: Callable[[Float[Tensor, "M D"], Int[Tensor, "M"]], Float[Tensor, "M D"]],
    x0: Float[Tensor, "N D"],
    jacobian_inv0: Float[Tensor, "N D D"],
    max_steps: int = 10,
    tol: float = 1e-5,
    drop_converged: bool = True,
    stop: Optional[Callable[[Float[Tensor, "M D"], Int[Tensor, "M"]], Bool[Tensor, "M"]]] = None,
) -> RootResult:
    """Solve ``fn(x, ids) = 0`` for N independent D-dimensional problems.

    ``fn(x, ids)`` evaluates the residuals of the problems ``ids`` at ``x`` (only the active
    ones are passed). ``jacobian_inv0`` is the initial inverse Jacobian (e.g. the inverse of
    the initialising bone's rotation). Stops a problem when its residual norm is below
    ``tol`` or after ``max_steps`` updates (IMavatar supp. 2.4: 10 steps, 1e-5).
    ``drop_converged=False`` keeps iterating every problem for all steps (the dense reference).
    ``stop(x, ids)``, checked on the start and after every update of the active problems,
    removes those it marks (e.g. an iterate that reached a root already known) as ``stopped``.
    """
    n = x0.shape[0]
    ids_all = torch.arange(n, device=x0.device)
    x = x0.clone()
    j_inv = jacobian_inv0.clone()
    g = fn(x, ids_all)
    res = g.norm(dim=-1)
    steps = torch.zeros(n, dtype=torch.long, device=x0.device)
    best_x, best_res = x.clone(), res.clone()
    stopped = torch.zeros(n, dtype=torch.bool, device=x0.device)
    active = torch.nonzero(res >= tol).reshape(-1) if drop_converged else ids_all
    for step in range(max_steps + 1):
        if stop is not None and active.numel():
            halt = stop(x[active], active)
            stopped[active[halt]] = True
            best_x[active[halt]] = x[active[halt]]
            active = active[~halt]
        if active.numel() == 0 or step == max_steps:
            break
        ja, ga = j_inv[active], g[active]
        dx = -(ja @ ga[..., None])[..., 0]
        x_new = x[active] + dx
        g_new = fn(x_new, active)
        dg = g_new - ga
        # Good Broyden update of the inverse Jacobian: J^-1 += (dx - J^-1 dg) dx^T J^-1 / (dx^T J^-1 dg).
        jdg = (ja @ dg[..., None])[..., 0]
        denom = (dx * jdg).sum(-1, keepdim=True)
        denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
        u = (dx - jdg) / denom
        ja = ja + u[..., None] * (dx[:, None, :] @ ja)
        x[active], g[active], j_inv[active] = x_new, g_new, ja
        steps[active] += 1
        r = g_new.norm(dim=-1)
        better = r < best_res[active]
        idx = active[better]
        best_x[idx], best_res[idx] = x_new[better], r[better]
        if drop_converged:
            active = active[r >= tol]
    return RootResult(best_x, best_res < tol, best_res, steps, stopped)


class _ImplicitRoot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, root: Tensor, residual: Tensor, jacobian: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(jacobian)
        return root.clone()

    @staticmethod
    def backward(ctx, grad_root: Tensor):  # type: ignore[override]
        (jacobian,) = ctx.saved_tensors
        # d root / d residual = -J^-1, so grad_residual = -J^-T grad_root.
        grad_residual = -torch.linalg.solve(jacobian.transpose(-1, -2), grad_root[..., None])[..., 0]
        return None, grad_residual, None


def implicit_root(
    root: Float[Tensor, "N D"], residual: Float[Tensor, "N D"], jacobian: Float[Tensor, "N D D"]
) -> Float[Tensor, "N D"]:
    """``root`` with the gradient of the implicit function theorem (IMavatar eq. 10).

    ``residual`` is ``G(root, sigma)`` evaluated with autograd at the (detached) root, ``jacobian``
    is ``dG/dx`` there (detached, invertible). Gradients flow into whatever ``residual`` depends
    on besides the root, never through the solver.
    """
    return _ImplicitRoot.apply(root.detach(), residual, jacobian.detach())
