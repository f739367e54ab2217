"""Parts of MonoNPHM's prior: anchor layout, neighbourhood blending, the local ensemble, the
backward deformation, surface sampling and surface metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstudio.deformers.nphm_backward import BackwardDeformation, DeformationSizes
from headstudio.fields.anchor_blend import blend_weights, dense_weights, nearest_anchors
from headstudio.fields.nphm import EnsembleSizes, LocalEnsembleField, mean_anchor_positions
from headstudio.fields.nphm_anchors import LANDMARK_MIDLINE, LANDMARK_PAIRS, build_anchor_layout
from headstudio.metrics.surface import surface_distance
from headstudio.ops.mesh import sample_surface

TINY = EnsembleSizes(global_code=8, local_code=4, hidden=16, layers=2, feature_hidden=8, feature=4, anchor_hidden=8)


@pytest.fixture(scope="module")
def neutral(flame):
    out = flame()
    return out.vertices[0].numpy(), flame.full_landmarks(out.vertices)[0].numpy(), flame.region_masks


@pytest.fixture(scope="module")
def layout(neutral):
    return build_anchor_layout(*neutral)


def test_anchor_layout_has_mirror_pairs_on_the_landmarks(neutral, layout):
    verts, lms, _ = neutral
    a = verts[layout.vertex_ids]
    assert len(layout.vertex_ids) == 65 and len(set(layout.vertex_ids.tolist())) == 65
    assert layout.num_mlps == 35  # 30 pairs share, 5 on the midline
    right, left = a[0:60:2], a[1:60:2]
    assert (right[:, 0] < 0).all() and (left[:, 0] > 0).all()
    assert np.abs(right * [-1, 1, 1] - left).max() < 0.01  # mirror images (metres)
    assert np.abs(a[60:, 0]).max() < 0.005  # the midline
    # The landmark anchors sit on their landmarks (the nearest vertex: within a few millimetres).
    for k, (i, j) in enumerate(LANDMARK_PAIRS):
        assert np.linalg.norm(a[2 * k] - lms[i]) < 0.006 and np.linalg.norm(a[2 * k + 1] - lms[j]) < 0.006
    for k, m in enumerate(LANDMARK_MIDLINE):
        assert np.linalg.norm(a[60 + k] - lms[m]) < 0.006


def test_blend_weights_sum_to_one_and_jump_only_by_the_leaving_anchors_share():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(1, 65, 3, generator=g) * 2 - 1
    a, b = torch.rand(2, 3, generator=g) * 2 - 1
    t = torch.linspace(0, 1, 20001)
    path = (a + (b - a) * t[:, None])[None]
    idx, dist = nearest_anchors(path, anchors)
    w = blend_weights(dist)
    assert torch.allclose(w.sum(-1), torch.ones(1, len(t)), atol=1e-6)
    dense = dense_weights(idx, w, 65)[0]
    step = (dense[1:] - dense[:-1]).abs().max(-1).values
    crossed = (idx[0, 1:].sort(-1).values != idx[0, :-1].sort(-1).values).any(-1)
    assert crossed.any()
    assert step[~crossed].max() < 1e-3  # continuous while the neighbourhood stays the same
    # Where a neighbour is swapped, the leaving (farthest) anchor weighed exp(-2) of one at the query:
    # at most 1/8 of the blend, in practice a few percent.
    far = w[0, :-1].min(-1).values
    assert (step[crossed] <= far[crossed] + 1e-3).all() and step[crossed].max() < 0.125


def test_mirrored_query_and_code_give_the_pair_partners_value(neutral, layout):
    verts, _, _ = neutral
    field = LocalEnsembleField(layout, mean_anchor_positions(verts * 4, layout), TINY).double()
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    x = torch.randn(1, 50, 3, dtype=torch.float64) * 0.1
    # One pair's shared MLP: anchor 2i on x with code z equals anchor 2i+1 on mirror(x) with the same code.
    for i in (0, 7, 29):
        a_r, a_l = field.anchors.mean[2 * i].double(), field.anchors.mean[2 * i + 1].double()
        a_l_exact = a_r * mirror  # an exactly mirrored partner
        z = torch.randn(TINY.global_code + TINY.local_code, dtype=torch.float64)
        omega = torch.randn(50, 2, dtype=torch.float64)
        rows_r = torch.cat([z.expand(50, -1), x[0] - a_r, omega], -1)
        rows_l = torch.cat([z.expand(50, -1), (x[0] * mirror - a_l_exact) * mirror, omega], -1)
        which = torch.full((50,), int(layout.mlp_of_anchor[2 * i]))
        assert layout.mlp_of_anchor[2 * i] == layout.mlp_of_anchor[2 * i + 1]
        assert torch.allclose(field.geometry(rows_r, which)[0], field.geometry(rows_l, which)[0])
        del a_l


def test_ensemble_outputs_and_gradients(neutral, layout):
    verts, _, _ = neutral
    field = LocalEnsembleField(layout, mean_anchor_positions(verts * 4, layout), TINY)
    z_geo, z_app = torch.zeros(2, field.code_dim), torch.randn(2, field.code_dim) * 0.1
    x = (torch.randn(2, 40, 3) * 0.3).requires_grad_(True)
    out = field(x, torch.zeros(2, 40, 2), z_geo, z_app)
    assert out["sdf"].shape == (2, 40) and out["rgb"].shape == (2, 40, 3) and out["anchors"].shape == (2, 65, 3)
    assert torch.allclose(out["weights"].sum(-1), torch.ones(2, 40), atol=1e-6)
    assert out["neighbours"].shape[-1] == 9 and (out["neighbours"][..., -1] == 65).all()  # 8 + the global MLP
    (grad,) = torch.autograd.grad(out["sdf"].sum(), x, create_graph=True)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.allclose(out["anchors"][0], field.anchors.mean)  # z = 0: the mean layout


def test_backward_deformation_starts_at_the_identity():
    d = BackwardDeformation(geometry_code=40, sizes=DeformationSizes(expression_code=10, hidden=32, layers=6))
    x = torch.randn(3, 20, 3)
    xc, omega = d(x, torch.randn(3, 10), torch.randn(3, 40))
    assert torch.equal(xc, x) and torch.equal(omega, torch.zeros(3, 20, 2))
    assert sum(p.numel() for p in d.parameters()) > 0


def test_surface_samples_and_metrics(flame):
    out = flame()
    verts, faces = out.vertices[0], flame.faces
    g = torch.Generator().manual_seed(1)
    face, bary, pts, nrm = sample_surface(verts, faces, 20000, g)
    assert torch.allclose((verts[faces[face]] * bary[..., None]).sum(-2), pts)
    assert torch.allclose(nrm.norm(dim=-1), torch.ones(20000, dtype=nrm.dtype))
    _, _, pts2, nrm2 = sample_surface(verts, faces, 20000, g)
    same = surface_distance(pts.numpy(), nrm.numpy(), pts2.numpy(), nrm2.numpy(), threshold=0.003)
    moved = surface_distance(pts.numpy() + [0.005, 0, 0], nrm.numpy(), pts2.numpy(), nrm2.numpy(), threshold=0.003)
    assert same.chamfer_l1 < 0.0025 and same.normal_consistency > 0.9 and same.fscore > 0.8
    assert moved.chamfer_l1 > same.chamfer_l1 + 0.001 and moved.fscore < same.fscore
