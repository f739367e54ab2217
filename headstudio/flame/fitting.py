"""Least-squares fit of FLAME parameters to tracked FLAME meshes.

INSTA / metrical-tracker and MonoNPHM give one tracked mesh per frame in FLAME space (metres,
no global rotation or translation: the head pose is in the camera) but not every parameter:
INSTA writes only the expression, MonoNPHM's tracker none. :func:`fit_flame_to_meshes`
recovers the rest once per subject: the shape shared by all frames and, per frame, the neck,
jaw and eye rotations (and the expression where none is given).

The objective is the plain mean squared vertex distance, with no regulariser, so meshes that
FLAME itself produced are recovered exactly (to the optimiser's tolerance). Directions the
meshes do not determine (a basis combination that moves no vertex) stay at their initial value
to round-off: L-BFGS steps only along gradients. It is minimised in float64 by L-BFGS with a strong-Wolfe
line search, all frames of a problem batched, on preconditioned variables: the shape and
expression coefficients whitened by their basis's Gram matrix, the rotations scaled by the norm
of their Jacobian column at zero pose, so that a unit step of any variable moves the mesh by
about the same RMS distance.

Sequences longer than ``chunk_size`` frames do not fit in one batch: the shape is then fitted
(with the per-frame parameters) on ``chunk_size`` evenly spaced frames, and the per-frame
parameters of all frames chunk by chunk with that shape fixed. Per-frame parameters are
independent given the shape, so only the shape sees fewer frames than in the joint problem.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from headstudio.flame.model import POSE_DIM, FlameModel

ZERO_COEFFICIENT = 1e-6
"""Largest |value| of a given coefficient beyond the model's count that is dropped as zero."""
STEP_ITERATIONS = 10
"""L-BFGS iterations per ``optimizer.step`` call (progress is reported between calls)."""
ROTATION_PROBE = 1e-4
"""Forward-difference step (radians) that measures the preconditioner of the rotations."""

Array = Union[np.ndarray, Tensor]


@dataclass
class MeshFit:
    """FLAME parameters fitted to tracked meshes (float64)."""

    shape: Float[np.ndarray, "S"]
    expression: Float[np.ndarray, "N E"]
    """The given expression (zero-padded to the model's count), or the fitted one."""
    pose: Float[np.ndarray, "N 15"]
    """Axis-angle [global, neck, jaw, left eye, right eye]; the global slot (0:3) is zero."""
    residual: Float[np.ndarray, "N"]
    """Per-frame RMS distance between the fitted and the given vertices, metres."""
    iterations: int
    """L-BFGS iterations, summed over the problems of a chunked fit."""


def _coefficients(values: Array, count: int, name: str) -> Tensor:
    """``values`` (..., K) as float64 with the model's ``count`` coefficients: zero-padded, or with
    the trailing ones dropped where they are ~0."""
    values = torch.as_tensor(values).detach().to(torch.float64)
    k = values.shape[-1]
    if k > count:
        extra = values[..., count:].abs().max().item()
        if extra > ZERO_COEFFICIENT:
            raise ValueError(
                f"{name} has {k} coefficients but the FLAME model uses {count}, and those beyond {count} are "
                f"not zero (max |value| {extra:.3g}); load the model with num_{name}={k}"
            )
        values = values[..., :count]
    return F.pad(values, (0, count - values.shape[-1]))


def _whitening(dirs: Float[Tensor, "V 3 K"]) -> Float[Tensor, "K K"]:
    """``W`` with ``(dirs W)^T (dirs W) = I``: coefficients written as ``W z`` are decorrelated and
    each ``z`` moves the mesh by the same RMS distance. Eigenvalues of the Gram matrix below 1e-10
    of its trace (combinations that move no vertex) are clamped there, so the round-off gradient
    along them moves them negligibly."""
    flat = dirs.flatten(0, 1)
    eigenvalues, vectors = torch.linalg.eigh(flat.T @ flat)
    return vectors / eigenvalues.clamp_min(1e-10 * eigenvalues.sum().clamp_min(1e-30)).sqrt()


