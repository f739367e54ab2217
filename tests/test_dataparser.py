"""Dataparsers, the head datamanager and the per-subject FLAME track."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import trimesh

from headstudio.data.datamanager import HeadPixelSampler, HeadPixelSamplerConfig, face_region
from headstudio.data.errors import DataError
from headstudio.data.track import FlameTrack
from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig
from headstudio.flame.model import FlameModel
from tests.conftest import TINY, run_in_process


def parse(root: Path, split: str = "train", **kw):
    return FlameVideoDataParserConfig(data=root, **kw).setup().get_dataparser_outputs(split)


def project(cameras, k: int, points: np.ndarray) -> np.ndarray:
    """World points -> pixels with nerfstudio's camera (OpenGL camera-to-world)."""
    c2w = cameras.camera_to_worlds[k].double().numpy()
    cam = (points - c2w[:, 3]) @ c2w[:, :3]  # R^T (x - t): OpenGL camera coordinates
    fx, fy, cx, cy = (float(getattr(cameras, a)[k]) for a in ("fx", "fy", "cx", "cy"))
    return np.stack([cx + fx * cam[:, 0] / -cam[:, 2], cy - fy * cam[:, 1] / -cam[:, 2]], -1)


def test_three_layouts_parse_to_the_same_cameras_and_parameters(subjects):
    """hs-synth writes each layout in its own conventions; read back they agree: the same cameras in every
    layout, the same FLAME parameters where the layout has them (INSTA's jaw, eyes, neck recovered from its
    meshes; NerFace has none)."""
    outs = {name: {s: parse(subjects[name], s) for s in ("train", "test")} for name in ("imavatar", "nerface", "insta")}
    ref = outs["imavatar"]
    for split in ("train", "test"):
        a = ref[split].cameras
        offset = 0 if split == "train" else TINY["num_train"]
        sel = a.metadata["frame_index"][:, 0] - offset  # IMavatar evaluates every 10th test frame
        for name in ("nerface", "insta"):
            b = outs[name][split].cameras
            assert torch.allclose(a.camera_to_worlds, b.camera_to_worlds[sel], atol=2e-4), (name, split)
            for attr in ("fx", "fy", "cx", "cy", "width", "height"):
                assert torch.allclose(getattr(a, attr).float(), getattr(b, attr)[sel].float(), atol=1e-3), attr
        b = outs["insta"][split].cameras
        assert torch.allclose(a.metadata["expression"], b.metadata["expression"][sel, :50], atol=1e-5)
        assert torch.allclose(a.metadata["pose"], b.metadata["pose"][sel], atol=2e-3)  # recovered from the meshes
    assert outs["nerface"]["train"].metadata["flame_tracked"] is False


def test_frame_index_is_global_across_splits(subjects):
    train, test = parse(subjects["imavatar"], "train"), parse(subjects["imavatar"], "test")
    ti, vi = train.cameras.metadata["frame_index"][:, 0], test.cameras.metadata["frame_index"][:, 0]
    assert ti.tolist() == list(range(TINY["num_train"]))
    assert vi.tolist() == [TINY["num_train"]]  # every 10th test frame: the first one
    assert train.metadata["num_frames"] == TINY["num_train"] + TINY["num_test"]
    assert train.metadata["frame_table"]["pose"].shape == (TINY["num_train"] + TINY["num_test"], 15)


