"""Reader of Kinect sequences in the layout of MonoNPHM (Giebenhain et al. 2024).

A subject is one or more sequence folders with ``source/`` images, ``matting/`` masks,
``depth/`` maps in millimetres, ``pipnet/test.npy`` landmarks and one ``cameras/*.npz`` per
frame (OpenCV ``R``, ``t``, ``K``, translations in metres, converted here to OpenGL axes
and world units). FLAME parameters come from ``flame_params.npz`` when present (hs-synth
writes it), else zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headstudio.data.errors import Problems
from headstudio.data.formats.common import POSE_DIM, FrameInfo, VideoSubject, _check_image, _check_sizes
from headstudio.flame.constants import WORLD_SCALE

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def read_kinect(root: Path, problems: Problems, test_sequences: tuple[str, ...] = (), test_every: int = 10) -> VideoSubject:
    """MonoNPHM-style Kinect sequences: ``source/``, ``matting/``, ``seg/``, ``depth/`` (mm),
    ``pipnet/test.npy`` landmarks, ``cameras/*.npz`` (OpenCV R, t, K in metres). FLAME
    parameters from ``flame_params.npz`` when present (hs-synth), else zeros."""
    seq_dirs = [root] if (root / "source").is_dir() else sorted(p.parent for p in root.glob("*/source"))
    if not seq_dirs:
        problems.add(root, "no source/ folder in the folder or its sub-folders")
    names = [d.name if d != root else "all" for d in seq_dirs]
    tests = set(test_sequences) if test_sequences else ({"test"} if "test" in names else ({names[-1]} if len(names) > 1 else set()))
    frames: list[FrameInfo] = []
    splits: dict[str, list[int]] = {"train": [], "test": []}
    shape = np.zeros(0)
    for seq_dir, name in zip(seq_dirs, names):
        images = sorted((seq_dir / "source").glob("*.png"))
        if not images:
            problems.add(seq_dir / "source", "no frames")
            continue
        lms = None
        lm_path = seq_dir / "pipnet" / "test.npy"
        if lm_path.exists():
            lms = np.load(lm_path, allow_pickle=False)
            if lms.ndim != 3 or lms.shape[0] != len(images) or lms.shape[2] != 2:
                problems.add(lm_path, f"has shape {lms.shape}, expected ({len(images)}, L, 2)")
                lms = None
        track = None
        if (seq_dir / "flame_params.npz").exists():
            track = np.load(seq_dir / "flame_params.npz", allow_pickle=False)
            if shape.size == 0:
                shape = track["shape"]
        for i, image in enumerate(images):
            cam_path = seq_dir / "cameras" / f"{image.stem}.npz"
            if not cam_path.exists():
                problems.add(cam_path, "camera file not found", i)
                continue
            cam = np.load(cam_path, allow_pickle=False)
            missing = [k for k in ("R", "t", "K") if k not in cam]
            if missing:
                problems.add(cam_path, "missing", i, missing[0])
                continue
            R, t, K = cam["R"], cam["t"].reshape(3), cam["K"]
            c2w = np.eye(4)
            c2w[:3, :3] = R.T
            c2w[:3, 3] = -R.T @ t * WORLD_SCALE  # MonoNPHM cameras are in metres
            c2w = c2w @ GL_FROM_CV
            size = _check_image(image, problems, i, "image", seq_dir)
            mask = seq_dir / "matting" / image.name
            _check_image(mask, problems, i, "mask", seq_dir)
            if size is None:
                continue
            expr = track["expression"][i] if track is not None else np.zeros(50)
            pose = track["pose"][i] if track is not None else np.zeros(POSE_DIM)
            idx = len(frames)
            frames.append(
                FrameInfo(
                    image, name, i, c2w, np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]), expr, pose,
                    mask=mask, landmarks=None if lms is None else lms[i].astype(np.float64),
                    depth=seq_dir / "depth" / image.name, size=size,
                )  # fmt: skip
            )
            if name in tests:
                if i % test_every == 0:
                    splits["test"].append(idx)
            else:
                splits["train"].append(idx)
    _check_sizes(frames, problems)
    splits["val"] = list(splits["test"])
    return VideoSubject(root, "kinect", frames, splits, shape, head_folded=False, depth_to_world=WORLD_SCALE / 1000.0)
