"""FLAME parameters recovered from FLAME's own meshes by least squares (headstudio.flame.fitting)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from headstudio.flame.fitting import fit_flame_to_meshes
from headstudio.flame.model import FlameModel

FRAMES = 6
JOINTS = {"neck": slice(3, 6), "jaw": slice(6, 9), "left eye": slice(9, 12), "right eye": slice(12, 15)}


def random_rotations(rng: np.random.Generator, count: int, max_degrees: float) -> np.ndarray:
    axis = rng.normal(size=(count, 3))
    return axis / np.linalg.norm(axis, axis=1, keepdims=True) * np.deg2rad(rng.uniform(0, max_degrees, (count, 1)))


def ground_truth(flame: FlameModel, frames: int = FRAMES, seed: int = 0) -> dict[str, np.ndarray]:
    """Known shape, expressions and neck / jaw / eye rotations, and the meshes FLAME makes of them."""
    rng = np.random.default_rng(seed)
    shape = np.zeros(flame.num_shape)
    shape[:20] = rng.normal(size=20) * 0.5
    expression = rng.normal(size=(frames, flame.num_expression)) * 0.5
    pose = np.zeros((frames, 15))
    pose[:, JOINTS["neck"]] = random_rotations(rng, frames, 15)
    pose[:, 6] = np.deg2rad(rng.uniform(0, 20, frames))  # the jaw opens about x ...
    pose[:, 7:9] = np.deg2rad(rng.uniform(-3, 3, (frames, 2)))  # ... and turns a little
    pose[:, JOINTS["left eye"]] = random_rotations(rng, frames, 15)
    pose[:, JOINTS["right eye"]] = random_rotations(rng, frames, 15)
    with torch.no_grad():
        vertices = flame(torch.tensor(shape), torch.tensor(expression), torch.tensor(pose)).vertices.numpy()
    return dict(shape=shape, expression=expression, pose=pose, vertices=vertices)


def max_angle_errors(fitted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Largest angle of R_fit^T R_true over the frames, per joint, in degrees."""
    out = {}
    for name, cols in JOINTS.items():
        diff = Rotation.from_rotvec(fitted[:, cols]).inv() * Rotation.from_rotvec(true[:, cols])
        out[name] = float(np.rad2deg(diff.magnitude()).max())
    return out


def assert_rotations_recovered(fit, truth) -> None:
    errors = max_angle_errors(fit.pose, truth["pose"])
    assert max(errors.values()) < 1.0, errors
    assert np.all(fit.pose[:, :3] == 0)


def test_fit_with_given_expression_recovers_shape_and_rotations(flame):
    truth = ground_truth(flame)
    # 100 coefficients given to a 50-coefficient model: the extra ones are zero, so they are dropped.
    given = np.pad(truth["expression"], ((0, 0), (0, 50)))
    calls = []
    fit = fit_flame_to_meshes(flame, truth["vertices"], expression=given, progress=lambda d, t: calls.append((d, t)))
    assert fit.shape.shape == (100,) and fit.expression.shape == (FRAMES, 50) and fit.pose.shape == (FRAMES, 15)
    assert_rotations_recovered(fit, truth)
    assert fit.residual.shape == (FRAMES,) and fit.residual.max() < 1e-5
    assert np.abs(fit.shape - truth["shape"]).max() < 0.01
    # The shape's own effect on the mesh is recovered to well under a micron RMS.
    offset = flame.shapedirs.numpy() @ (fit.shape - truth["shape"])
    assert np.sqrt((offset**2).sum(-1).mean()) < 1e-6
    np.testing.assert_array_equal(fit.expression, truth["expression"])
    assert 0 < fit.iterations <= 200
    done = [d for d, _ in calls]
    assert calls[-1] == (200, 200) and done == sorted(done)


def test_fit_expression_too(flame, flame_path):
    truth = ground_truth(flame, seed=1)
    single = FlameModel.from_file(flame_path, num_shape=100, num_expression=50)  # float32: fitted on a float64 copy
    fit = fit_flame_to_meshes(single, torch.tensor(truth["vertices"]))
    assert single.v_template.dtype == torch.float32
    assert_rotations_recovered(fit, truth)
    assert fit.residual.max() < 1e-5
    assert fit.expression.shape == (FRAMES, 50)


def test_chunked_fit_shares_one_shape(flame):
    """More frames than a chunk: shape from an evenly spaced subset, then the frames chunk by chunk."""
    truth = ground_truth(flame, seed=2)
    calls = []
    fit = fit_flame_to_meshes(
        flame, truth["vertices"], expression=truth["expression"], chunk_size=4, progress=lambda d, t: calls.append(t)
    )
    assert set(calls) == {3 * 200}  # the subset, then chunks of 4 and 2 frames
    assert_rotations_recovered(fit, truth)
    assert fit.residual.max() < 1e-5
    assert np.abs(fit.shape - truth["shape"]).max() < 0.01


def test_fixed_shape_is_kept(flame):
    truth = ground_truth(flame, seed=3)
    fit = fit_flame_to_meshes(
        flame, truth["vertices"], expression=truth["expression"], fit_shape=False, shape=truth["shape"]
    )
    np.testing.assert_array_equal(fit.shape, truth["shape"])
    assert_rotations_recovered(fit, truth)
    assert fit.residual.max() < 1e-5


def test_bad_inputs_are_rejected(flame):
    truth = ground_truth(flame, frames=2)
    verts, expr = truth["vertices"], truth["expression"]
    with pytest.raises(ValueError, match=rf"{verts.shape[1] - 1} vertices.*{flame.num_vertices}"):
        fit_flame_to_meshes(flame, verts[:, :-1], expression=expr)
    with pytest.raises(ValueError, match="100 coefficients.*uses 50.*num_expression=100"):
        fit_flame_to_meshes(flame, verts, expression=np.pad(expr, ((0, 0), (0, 50)), constant_values=0.1))
    with pytest.raises(ValueError, match="for 2 frames"):
        fit_flame_to_meshes(flame, verts, expression=expr[:1])
    with pytest.raises(ValueError, match="frames, vertices, 3"):
        fit_flame_to_meshes(flame, verts[0], expression=expr)
    # Fewer coefficients than the model uses are zero-padded.
    fit = fit_flame_to_meshes(flame, verts, expression=expr[:, :30], max_iterations=0)
    np.testing.assert_array_equal(fit.expression, np.pad(expr[:, :30], ((0, 0), (0, 20))))
    assert fit.iterations == 0