def test_ground_truth_mesh_projects_inside_the_mask(subjects):
    root = subjects["imavatar"]
    # Cameras as tracked (head moving): the ground-truth PLY is in that world.
    out = parse(root, "test", fold_head_pose=False)
    mesh = trimesh.load(root / "gt" / "test" / "mesh" / "1.ply", process=False)
    mask = cv2.imread(str(out.mask_filenames[0]), cv2.IMREAD_GRAYSCALE)
    # Silhouette vertices may fall in a pixel whose centre is just outside: allow one pixel.
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0
    px = np.floor(project(out.cameras, 0, np.asarray(mesh.vertices))).astype(int)  # pixel j covers [j, j+1)
    ok = (px >= 0).all(1) & (px < TINY["size"]).all(1)
    assert ok.mean() > 0.98 and mask[px[ok, 1], px[ok, 0]].mean() > 0.995
    # Head pose folded into the cameras: the track's mesh (global rotation removed) lands there too.
    folded = parse(root, "test")
    meta = folded.metadata
    flame = FlameModel.from_file(meta["flame_path"], num_shape=100, num_expression=50)
    track = FlameTrack(flame, meta["shape"], meta["frame_table"]["expression"], meta["frame_table"]["pose"])
    k = int(folded.cameras.metadata["frame_index"][0])
    verts = track.lookup(torch.tensor([k]))["vertices"][0].double().numpy()
    px2 = project(folded.cameras, 0, verts)
    assert np.abs(px2 - project(out.cameras, 0, np.asarray(mesh.vertices))).max() < 0.05  # pixels


def test_minimal_imavatar_fixture_parses(tmp_path, flame_path):
    """An IMavatar-layout subject written here from the format description, not by hs-synth."""
    root = tmp_path / "subject"
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    rng = np.random.default_rng(0)
    frames = []
    for n in (1, 2, 3):
        cv2.imwrite(str(root / "image" / f"{n}.png"), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "mask" / f"{n}.png"), np.full((40, 48), 255, np.uint8))
        frames.append(
            {
                "file_path": f"./image/{n}",
                "world_mat": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -4.0 - 0.1 * n]],
                "expression": list(rng.normal(size=50) * 0.3),
                "pose": [0.0] * 6 + [0.1 * n, 0, 0] + [0.0] * 6,
                "bbox": [-0.5, -0.5, 0.5, 0.5],
                "flame_keypoints": (rng.uniform(-0.5, 0.5, (68, 2))).tolist(),
            }
        )
    doc = {"shape_params": [0.0] * 100, "intrinsics": [-1.5, 1.5, 0.5, 0.5], "frames": frames}
    (root / "flame_params.json").write_text(json.dumps(doc))
    out = parse(root, "train", flame_path=flame_path)
    cams = out.cameras
    assert len(cams) == 3
    assert float(cams.fx[0]) == pytest.approx(1.5 * 48) and float(cams.fy[0]) == pytest.approx(1.5 * 40)
    # IMavatar samples pixels at integer positions: its principal point moves by half a pixel.
    assert float(cams.cx[0]) == pytest.approx(24.5) and float(cams.cy[0]) == pytest.approx(20.5)
    assert cams.camera_to_worlds[2, 2, 3] == pytest.approx(4.3, abs=1e-4)  # no rigid head pose: camera as given
    assert cams.metadata["pose"][1, 6] == pytest.approx(0.2)
    assert out.metadata["landmarks_px"].shape == (3, 68, 2)
    assert torch.isfinite(cams.metadata["bbox"]).all()


def test_kinect_depth_back_projects_onto_the_mesh(subjects):
    root = subjects["kinect"]
    out = parse(root, "test", format="kinect")
    depth_file = out.metadata["eval_depth_filenames"][0]
    depth = cv2.imread(str(depth_file), cv2.IMREAD_UNCHANGED).astype(np.float64) * out.metadata["eval_depth_to_world"]
    ys, xs = np.nonzero(depth)
    z = depth[ys, xs]
    c = out.cameras
    fx, fy, cx, cy = (float(getattr(c, a)[0]) for a in ("fx", "fy", "cx", "cy"))
    cam = np.stack([(xs + 0.5 - cx) / fx * z, -(ys + 0.5 - cy) / fy * z, -z], -1)  # OpenGL camera axes
    c2w = c.camera_to_worlds[0].double().numpy()
    world = cam @ c2w[:, :3].T + c2w[:, 3]
    # MonoNPHM's cameras carry the head pose: the world is FLAME space, where metrical-tracker's mesh of the
    # checkpoint the camera came from (source frame 0 -> checkpoint 0) lies, in metres.
    mesh = trimesh.load(root / "test" / "metrical_tracker" / "test" / "mesh" / "00000.ply", process=False)
    mesh.vertices = mesh.vertices * out.metadata["world_scale"]
    _, dist, _ = trimesh.proximity.closest_point(mesh, world)
    # Sensor noise is about 1.3 mm at 1 m: 0.005 world units.
    assert np.median(dist) < 0.006 and np.percentile(dist, 90) < 0.02


