"""Synthetic head scan sets (``hs-synth scans``): samples that agree with the meshes, and a reader
that refuses bad input in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
import trimesh

from headstudio.data.errors import DataError
from headstudio.data.scans import FORMAT_NAME, FORMAT_VERSION, ScanSetConfig, load_scan, make_scans, open_scan_set
from headstudio.flame.constants import WORLD_SCALE
from headstudio.flame.model import FlameModel
from tests.conftest import run_in_process

CFG = ScanSetConfig(identities=2, expressions=3, surface_points=3000, near_points=2000, corr_points=1000)


@pytest.fixture(scope="module")
def scan_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("scans") / "set"
    calls = []
    stats = make_scans(out, CFG, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 6) for k in range(1, 7)]
    assert stats["scans"] == 6 and stats["bytes"] > 0
    ss = open_scan_set(out)
    return ss, [ss.load(k) for k in range(len(ss))]


def distance_to_mesh(vertices, faces, points):
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    return trimesh.proximity.closest_point(mesh, points)[1]


def neutral_index(ss, identity):
    return ss.scans.index(ss.neutral(identity))


def test_manifest_round_trip(scan_set):
    ss, arrays = scan_set
    doc = ss.manifest
    assert doc["format"] == FORMAT_NAME and doc["version"] == FORMAT_VERSION
    assert doc["config"] == json.loads(json.dumps(asdict(CFG)))
    assert doc["units"] == "world units = FLAME metres x 4" and doc["world_scale"] == WORLD_SCALE
    assert (ss.root / doc["flame_model"]).is_file()
    assert ss.counts == {
        "surface": 3000,
        "near": 2000,
        "near_box": 200,
        "corr": 1000,
        "vertices": arrays[0]["vertices"].shape[0],
    }
    assert ss.identities == [0, 1] and len(ss) == 6
    assert [(s.identity, s.expression_index, s.is_neutral) for s in ss.scans] == [
        (i, j, j == 0) for i in range(2) for j in range(3)
    ]
    assert all(
        s.path.is_file() and s.pose.shape == (15,) and s.expression.shape == (CFG.num_expression,) for s in ss.scans
    )
    assert ss.faces.dtype == np.int64 and ss.faces.shape[1] == 3 and ss.faces.max() < ss.counts["vertices"]
    assert len({s["seed"] for s in doc["identities"]}) == 2 and min(s["seed"] for s in doc["identities"]) >= 100_000
    for a in arrays:
        assert set(a) == set(doc["arrays"]) and all(v.dtype == np.float32 for v in a.values())
        for key, spec in doc["arrays"].items():
            assert a[key].shape == (ss.counts[spec["shape"][0]], 3)


def test_surface_samples(scan_set):
    ss, arrays = scan_set
    for a in arrays:
        pts, nrm = a["surface_points"], a["surface_normals"]
        assert distance_to_mesh(a["vertices"], ss.faces, pts).max() < 1e-5  # on the registration
        assert np.allclose(np.linalg.norm(nrm, axis=-1), 1.0, atol=1e-5)
        center = a["vertices"].mean(0)
        assert ((nrm * (pts - center)).sum(-1) > 0).mean() > 0.9  # outward
        lo, hi = np.array(ss.manifest["box"]["min"]), np.array(ss.manifest["box"]["max"])
        assert (pts > lo).all() and (pts < hi).all()
        c = a["surface_colors"]
        assert c.min() >= 0 and c.max() <= 1 and c.std(0).min() > 0.02  # textured, not flat
    # Each identity has its own colours: the mean colour differs between identities, and
    # hardly between the scans of one identity (the texture sticks to the skin).
    means = np.array([a["surface_colors"].mean(0) for a in arrays]).reshape(2, 3, 3)
    assert np.abs(means[0].mean(0) - means[1].mean(0)).max() > 0.03
    assert np.abs(means - means.mean(1, keepdims=True)).max() < 0.02


def test_observed_surface_only(scan_set):
    """No samples on the hidden backs of the eyeballs or inside a closed mouth."""
    from headstudio.flame import procedural as P

    ss, arrays = scan_set
    t = P.build_template()
    a = arrays[neutral_index(ss, 0)]
    mesh = trimesh.Trimesh(a["vertices"], ss.faces, process=False)
    _, _, tri = trimesh.proximity.closest_point(mesh, a["surface_points"])
    part = t.face_part[tri]
    assert (part == P.SKIN).mean() > 0.9
    assert not np.isin(part, [P.MOUTH, P.TEETH_UP, P.TEETH_LOW]).any()  # closed mouth: not seen
    eyes = np.isin(part, [P.EYE_L, P.EYE_R])
    eye_centers = np.stack([a["vertices"][t.part == p].mean(0) for p in (P.EYE_L, P.EYE_R)])
    toward = a["surface_points"][eyes] - eye_centers[(part[eyes] == P.EYE_R).astype(int)]
    assert eyes.sum() > 0 and (toward[:, 2] > 0).all()  # only the front caps
    # The same sampler for any posed mesh of the topology (the tracking bench's ceiling fit uses it).
    from headstudio.data.scans import observed_surface_samples

    pts, nrm = observed_surface_samples(torch.as_tensor(a["vertices"]), torch.as_tensor(ss.faces), 3000, torch.Generator().manual_seed(0))
    assert pts.shape == (3000, 3) and torch.allclose(nrm.norm(dim=-1), torch.ones(3000), atol=1e-5)
    _, dist, tri = trimesh.proximity.closest_point(mesh, pts.numpy())
    assert dist.max() < 1e-4 and not np.isin(t.face_part[tri], [P.MOUTH, P.TEETH_UP, P.TEETH_LOW]).any()


def test_near_points(scan_set):
    ss, arrays = scan_set
    n_box = ss.counts["near_box"]
    lo, hi = np.array(ss.manifest["box"]["min"]), np.array(ss.manifest["box"]["max"])
    for a in arrays:
        near, col = a["near_points"], a["near_colors"]
        d = distance_to_mesh(a["vertices"], ss.faces, near)
        assert d[:-n_box].max() < 5 * max(CFG.sigmas)
        assert (d[:-n_box] < 3 * min(CFG.sigmas)).mean() > 0.55  # half of them at sigma 0.002
        assert (d[-n_box:] > 5 * max(CFG.sigmas)).mean() > 0.5  # the box share: mostly far away
        assert (near >= lo).all() and (near <= hi).all()
        assert col.min() >= 0 and col.max() <= 1


def test_correspondences(scan_set):
    ss, arrays = scan_set
    for k, (entry, a) in enumerate(zip(ss.scans, arrays)):
        neutral = arrays[neutral_index(ss, entry.identity)]
        assert distance_to_mesh(a["vertices"], ss.faces, a["corr_posed"]).max() < 1e-5
        assert distance_to_mesh(neutral["vertices"], ss.faces, a["corr_canonical"]).max() < 1e-5
        moved = np.linalg.norm(a["corr_posed"] - a["corr_canonical"], axis=-1)
        if entry.is_neutral:
            assert np.array_equal(a["corr_posed"], a["corr_canonical"])
        else:
            assert moved.max() > 0.01  # the expression moved some of the points (world units)


def test_neutral_and_expressions(scan_set):
    ss, arrays = scan_set
    flame = FlameModel.from_file(
        ss.root / ss.manifest["flame_model"], num_shape=CFG.num_shape, num_expression=CFG.num_expression
    )
    for ident in ss.manifest["identities"]:
        i = ident["index"]
        neutral = ss.neutral(i)
        assert not neutral.expression.any() and not neutral.pose.any()
        with torch.no_grad():
            ref = flame(shape=torch.tensor(ident["shape"], dtype=torch.float32)[None]).vertices[0].numpy() * WORLD_SCALE
        assert np.abs(arrays[neutral_index(ss, i)]["vertices"] - ref).max() < 1e-5
        others = [(s, arrays[k]) for k, s in enumerate(ss.scans) if s.identity == i and not s.is_neutral]
        verts = [ref] + [a["vertices"] for _, a in others]
        for x in range(len(verts)):
            for y in range(x + 1, len(verts)):
                assert np.abs(verts[x] - verts[y]).max() > 0.01  # every scan a different face
        for s, a in others:
            assert np.abs(s.expression).max() > 0.4 and not s.pose[:3].any()  # expressed, no global rotation
            assert 0 <= s.pose[6] <= CFG.max_jaw
            with torch.no_grad():
                posed = (
                    flame(
                        shape=torch.tensor(ident["shape"], dtype=torch.float32)[None],
                        expression=torch.as_tensor(s.expression, dtype=torch.float32)[None],
                        pose=torch.as_tensor(s.pose, dtype=torch.float32)[None],
                    )
                    .vertices[0]
                    .numpy()
                )
            assert np.abs(a["vertices"] - posed * WORLD_SCALE).max() < 1e-4  # the manifest's FLAME parameters
    jaws = [s.pose[6] for s in ss.scans]
    assert max(jaws) > 0.25  # wide openings are among them


def test_reproducible(scan_set, tmp_path):
    """A scan depends on the seed, its identity and expression index only, not on the set's size."""
    ss, arrays = scan_set
    small = ScanSetConfig(**{**asdict(CFG), "identities": 1, "expressions": 2})
    make_scans(tmp_path / "small", small)
    again = load_scan(tmp_path / "small" / "scans" / "id000_ex01.npz")
    k = next(k for k, s in enumerate(ss.scans) if (s.identity, s.expression_index) == (0, 1))
    assert all(np.array_equal(again[key], arrays[k][key]) for key in again)


