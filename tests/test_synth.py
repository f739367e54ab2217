"""Synthetic subjects: layouts their readers expect, ground truth that agrees with itself."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import trimesh

from headstudio.data.synth.layouts import DEPTH_SCALE, ibug68_to_wflw98
from headstudio.data.synth.texture import L
from headstudio.flame.model import FlameModel
from tests.conftest import TINY, run_in_process


def read(path, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    assert img is not None, f"cannot read {path}"
    return img


def test_imavatar_layout(subjects):
    """IMavatar's nesting <subject>/<subject>/<seq>/, negative normalised fx, 70 keypoints (68 + iris)."""
    outer = subjects["imavatar"]
    root = outer / outer.name
    for seq, n in (("train", TINY["num_train"]), ("test", TINY["num_test"])):
        doc = json.loads((root / seq / "flame_params.json").read_text())
        assert len(doc["shape_params"]) == 100
        fx, fy, cx, cy = doc["intrinsics"]
        assert fx < 0 < fy and 0 < cx < 1 and 0 < cy < 1
        assert np.isclose(cx * TINY["size"], TINY["size"] / 2 - 0.5)  # integer pixel centres
        assert len(doc["frames"]) == n
        for fr in doc["frames"]:
            assert fr["file_path"].startswith("./image/")
            img = read(root / seq / (fr["file_path"][2:] + ".png"))
            assert img.shape == (TINY["size"], TINY["size"], 3)
            wm = np.array(fr["world_mat"])
            assert wm.shape == (3, 4) and np.allclose(wm[:, :3], np.eye(3)) and np.isclose(wm[2, 3], -4.0)
            assert len(fr["expression"]) == 50 and len(fr["pose"]) == 15
            kp = np.array(fr["flame_keypoints"])
            assert kp.shape == (70, 2) and np.abs(kp).max() <= 1.0
            bbox = np.array(fr["bbox"])
            assert bbox.shape == (4,) and np.abs(bbox).max() <= 1.0 and bbox[0] < bbox[2] and bbox[1] < bbox[3]
            assert np.allclose(bbox[:2], kp[:68].min(0), atol=1e-5)  # DECA's bbox: of the landmarks
        stem = doc["frames"][0]["file_path"].split("/")[-1]
        mask = read(root / seq / "mask" / f"{stem}.png")
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).mean() > 0.05


def test_landmarks_project_into_the_mask(subjects):
    root = subjects["imavatar"] / subjects["imavatar"].name
    doc = json.loads((root / "test" / "flame_params.json").read_text())
    size = TINY["size"]
    inside = []
    for fr in doc["frames"]:
        stem = fr["file_path"].split("/")[-1]
        mask = read(root / "test" / "mask" / f"{stem}.png") > 0
        px = np.round((np.array(fr["flame_keypoints"]) + 1) / 2 * size).astype(int).clip(0, size - 1)
        inside.append(mask[px[17:, 1], px[17:, 0]].mean())  # inner 51 and the irises (the contour is on the silhouette)
    assert np.mean(inside) > 0.97


def test_nerface_layout(subjects):
    """NerFace's conventions: negative fx, mean camera depth 0.5, 76 non-FLAME expression values,
    bbox [y0, y1, x0, x1] fractions, a background plate and no masks."""
    root = subjects["nerface"]
    for split in ("train", "val", "test"):
        doc = json.loads((root / f"transforms_{split}.json").read_text())
        assert 0 < doc["camera_angle_x"] < np.pi and "shape_params" not in doc
        fx, fy, cx, cy = doc["intrinsics"]
        assert fx < 0 < fy and 0 < cx < 1 and 0 < cy < 1
        assert doc["frames"]
        for fr in doc["frames"]:
            c2w = np.array(fr["transform_matrix"])
            assert c2w.shape == (4, 4) and np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-5)
            assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0, atol=1e-5)
            assert 0.4 < np.linalg.norm(c2w[:3, 3]) < 0.6  # NerFace's scale: the camera about 0.5 from the head
            assert len(fr["expression"]) == 76 and set(fr) == {"file_path", "transform_matrix", "expression", "bbox"}
            y0, y1, x0, x1 = fr["bbox"]
            assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
            assert read(root / (fr["file_path"][2:] + ".png")).shape[:2] == (TINY["size"],) * 2
    assert read(root / "bg" / "00050.png").shape == (TINY["size"], TINY["size"], 3)
    assert not (root / "mask").exists()