def fit_flame_to_meshes(
    flame: FlameModel,
    vertices: Float[Array, "N V 3"],
    expression: Optional[Float[Array, "N E"]] = None,
    fit_shape: bool = True,
    shape: Optional[Float[Array, "S"]] = None,
    max_iterations: int = 200,
    tolerance: float = 1e-10,
    progress: Optional[Callable[[int, int], None]] = None,
    chunk_size: int = 256,
) -> MeshFit:
    """Fit shape, neck, jaw and eye rotations (and the expression if not given) to FLAME meshes.

    ``vertices`` are the tracked meshes in FLAME space (metres, zero global pose). A given
    ``expression`` is kept fixed; with fewer coefficients than the model uses it is zero-padded,
    with more the extra ones must be ~0. ``shape`` is the initial shape (zeros if None), or the
    fixed one when ``fit_shape`` is False. ``max_iterations`` and ``tolerance`` apply to each
    L-BFGS problem: it stops when the objective, the mean squared vertex distance relative to
    that of the initial guess, changes by less than ``tolerance`` in an iteration.
    ``progress(done, total)`` reports iterations (a problem that converges early counts in full).
    At most ``chunk_size`` frames are batched in one problem (see the module docstring). The
    caller's model is not modified (a float64 copy is fitted if it is float32).
    """
    device = flame.v_template.device
    target = torch.as_tensor(vertices).detach().to(device, torch.float64)
    if target.ndim != 3 or target.shape[-1] != 3:
        raise ValueError(f"vertices must be (frames, vertices, 3), got {tuple(target.shape)}")
    n = target.shape[0]
    if target.shape[1] != flame.num_vertices:
        raise ValueError(f"the meshes have {target.shape[1]} vertices but the FLAME model has {flame.num_vertices}")
    if n == 0:
        raise ValueError("no meshes to fit")
    given = None
    if expression is not None:
        given = _coefficients(expression, flame.num_expression, "expression").to(device)
        if given.ndim != 2 or given.shape[0] != n:
            raise ValueError(f"expression must be (frames, coefficients) for {n} frames, got {tuple(given.shape)}")
    current = torch.zeros(flame.num_shape, dtype=torch.float64)
    if shape is not None:
        current = _coefficients(shape, flame.num_shape, "shape")
        if current.ndim == 2 and current.shape[0] == 1:
            current = current[0]
        if current.ndim != 1:
            raise ValueError(f"shape must be (coefficients,), got {tuple(current.shape)}")
    current = current.to(device)
    model = flame if flame.v_template.dtype == torch.float64 else copy.deepcopy(flame).double()

    chunks = list(torch.arange(n, device=device).split(chunk_size))
    problems = [(chunk, fit_shape and len(chunks) == 1) for chunk in chunks]
    if fit_shape and len(chunks) > 1:
        subset = torch.linspace(0, n - 1, chunk_size, device=device).round().long().unique()
        problems.insert(0, (subset, True))
    pose = torch.zeros(n, POSE_DIM, dtype=torch.float64, device=device)
    expr = torch.zeros(n, model.num_expression, dtype=torch.float64, device=device) if given is None else given.clone()
    total = max_iterations * len(problems)
    iterations = 0
    for k, (frames, with_shape) in enumerate(problems):
        report = (lambda done, k=k: progress(k * max_iterations + done, total)) if progress else None
        current, expr[frames], pose[frames], its = _fit(
            model, target[frames], None if given is None else given[frames], current, with_shape,
            max_iterations, tolerance, report,
        )  # fmt: skip
        iterations += its
    if progress:
        progress(total, total)
    with torch.no_grad():
        residual = torch.cat(
            [(model(current, expr[c], pose[c]).vertices - target[c]).square().sum(-1).mean(-1).sqrt() for c in chunks]
        )
    numpy = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return MeshFit(numpy(current), numpy(expr), numpy(pose), numpy(residual), iterations)


def _fit(
    model: FlameModel,
    target: Float[Tensor, "N V 3"],
    expression: Optional[Float[Tensor, "N E"]],
    shape: Float[Tensor, "S"],
    fit_shape: bool,
    max_iterations: int,
    tolerance: float,
    report: Optional[Callable[[int], None]],
) -> tuple[Tensor, Tensor, Tensor, int]:
    """One batched L-BFGS problem; returns shape, expression, pose (N, 15) and its iteration count."""
    n, num_vertices = target.shape[:2]
    opts = dict(dtype=torch.float64, device=target.device)
    with torch.no_grad():
        initial = model(shape, expression, torch.zeros(n, POSE_DIM, **opts)).vertices
        f0 = (initial - target).square().sum(-1).mean().clamp_min(1e-30)
        # Neck, jaw and eye rotations: norm of each Jacobian column at zero pose (forward difference).
        probe = F.pad(ROTATION_PROBE * torch.eye(POSE_DIM - 3, **opts), (3, 0))
        rest = model(shape, pose=torch.zeros(1, POSE_DIM, **opts)).vertices
        rotation_norm = (model(shape, pose=probe).vertices - rest).flatten(1).norm(dim=1) / ROTATION_PROBE
    # Scaled so that the objective's curvature is ~2 along every variable (whole mesh, all frames).
    per_frame, shared = torch.sqrt(n * num_vertices * f0), torch.sqrt(num_vertices * f0)
    scale_rot = rotation_norm.clamp_min(1e-12) / per_frame
    white_expr, white_shape = _whitening(model.exprdirs) * per_frame, _whitening(model.shapedirs) * shared

    z_rot = torch.zeros(n, POSE_DIM - 3, **opts, requires_grad=True)
    z_expr = torch.zeros(n, model.num_expression, **opts, requires_grad=True) if expression is None else None
    z_shape = torch.zeros(model.num_shape, **opts, requires_grad=True) if fit_shape else None
    params = [z for z in (z_rot, z_expr, z_shape) if z is not None]

    def unpack() -> tuple[Tensor, Tensor, Tensor]:
        pose = F.pad(z_rot / scale_rot, (3, 0))
        expr = expression if z_expr is None else z_expr @ white_expr.T
        return (shape if z_shape is None else shape + white_shape @ z_shape), expr, pose

    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=STEP_ITERATIONS, max_eval=30 * STEP_ITERATIONS, tolerance_grad=tolerance,
        tolerance_change=tolerance, history_size=100, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (model(*unpack()).vertices - target).square().sum(-1).mean() / f0
        loss.backward()
        return loss

    done = 0
    with torch.enable_grad():
        while done < max_iterations:
            wanted = min(STEP_ITERATIONS, max_iterations - done)
            optimizer.param_groups[0]["max_iter"] = wanted
            optimizer.step(closure)
            taken = optimizer.state[params[0]]["n_iter"] - done
            done += taken
            if report:
                report(done)
            if taken < wanted:  # a tolerance was met
                break
    shape, expr, pose = (t.detach() for t in unpack())
    return shape, expr, pose, done