def one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert str(w) in msg, msg
    return msg


@pytest.fixture()
def copy_set(scan_set, tmp_path):
    """A copy of the set without its (large) FLAME model."""
    ss, _ = scan_set
    dst = tmp_path / "copy"
    shutil.copytree(ss.root, dst, ignore=shutil.ignore_patterns("flame"))
    return dst


def test_bad_scan_files(copy_set):
    f = copy_set / "scans" / "id000_ex01.npz"
    good = dict(np.load(f))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f)
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeroed in the middle of an array
    f.write_bytes(bytes(corrupt))
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f, "corrupt")
    f.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f)

    def write(**change):
        arrays = {**good, **change}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        with open(f, "wb") as fh:
            np.savez(fh, **arrays)

    write(vertices=None)
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f, "'vertices'", "missing")
    write(surface_points=good["surface_points"].astype(np.float64))
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f, "'surface_points'", "float64")
    nan = good["near_points"].copy()
    nan[5, 1] = np.nan
    write(near_points=nan)
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f, "'near_points'", "NaN")
    write(corr_canonical=good["corr_canonical"][:-1])
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f, "'corr_canonical'")
    write(surface_colors=good["surface_colors"][:, :2])
    with pytest.raises(DataError) as e:
        load_scan(f)
    one_line(e, f, "'surface_colors'", "shape")
    write()
    ss = open_scan_set(copy_set)
    with pytest.raises(DataError) as e:
        load_scan(f, counts={**ss.counts, "surface": 10})
    one_line(e, f, "'surface_points'", "counts.surface")
    assert ss.load(1)["vertices"].shape == good["vertices"].shape


