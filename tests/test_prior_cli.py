"""hs-prior on the command line: train, mesh, fit; bad checkpoints give one line."""

from __future__ import annotations

import pytest
import torch

from headstudio.export.ply import read_ply
from tests.conftest import run_in_process


def hs_prior(*args):
    return run_in_process("hs-prior", *args)


@pytest.mark.e2e
def test_hs_prior_train_mesh_fit(tmp_path):
    from headstudio.data.scans import ScanSetConfig, make_scans

    scans = tmp_path / "scans"
    make_scans(scans, ScanSetConfig(identities=1, expressions=2, surface_points=600, near_points=300, corr_points=200, observed_only=False))
    ckpt = tmp_path / "prior.ckpt"
    res = hs_prior("train", "--scans", str(scans), "--output", str(ckpt), "--preset", "cpu", "--epochs", "2",
                   "--surface-points", "64", "--near-points", "32", "--corr-points", "32", "--save-every", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2 and (tmp_path / "prior.tb").is_dir()
    ply = tmp_path / "head.ply"
    res = hs_prior("mesh", "--prior", str(ckpt), "--output", str(ply), "--resolution", "24", "--expression", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    verts, faces = read_ply(ply)
    assert len(verts) > 100 and len(faces) > 100
    res = hs_prior("fit", "--prior", str(ckpt), "--scan", str(scans / "scans" / "id000_ex01.npz"), "--steps", "2", "--resolution", "24")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "L1-Chamfer" in res.stdout and "normal consistency" in res.stdout
    res = hs_prior("mesh", "--prior", str(ckpt), "--output", str(ply), "--identity", "5")
    assert res.returncode == 1 and "out of range" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.e2e
def test_hs_prior_refuses_another_models_checkpoint(tmp_path):
    other = tmp_path / "nerfstudio.ckpt"
    torch.save({"pipeline": {"a": torch.zeros(2)}, "step": 10}, other)
    res = hs_prior("mesh", "--prior", str(other), "--output", str(tmp_path / "x.ply"))
    assert res.returncode == 1 and "not a headstudio NPHM prior" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.ply").exists()
