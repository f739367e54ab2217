"""The comparison's shared pieces: normals of a rendered depth map, the mesh signed distance of the FLAME
start, and the findings' verdicts of ``bench/compare.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from headstudio.fields.mesh_sdf_init import fit_sdf_to_surface, surface_signed_distance
from headstudio.metrics.geometry import depth_normals, normal_angle_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _camera_rays(h: int = 48, w: int = 48, focal: float = 60.0):
    j, i = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    d = torch.stack([(i - w / 2) / focal, -(j - h / 2) / focal, -torch.ones_like(i)], dim=-1)
    d = d / d.norm(dim=-1, keepdim=True)
    return torch.zeros(h, w, 3), d


def test_depth_normals_of_a_tilted_plane_face_the_camera():
    origins, dirs = _camera_rays()
    # Plane n . x = -c with n = normalize(0.3, -0.2, 1): the ray distance t solves n . (t d) = -c.
    n = torch.tensor([0.3, -0.2, 1.0])
    n = n / n.norm()
    t = -2.0 / (dirs @ n)
    depth = t[..., None]
    valid = torch.ones(t.shape, dtype=torch.bool)
    valid[:, :10] = False  # a hole: its border pixels get no normal
    normals = depth_normals(origins, dirs, depth, valid)
    region = torch.ones_like(valid)
    err = normal_angle_error(normals, n.expand_as(normals), region)
    assert err < 0.5
    assert (normals[:, :11].norm(dim=-1) == 0).all() and (normals[5:-5, 12:-1].norm(dim=-1) > 0.99).all()
    # A depth jump (a silhouette against the background) gets no normal on either side.
    depth[:, 30:] += 1.0
    normals = depth_normals(origins, dirs, depth, torch.ones_like(valid))
    assert (normals[1:-1, 29:31].norm(dim=-1) == 0).all()


def _sphere_samples(n: int = 4000):
    gen = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    return normals.clone(), normals


def test_surface_signed_distance_is_negative_inside_a_sphere():
    samples, normals = _sphere_samples()
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    for r in (0.3, 0.9, 1.1, 1.4):
        sd = surface_signed_distance(dirs * r, samples, normals)
        assert ((sd < 0) == (r < 1)).all()
        assert (sd.abs() - abs(r - 1)).abs().max() < 0.05  # sample spacing


def test_fit_sdf_to_surface_learns_the_sphere():
    torch.manual_seed(0)
    samples, normals = _sphere_samples()
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Softplus(beta=10), torch.nn.Linear(64, 64),
                              torch.nn.Softplus(beta=10), torch.nn.Linear(64, 1))  # fmt: skip
    fn = lambda x: net(x)[:, 0]  # noqa: E731
    losses = fit_sdf_to_surface(fn, net.parameters(), samples, normals, torch.full((3,), -1.5), torch.full((3,), 1.5),
                                steps=300, batch=1024, lr=3e-3, pool=8192)  # fmt: skip
    assert losses[-1] < 0.2 * losses[0]
    with torch.no_grad():
        probe = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4], [1.0, 0.0, 0.0]])
        s = fn(probe)
    assert s[0] < -0.5 and s[1] > 0.2 and abs(float(s[2])) < 0.1


def _video_row(psnr: float, psnr_dagger: float, normal: float | None = None, per_image=None) -> dict:
    row = {"psnr": psnr, "psnr_dagger": psnr_dagger, "test_time_steps": 20.0}
    if normal is not None:
        row.update(normal_error=normal, test_time_steps=0.0, psnr=psnr_dagger, per_image=per_image or [])
    return row


def test_findings_report_holds_and_does_not_hold_from_the_numbers():
    import compare

    per = lambda errs: [{"expression_norm": e, "normal_error": v} for e, v in zip((0.5, 1.0, 2.0, 2.5, 3.0, 4.0), errs)]  # noqa: E731
    video = {
        "tensorf": {"psnr_dagger": 20.0},
        "local-34": _video_row(23.0, 22.0),
        "local-5": _video_row(22.5, 21.0),
        "global-1": _video_row(22.6, 21.5),  # above 5 fields with codes: the chain is broken there
        "rignerf-star": _video_row(21.0, 20.5),
        "imavatar": _video_row(0, 18.0, 20.0, per([18, 19, 20, 20, 21, 22])),
        "imavatar-d-net": _video_row(0, 17.0, 25.0, per([18, 20, 24, 26, 28, 34])),
        "imavatar-b-morph": _video_row(0, 17.5, 19.0, per([15, 16, 19, 20, 21, 23])),
    }
    kinect = {"mononphm-track": {"depth_chamfer_l1_m": 0.002, "gt_chamfer_l1_m": 0.0025},
              "flame": {"depth_chamfer_l1_m": 0.0017, "gt_chamfer_l1_m": 0.0015}}  # fmt: skip
    verdicts = [f["holds"] for f in compare.findings(video, kinect)]
    chen_tto, chen_dagger, table4, table1, fig4, nphm = verdicts
    assert chen_tto is False  # 23 > 22.5 < 22.6
    assert chen_dagger is False  # 22 > 21 < 21.5
    assert table4 is True
    assert table1 is False  # B-Morph's 19 is below imavatar's 20
    assert fig4 is True  # growth 20.0 -> imavatar +3, D-Net +11, B-Morph +6 (bins of two)
    assert nphm is False
    video["global-1"] = _video_row(22.4, 20.9)
    video["imavatar-b-morph"]["normal_error"] = 21.0
    verdicts = [f["holds"] for f in compare.findings(video, {})]
    assert verdicts[0] is True and verdicts[3] is True and verdicts[-1] is None