def test_bad_manifests(copy_set):
    m = copy_set / "manifest.json"
    doc = json.loads(m.read_text())

    def check(document, *words):
        m.write_text(document if isinstance(document, str) else json.dumps(document))
        with pytest.raises(DataError) as e:
            open_scan_set(copy_set)
        return one_line(e, m, *words)

    check('{"format": "headstudio-scans", ', "JSON")
    check({**doc, "format": "nphm"}, "'format'", "nphm")
    check({**doc, "version": 7}, "'version'", "7")
    missing = json.loads(json.dumps(doc))
    missing["scans"][2]["file"] = "scans/id009_ex09.npz"
    check(missing, "scans[2].file", "id009_ex09.npz", "does not exist")
    no_id = json.loads(json.dumps(doc))
    del no_id["scans"][1]["identity"]
    check(no_id, "scans[1].identity", "missing")
    bad_pose = json.loads(json.dumps(doc))
    bad_pose["scans"][0]["pose"] = [0.0] * 3
    check(bad_pose, "scans[0].pose", "15")
    check({**doc, "scans": []}, "'scans'", "empty")
    check({k: v for k, v in doc.items() if k != "counts"}, "'counts'", "missing")
    m.unlink()
    with pytest.raises(DataError) as e:
        open_scan_set(copy_set)
    one_line(e, m, "missing")


def test_bad_config(tmp_path):
    for bad, word in (
        ({"identities": 0}, "--identities"),
        ({"box_share": 1.5}, "--box-share"),
        ({"sigmas": (0.01, -1.0)}, "--sigmas"),
        ({"box_min": (-0.1, -0.1, -0.1), "box_max": (0.1, 0.1, 0.1)}, "box"),
    ):
        with pytest.raises(ValueError, match=word):
            tiny = {"identities": 1, "expressions": 1, "surface_points": 10, "near_points": 10, "corr_points": 10}
            make_scans(tmp_path / "s", ScanSetConfig(**{**tiny, **bad}))
        assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())


def hs_synth(*args):
    return run_in_process("hs-synth", *args)


TINY_CLI = [
    "--identities",
    "1",
    "--expressions",
    "2",
    "--surface-points",
    "500",
    "--near-points",
    "400",
    "--corr-points",
    "200",
]


@pytest.mark.e2e
def test_cli_scans(tmp_path):
    out = tmp_path / "scans"
    res = hs_synth("scans", str(out), *TINY_CLI)
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}: 2 scans" in " ".join(res.stderr.split())
    ss = open_scan_set(out)
    assert len(ss) == 2 and ss.load(1)["surface_points"].shape == (500, 3)
    again = hs_synth("scans", str(out), *TINY_CLI)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scans"]  # nothing half-written beside it
    bad = hs_synth("scans", str(tmp_path / "other"), *TINY_CLI, "--box-share", "2")
    assert bad.returncode == 1 and "--box-share" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()
