"""Training MonoNPHM's prior on a scan set: losses fall, checkpoints load with weights_only and resume,
foreign checkpoints are refused in one line."""

from __future__ import annotations

import torch
import pytest

from headstudio.data.errors import DataError
from headstudio.data.scans import ScanSetConfig, make_scans, open_scan_set
from headstudio.deformers.nphm_backward import DeformationSizes
from headstudio.fields.nphm import EnsembleSizes
from headstudio.prior.model import PriorSizes
from headstudio.prior.training import PriorTrainConfig, load_checkpoint, train_prior

QUICK = dict(batch_scans=4, surface_points=200, near_points=100, corr_points=100, halve_every=1000, lr_networks=3e-3)
TINY = PriorSizes(
    EnsembleSizes(global_code=8, local_code=4, hidden=24, layers=2, feature_hidden=16, feature=8, anchor_hidden=16),
    DeformationSizes(expression_code=8, hidden=32, layers=2),
)


@pytest.fixture(scope="module")
def scan_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans") / "set"
    make_scans(
        root, ScanSetConfig(identities=1, expressions=2, surface_points=2000, near_points=1000, corr_points=500, observed_only=False)
    )
    return open_scan_set(root)


def test_tiny_prior_overfits_two_scans_saves_and_resumes(scan_set, tmp_path):
    out = tmp_path / "prior.ckpt"
    history = []
    cfg = PriorTrainConfig(epochs=30, **QUICK)
    train_prior(scan_set, cfg, out, progress=lambda e, n, losses: history.append(losses), save_every=15, sizes=TINY)
    first, last = history[0], history[-1]
    assert last["normals"] < first["normals"] and last["eikonal"] < first["eikonal"] and last["colour"] < first["colour"]
    raw = torch.load(out, weights_only=True)  # plain data and tensors only
    assert raw["epoch"] == 30 and raw["format"] == "headstudio-nphm-prior"
    model, ck = load_checkpoint(out)
    assert model.z_geo.num_embeddings == 1 and model.z_exp.num_embeddings == 2
    neutral = scan_set.scans.index(scan_set.neutral(0))
    scan = scan_set.load(neutral)
    x = torch.as_tensor(scan["surface_points"])[None]
    codes = {k: v.detach() for k, v in model.codes(torch.tensor([0]), torch.tensor([neutral])).items()}
    with torch.no_grad():
        out_n = model.posed(x, codes, colour=False)
        anchors0 = model.field.anchors(torch.zeros(1, TINY.ensemble.global_code))[0]
    # World units (FLAME metres x 4; a head spans about one): the surface within 7.5 mm, the neutral
    # deformation within 5 mm of the identity.
    assert out_n["sdf"].abs().mean() < 0.03
    assert (out_n["canonical"] - x).norm(dim=-1).mean() < 0.02
    gt = torch.as_tensor(scan["vertices"])[model.anchor_vertices]
    assert (anchors0 - gt).norm(dim=-1).mean() < 0.03  # z_geo = 0 puts the anchors on the (mean) face
    # Resume: continue from epoch 30 to 32 with the saved optimizer state.
    more = []
    train_prior(scan_set, PriorTrainConfig(epochs=32, **QUICK), out, resume=True, progress=lambda e, n, losses: more.append(e))
    assert more == [31, 32] and torch.load(out, weights_only=True)["epoch"] == 32

    # Fitting a sequence's codes in 3-D (the tracking bench's ceiling): surfaces the prior itself makes at one
    # z_geo and two z_exp; fitted from zero codes (one shared z_geo, a z_exp each), they end nearer the zero level set.
    from headstudio.ops.mesh import sample_surface
    from headstudio.prior.inspect import fit_sequence_codes, posed_mesh

    gen = torch.Generator().manual_seed(0)
    dim, e_dim = model.field.code_dim, TINY.deformation.expression_code
    target = {"geo": (0.3 * torch.randn(1, dim, generator=gen)).expand(2, -1), "app": torch.zeros(2, dim),
              "exp": torch.randn(2, e_dim, generator=gen)}  # fmt: skip
    surfaces = []
    for i in range(2):
        v, f = posed_mesh(model, {k: t[i : i + 1] for k, t in target.items()}, resolution=40)
        _, _, pts, nrm = sample_surface(torch.as_tensor(v), torch.as_tensor(f.astype("int64")), 3000, gen)
        surfaces.append((pts.float(), nrm.float()))
    fitted = fit_sequence_codes(model, surfaces, steps=60, lr=2e-2, points=300)
    assert fitted["exp"].shape == (2, e_dim) and torch.equal(fitted["geo"][0], fitted["geo"][1])
    pts = torch.stack([p[:500] for p, _ in surfaces])
    with torch.no_grad():
        before = model.posed(pts, {k: torch.zeros_like(v) for k, v in fitted.items()}, colour=False)["sdf"].abs().mean()
        after = model.posed(pts, fitted, colour=False)["sdf"].abs().mean()
    assert after < 0.75 * before
    assert all(p.requires_grad for p in model.parameters())  # the networks are unfrozen again


def test_foreign_or_truncated_checkpoints_are_refused_in_one_line(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"pipeline": {}, "step": 3}, other)
    with pytest.raises(DataError, match="not a headstudio NPHM prior") as err:
        load_checkpoint(other)
    assert "\n" not in str(err.value)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(other.read_bytes()[:40])
    with pytest.raises(DataError, match="not a readable checkpoint") as err:
        load_checkpoint(cut)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