def test_flame_track_matches_the_model_and_takes_overrides(flame):
    import copy

    flame = copy.deepcopy(flame).float()  # the session fixture is float64; leave it so
    rng = np.random.default_rng(3)
    expr = torch.tensor(rng.normal(size=(5, 50)) * 0.5, dtype=torch.float32)
    pose = torch.tensor(rng.normal(size=(5, 15)) * 0.1, dtype=torch.float32)
    shape = torch.tensor(rng.normal(size=100) * 0.5, dtype=torch.float32)
    track = FlameTrack(flame, shape, expr, pose, batch_size=2)
    st = track.lookup(torch.tensor([3, 1]))
    ref = flame(shape=shape[None], expression=expr[[3, 1]], pose=pose[[3, 1]])
    assert torch.allclose(st["vertices"], ref.vertices * 4.0, atol=1e-5)
    assert torch.allclose(st["landmarks"], ref.landmarks * 4.0, atol=1e-5)
    assert torch.allclose(track.lookup(torch.tensor([-1]), default=2)["vertices"], track.vertices[2:3])
    custom = track.evaluate(torch.zeros(1, 50), torch.zeros(1, 15))
    assert torch.allclose(custom.vertices[0], flame.rest_mesh(shape[None])[0][0] * 4.0, atol=1e-5)
    with pytest.raises(IndexError):
        track.lookup(torch.tensor([5]))


def test_pixel_sampler_share_inside_the_mask():
    sampler = HeadPixelSampler(HeadPixelSamplerConfig(num_rays_per_batch=4000, foreground_fraction=0.5, face_fraction=0.25))
    mask = torch.zeros(2, 40, 40, 1, dtype=torch.bool)
    mask[:, 10:20, 10:20] = True  # 6.25% of the pixels
    face = torch.zeros_like(mask)
    face[:, 12:14, 12:14] = True
    batch = {"image": torch.rand(2, 40, 40, 3), "mask": mask, "face_mask": face, "image_idx": torch.tensor([5, 9])}
    out = sampler.sample(batch)
    inside = out["mask"][:, 0].float().mean()
    assert 0.75 < inside < 0.82  # 0.5 + 0.25 forced, plus the uniform quarter's 6%
    assert out["face_mask"][:, 0].float().mean() > 0.25
    assert set(out["indices"][:, 0].tolist()) <= {5, 9}
    assert (~out["mask"][:, 0]).any()  # background rays too, unlike nerfstudio's masked sampler


def test_face_region_is_the_landmark_hull():
    pts = np.array([[10, 10], [30, 10], [30, 30], [10, 30], [20, 20], [np.nan, np.nan]])
    m = face_region(pts, 40, 40)
    assert m[20, 20] and not m[5, 5] and 380 < m.sum() < 460


def test_datamanager_rays_carry_the_frame(subjects):
    from headstudio.data.datamanager import HeadDataManagerConfig

    cfg = HeadDataManagerConfig(dataparser=FlameVideoDataParserConfig(data=subjects["imavatar"]), train_num_rays_per_batch=256)
    dm = cfg.setup(device="cpu", test_mode="val")
    ray_bundle, batch = dm.next_train(0)
    meta = ray_bundle.metadata
    assert meta["frame_index"].shape == (256, 1) and meta["expression"].shape == (256, 50)
    assert meta["pose"].shape == (256, 15) and meta["landmarks"].shape == (256, 140)  # 70 keypoints: 68 + 2 irises
    # The frame of each ray is the frame of the image it was drawn from.
    cams = dm.train_dataset.cameras
    assert torch.equal(meta["frame_index"][:, 0], cams.metadata["frame_index"][batch["indices"][:, 0], 0])
    # Background pixels are the background colour: images are composited with the masks.
    bg = batch["image"][~batch["mask"][:, 0]]
    assert torch.allclose(bg, torch.ones_like(bg))
    camera, data = dm.next_eval_image(0)
    assert camera.metadata["frame_index"].item() == TINY["num_train"]