def test_insta_layout(subjects):
    """INSTA's conventions: float header, sorted keys, OpenCV camera-to-world in metres, exp only (100),
    5-digit 0-based ids, RGBA images, last-20 val."""
    root = subjects["insta"]
    total = TINY["num_train"] + TINY["num_test"]
    for name in ("transforms.json", "transforms_train.json", "transforms_val.json", "transforms_test.json"):
        text = (root / name).read_text()
        doc = json.loads(text)
        assert isinstance(doc["w"], float) and doc["w"] == doc["h"] == TINY["size"] and doc["fl_x"] > 0
        assert doc["integer_depth_scale"] == 0.001 and list(doc) == sorted(doc)
        for fr in doc["frames"]:
            for key in ("file_path", "mesh_path", "exp_path", "depth_path", "seg_mask_path"):
                assert (root / fr[key]).is_file(), fr[key]
            assert "flame_pose_path" not in fr
            assert np.loadtxt(root / fr["exp_path"]).shape == (100,)
            c2w = np.array(fr["transform_matrix"])
            assert c2w.shape == (4, 4) and 0.9 < np.linalg.norm(c2w[:3, 3]) < 1.1  # metres: the camera 1 m away
            assert np.allclose(c2w[:3, 2] @ -c2w[:3, 3] / np.linalg.norm(c2w[:3, 3]), 1.0, atol=0.1)  # z looks at the head
    ids = [json.loads((root / "transforms.json").read_text())["frames"][k]["file_path"] for k in range(total)]
    assert ids == [f"images/{k:05d}.png" for k in range(total)]
    assert len(json.loads((root / "transforms_test.json").read_text())["frames"]) == TINY["num_test"]
    assert len(json.loads((root / "transforms_val.json").read_text())["frames"]) == min(20, total)
    assert not (root / "flame" / "jaw").exists() and not (root / "flame" / "shape.txt").exists()
    assert read(root / "images" / "00000.png").shape == (TINY["size"], TINY["size"], 4)
    assert read(root / "seg_mask" / "00000.png").shape == (TINY["size"], TINY["size"], 3)


def test_same_cameras_across_layouts(subjects):
    """NerFace and INSTA fold the head pose into the camera identically, each in its own convention."""
    a = json.loads((subjects["nerface"] / "transforms_test.json").read_text())["frames"]
    b = json.loads((subjects["insta"] / "transforms_test.json").read_text())["frames"]
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    for fa, fb in zip(a, b):
        gl = mirror @ np.array(fa["transform_matrix"]) @ mirror
        gl[:3, 3] *= 8.0 / 4.0  # NerFace units -> metres (the camera is 1 m away)
        cv = np.array(fb["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        assert np.allclose(gl, cv, atol=1e-5)


def test_depth_reprojects_onto_the_ground_truth_mesh(subjects):
    root = subjects["imavatar"]
    meta = json.loads((root / "subject.json").read_text())
    K, R, t = (np.array(meta["camera"][k]) for k in ("K", "R", "t"))
    for stem in ("1", "3"):
        depth = read(root / "gt" / "test" / "depth" / f"{stem}.png").astype(np.float64) / DEPTH_SCALE
        ys, xs = np.nonzero(depth)
        z = depth[ys, xs]
        cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], -1)
        world = (cam - t) @ R  # R^T (x - t)
        mesh = trimesh.load(root / "gt" / "test" / "mesh" / f"{stem}.ply", process=False)
        _, dist, _ = trimesh.proximity.closest_point(mesh, world)
        assert np.median(dist) < 2e-4 and np.percentile(dist, 99) < 2e-3, (np.median(dist), dist.max())


def test_normals_and_labels(subjects):
    root = subjects["imavatar"] / "gt" / "test"
    n = read(root / "normal" / "1.png").astype(np.float64) / 65535 * 2 - 1
    mask = read(subjects["imavatar"] / subjects["imavatar"].name / "test" / "mask" / "1.png") > 0
    norms = np.linalg.norm(n[mask], axis=-1)
    assert np.abs(norms - 1).max() < 1e-3
    # cv2 reads BGR: index 0 is z (OpenCV camera z); visible surfaces face the camera (z < 0).
    assert (n[mask][:, 0] < 0.05).mean() > 0.97
    labels = np.stack([read(p) for p in sorted(root.glob("semantic/*.png"))])
    for name in ("face", "hair", "nose", "left_eye", "right_eye", "upper_lip", "neck"):
        assert (labels == L[name]).any(), name