# ---------------------------------------------------------------------------------- bad input


@pytest.fixture
def broken(subjects, tmp_path):
    dst = tmp_path / "broken"
    shutil.copytree(subjects["imavatar"], dst)
    return dst


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


CASES = {
    "missing key": (lambda r: edit_json(r / "imavatar" / "train" / "flame_params.json", lambda d: d["frames"][2].pop("pose")), r"flame_params.json: frame 2: field 'pose': missing"),
    "wrong length": (lambda r: edit_json(r / "imavatar" / "train" / "flame_params.json", lambda d: d["frames"][1].update(pose=[0.0] * 12)), r"frame 1: field 'pose': has 12 values, expected 15"),
    "nan": (lambda r: edit_json(r / "imavatar" / "train" / "flame_params.json", lambda d: d["frames"][3]["expression"].__setitem__(4, float("nan"))), r"frame 3: field 'expression': contains NaN"),
    "missing image": (lambda r: (r / "imavatar" / "train" / "image" / "2.png").unlink(), r"2.png: image file not found \(frame 1 of"),
    "mixed sizes": (lambda r: cv2.imwrite(str(r / "imavatar" / "train" / "image" / "3.png"), np.zeros((32, 32, 3), np.uint8)), r"3.png: image is 32x32 but the first frame is 64x64"),
    "truncated png": (lambda r: (r / "imavatar" / "train" / "image" / "4.png").write_bytes((r / "imavatar" / "train" / "image" / "4.png").read_bytes()[:200]), r"4.png: image is unreadable or truncated"),
    "missing mask": (lambda r: (r / "imavatar" / "train" / "mask" / "1.png").unlink(), r"mask/1.png: mask file not found \(frame 0"),
    "empty frames": (lambda r: edit_json(r / "imavatar" / "test" / "flame_params.json", lambda d: d.update(frames=[])), r"test/flame_params.json: field 'frames': no frames"),
    "bad json": (lambda r: (r / "imavatar" / "train" / "flame_params.json").write_text("{not json"), r"flame_params.json: not valid JSON"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_frame_and_field(broken, case):
    breaker, pattern = CASES[case]
    breaker(broken)
    with pytest.raises(DataError, match=pattern) as err:
        parse(broken)
    assert "\n" not in str(err.value)


def test_unknown_layout(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="unknown layout"):
        parse(tmp_path / "junk")


def test_missing_flame_model_explains_the_licence(broken, monkeypatch):
    monkeypatch.delenv("HEADSTUDIO_FLAME", raising=False)
    shutil.rmtree(broken / "flame")
    with pytest.raises(DataError, match="licensed"):
        parse(broken)


@pytest.mark.e2e
def test_check_data_prints_summary_and_every_problem(subjects, broken):
    good = run_in_process("hs-check-data", subjects["imavatar"])
    assert good.returncode == 0, good.stderr
    assert "imavatar layout" in good.stdout and "no problems found" in good.stdout and "yaw" in good.stdout
    CASES["nan"][0](broken)
    CASES["missing image"][0](broken)
    CASES["missing mask"][0](broken)
    bad = run_in_process("hs-check-data", broken, env={"COLUMNS": "300"})
    assert bad.returncode == 1
    assert "3 problem(s)" in bad.stdout and "contains NaN" in bad.stdout and "2.png: image file not found" in bad.stdout
    assert "mask file not found" in bad.stdout


NS_FAST = [
    "--machine.device-type", "cpu", "--max-num-iterations", "3", "--vis", "tensorboard",
    "--pipeline.datamanager.train-num-rays-per-batch", "256", "--pipeline.datamanager.eval-num-rays-per-batch", "256",
    "--pipeline.model.eval-num-rays-per-chunk", "256", "--steps-per-eval-image", "1000", "--steps-per-eval-batch", "1000",
    "--steps-per-save", "1000", "--pipeline.model.implementation", "torch",
]  # fmt: skip


def test_nerfacto_trains_on_flame_video_data(subjects, monkeypatch):
    """nerfstudio's own nerfacto trains on our dataparser (pure-torch hash grid, CPU): it is a proper nerfstudio
    citizen. Three optimiser steps of nerfacto's pipeline through our datamanager; ns-train itself runs our
    methods (the shared runs) and, below, nerfacto on bad data."""
    import copy

    import torchmetrics.image.lpip
    from nerfstudio.configs.method_configs import all_methods

    from headstudio.metrics.lpips import LazyLPIPS

    # nerfacto builds torchmetrics' LPIPS, whose weights cannot be downloaded here (ns-train: nerfacto_offline.py).
    monkeypatch.setattr(torchmetrics.image.lpip, "LearnedPerceptualImagePatchSimilarity", LazyLPIPS)
    cfg = copy.deepcopy(all_methods["nerfacto"])
    cfg.pipeline.datamanager.dataparser = FlameVideoDataParserConfig(data=subjects["imavatar"])
    cfg.pipeline.datamanager.data = subjects["imavatar"]
    cfg.pipeline.datamanager.train_num_rays_per_batch = 256
    cfg.pipeline.model.implementation = "torch"
    cfg.pipeline.model.eval_num_rays_per_chunk = 256
    pipeline = cfg.pipeline.setup(device="cpu", test_mode="val")
    params = [p for group in pipeline.get_param_groups().values() for p in group]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for step in range(3):
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert all(np.isfinite(losses)), losses
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert len(pipeline.datamanager.train_dataset) == TINY["num_train"]


@pytest.mark.e2e
def test_ns_train_reports_bad_data_in_one_line(broken, tmp_path):
    CASES["nan"][0](broken)
    runner = Path(__file__).with_name("nerfacto_offline.py")
    res = subprocess.run(
        [sys.executable, str(runner), "nerfacto", *NS_FAST, "--output-dir", str(tmp_path), "flame-video-data", "--data", str(broken)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "error:" in res.stderr and "field 'expression': contains NaN" in res.stderr


def test_dataparsers_are_registered_with_nerfstudio(subjects):
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    specs, _ = discover_dataparsers()
    assert {"flame-video-data", "kinect-data"} <= set(specs)
    out = type(specs["kinect-data"])(data=subjects["kinect"]).setup().get_dataparser_outputs("train")
    assert len(out.cameras) == TINY["num_train"] + 1 and out.mask_filenames is not None  # + source frame 0


def test_corrupt_flame_model_is_named(broken):
    model = broken / "flame" / "generic_model.pkl"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(DataError, match="generic_model.pkl: not a readable pickle") as err:
        parse(broken)
    assert "\n" not in str(err.value)


def test_lazy_lpips_degrades_offline_instead_of_raising():
    from headstudio.metrics.lpips import LazyLPIPS

    metric = LazyLPIPS()
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    value = metric(a, b)
    if metric.available:  # weights already in the local torch cache
        assert torch.isfinite(value)
    else:
        assert torch.isnan(value) and "unavailable" in metric.reason


def test_lazy_lpips_never_reaches_for_the_network(tmp_path, monkeypatch):
    import socket

    from headstudio.metrics.lpips import LazyLPIPS

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache

    def no_network(*args, **kwargs):
        raise AssertionError("LPIPS tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    metric = LazyLPIPS()
    assert torch.isnan(metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)))
    assert "unavailable" in metric.reason and str(tmp_path) in metric.reason