def test_kinect_sequence(subjects):
    """MonoNPHM's layout: metrical-tracker checkpoints with a batch axis, normalised WFLW landmarks,
    un-padded seg names, the intrinsics text file, source frame 0 sharing checkpoint 0."""
    root = subjects["kinect"] / "test"
    n = TINY["num_test"] + 1  # source frame 0 repeats frame 1
    assert len(list((root / "source").glob("*.png"))) == n
    assert np.array_equal(read(root / "source" / "00000.png"), read(root / "source" / "00001.png"))
    lms = np.load(root / "pipnet" / "test.npy")
    assert lms.shape == (n, 98, 2) and 0 <= lms.min() and lms.max() <= 1
    fields = (root / "kinect_intrinsics.txt").read_text().split()
    cx, cy, fx, fy = map(float, fields[:4])
    assert len(fields) == 14 and fx > 0 and np.isclose(cx, TINY["size"] / 2 - 0.5)
    ckpt = root / "metrical_tracker" / "test" / "checkpoint"
    assert len(list(ckpt.glob("*_cam_params_opencv.npz"))) == n - 1
    cam = np.load(ckpt / "00000_cam_params_opencv.npz")
    assert cam["R"].shape == (1, 3, 3) and cam["t"].shape == (1, 3) and cam["K"].shape == (1, 3, 3)
    assert 0.9 < np.linalg.norm(cam["t"][0]) < 1.1  # metres
    assert (root / "metrical_tracker" / "test" / "mesh" / "00000.ply").exists()
    assert np.load(root / "identity.npy").shape == (300,)
    depth = read(root / "depth" / "00000.png")
    matte = read(root / "matting" / "00000.png") > 0
    assert depth.dtype == np.uint16
    valid = depth[matte & (depth > 0)]
    assert 850 < np.median(valid) < 1100  # millimetres: the head is about a metre away
    assert (depth[matte] == 0).mean() > 0.01  # holes
    assert (depth[~matte] == 0).all()
    seg = read(root / "seg" / "0.png")
    assert seg.shape == (TINY["size"],) * 2 and (seg[matte] > 0).all()
    assert (root / "seg" / f"{n - 1}.png").exists()


def test_wflw_conversion_keeps_ibug_points():
    lm = np.random.default_rng(0).normal(size=(68, 2))
    out = ibug68_to_wflw98(lm)
    assert np.allclose(out[0:33:2], lm[:17]) and np.allclose(out[76:96], lm[48:68])


def test_subject_is_self_contained(subjects):
    model = FlameModel.from_file(subjects["imavatar"] / "flame" / "generic_model.pkl")
    assert model.has_landmarks and "face" in model.region_masks


def test_mouth_interior_and_teeth_show_when_the_jaw_opens(flame):
    import torch

    from headstudio.data.synth.render import HeadRenderer, PinholeCamera
    from headstudio.data.synth.texture import Look
    from headstudio.flame.procedural import build_template

    renderer = HeadRenderer(build_template(), Look.from_seed(0), PinholeCamera.looking_at_origin(128, 2.8, 4.0))
    counts = []
    for jaw in (0.0, 0.4):
        pose = torch.zeros(1, 15, dtype=torch.float64)
        pose[0, 6] = jaw
        frame = renderer.render(flame(pose=pose).vertices[0] * 4.0)
        counts.append(int((frame.label == L["mouth_interior"]).sum()))
        if jaw > 0:
            teeth = frame.rgb[frame.label == L["mouth_interior"]].mean(-1) > 0.7
            assert teeth.sum() > 3  # bright teeth inside the dark mouth
    assert counts[0] < 5 < 40 < counts[1]


def hs_synth(*args):
    return run_in_process("hs-synth", *args)


@pytest.mark.e2e
def test_cli_rejects_existing_output(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    res = hs_synth("subject", str(out), "--size", "32", "--num-train", "1", "--num-test", "1")
    assert res.returncode != 0
    assert "already exists" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [out]  # nothing half-written beside it


@pytest.mark.e2e
def test_cli_rejects_unknown_format(tmp_path):
    res = hs_synth("subject", str(tmp_path / "s"), "--format", "colmap")
    assert res.returncode != 0 and "colmap" in res.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.e2e
def test_cli_flame_model(tmp_path):
    res = hs_synth("flame-model", str(tmp_path / "m" / "generic_model.pkl"), "--seed", "2")
    assert res.returncode == 0, res.stderr
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "generic_model.pkl", "landmark_embedding.npy", "FLAME_masks.pkl", "landmark_embedding_with_eyes.npy",
        "mediapipe_landmark_embedding.npz",
    }  # fmt: skip
    again = hs_synth("flame-model", str(tmp_path / "m" / "generic_model.pkl"))
    assert again.returncode == 1 and "already exists" in again.stderr
