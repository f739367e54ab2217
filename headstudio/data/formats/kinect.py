"""Reader of MonoNPHM's per-sequence layout (Giebenhain et al. 2024), Kinect RGB-D or video.

A subject is one sequence folder (or a folder of them), each as MonoNPHM's preprocessing
writes it and its ``photometric_tracking/data_loading.py`` reads it:

- ``source/{t:05d}.png``: RGB frames, 0-based (Kinect: 1080 x 1080).
- ``metrical_tracker/<seq>/checkpoint/{max(t-1,0):05d}_cam_params_opencv.npz``: metrical-tracker's
  camera, OpenCV world-to-camera in FLAME metres, each array with a leading batch axis
  (``R`` 1x3x3, ``t`` 1x3, ``K`` 1x3x3). Note MonoNPHM's index ``t - 1`` for source frame ``t``.
  metrical-tracker's FLAME has no global rotation, so the head pose lives in the camera.
- Intrinsics: for Kinect sequences from ``kinect_intrinsics.txt`` (one line ``cx cy fx fy k1..k6
  codx cody p2 p1``, the full frame; distortion ignored, as MonoNPHM does), else the tracker's K.
  Both are OpenCV calibrations (pixel centres at integers): half a pixel is added.
- ``pipnet/test.npy``: (T, 98, 2) WFLW landmarks normalised to [0, 1]; mapped to iBUG-68 with
  :data:`WFLW_TO_IBUG68`.
- ``seg/{t}.png`` (face-parsing classes, not zero-padded) and ``matting/{t:05d}.png`` (matte):
  the mask is derived from both with MonoNPHM's rule (:mod:`headstudio.data.formats.masks`).
- ``depth/{t:05d}.png``: uint16 millimetres, aligned to the colour frame (evaluation only).
- ``identity.npy``: MICA's FLAME shape (300). FLAME expression and pose are not part of the
  layout: they are recovered from metrical-tracker's meshes
  ``metrical_tracker/<seq>/mesh/{k:05d}.ply`` (the checkpoint the camera comes from) when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from headstudio.data.errors import Problems
from headstudio.data.formats.common import CACHE_DIR, HALF_PIXEL, POSE_DIM, FrameInfo, VideoSubject, _check_image, _check_sizes
from headstudio.data.formats.insta import GL_FROM_CV
from headstudio.flame.constants import WORLD_SCALE

WFLW_TO_IBUG68 = (
    list(range(0, 33, 2))  # jaw line: every other WFLW contour point
    + [33, 34, 35, 36, 37, 42, 43, 44, 45, 46]  # brows: upper edges
    + list(range(51, 60))  # nose bridge and base
    + [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75]  # eyes: 6 of each 8
    + list(range(76, 96))  # mouth
)
"""WFLW-98 rows of the iBUG-68 landmarks (the table MonoNPHM's reader applies)."""
INTRINSICS_FILENAME = "kinect_intrinsics.txt"


def checkpoint_index(t: int) -> int:
    """metrical-tracker checkpoint MonoNPHM reads for source frame ``t``."""
    return max(t - 1, 0)


def read_kinect_intrinsics(path: Path) -> np.ndarray:
    """``cx cy fx fy ...`` (MonoNPHM's ``assets/kinect_intrinsics.txt``) -> (fx, fy, cx, cy), OpenCV pixels."""
    fields = path.read_text().split()
    if len(fields) < 4:
        raise ValueError(f"{path}: expected at least 4 numbers 'cx cy fx fy', got {len(fields)}")
    try:
        cx, cy, fx, fy = (float(v) for v in fields[:4])
    except ValueError:
        raise ValueError(f"{path}: expected 'cx cy fx fy ...' numbers on the first line, got {' '.join(fields[:4])!r}") from None
    return np.array([fx, fy, cx, cy])


def mononphm_camera(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """metrical-tracker OpenCV world-to-camera (FLAME metres) -> our OpenGL c2w (FLAME x 4).

    The same as MonoNPHM's ``Pose(R, t, OPEN_CV)`` -> OpenGL, inverted, translation x 4.
    """
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t * WORLD_SCALE
    return c2w @ GL_FROM_CV


def _load_camera(path: Path, problems: Problems, frame: int) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if not path.exists():
        problems.add(path, "camera file not found", frame)
        return None
    try:
        cam = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        problems.add(path, f"unreadable camera file ({exc})", frame)
        return None
    want = {"R": (1, 3, 3), "t": (1, 3), "K": (1, 3, 3)}
    out = []
    for key, shape in want.items():
        if key not in cam:
            problems.add(path, "missing", frame, key)
            return None
        arr = np.asarray(cam[key], dtype=np.float64)
        if arr.shape != shape:
            problems.add(path, f"has shape {arr.shape}, expected {shape} (metrical-tracker keeps a batch axis)", frame, key)
            return None
        if not np.all(np.isfinite(arr)):
            problems.add(path, "contains NaN or inf", frame, key)
            return None
        out.append(arr[0])
    return out[0], out[1], out[2]


def _find_intrinsics(seq_dir: Path, root: Path, given: Optional[Path]) -> Optional[Path]:
    if given is not None:
        return Path(given)
    for p in (seq_dir / INTRINSICS_FILENAME, root / INTRINSICS_FILENAME):
        if p.exists():
            return p
    return None


def read_kinect(
    root: Path, problems: Problems, test_sequences: tuple[str, ...] = (), test_every: int = 10, intrinsics_file: Optional[Path] = None
) -> VideoSubject:
    """MonoNPHM sequences: ``source/``, ``seg/``, ``matting/``, ``depth/``, ``pipnet/``, metrical-tracker cameras."""
    seq_dirs = [root] if (root / "source").is_dir() else sorted(p.parent for p in root.glob("*/source"))
    if not seq_dirs:
        problems.add(root, "no source/ folder in the folder or its sub-folders")
    names = [d.name if d != root else "all" for d in seq_dirs]
    if test_sequences:
        tests, rule = set(test_sequences), f"test {', '.join(test_sequences)} (--test-sequences)"
    elif "test" in names:
        tests, rule = {"test"}, "test: the sequence named 'test'"
    elif len(names) > 1:
        tests, rule = {names[-1]}, f"test {names[-1]}: the last sequence"
    else:
        tests, rule = set(), "a single sequence: no test frames"
    order = sorted(range(len(names)), key=lambda k: names[k] in tests)
    seq_dirs, names = [seq_dirs[k] for k in order], [names[k] for k in order]
    frames: list[FrameInfo] = []
    splits: dict[str, list[int]] = {"train": [], "test": []}
    shape = np.zeros(0)
    notes: list[str] = []
    have_meshes = True
    for seq_dir, name in zip(seq_dirs, names):
        images = sorted((seq_dir / "source").glob("*.png"))
        if not images:
            problems.add(seq_dir / "source", "no frames")
            continue
        tracker = seq_dir / "metrical_tracker" / seq_dir.name
        intr_path = _find_intrinsics(seq_dir, root, intrinsics_file)
        K_file = None
        if intr_path is not None:
            try:
                K_file = read_kinect_intrinsics(intr_path)
            except (ValueError, OSError) as exc:
                problems.add(intr_path, str(exc).removeprefix(f"{intr_path}: "))
                continue
            notes.append(f"{name}: intrinsics from {intr_path} (Kinect calibration of the full frame)")
        else:
            notes.append(f"{name}: no {INTRINSICS_FILENAME}: intrinsics from the tracker's K (MonoNPHM's video case)")
        lms = None
        lm_path = seq_dir / "pipnet" / "test.npy"
        if lm_path.exists():
            lms = np.load(lm_path, allow_pickle=False)
            if lms.ndim != 3 or lms.shape[0] != len(images) or lms.shape[1:] != (98, 2):
                problems.add(lm_path, f"has shape {lms.shape}, expected ({len(images)}, 98, 2) (PIPNet's WFLW-98, one row per source frame)")
                lms = None
            elif np.nanmax(np.abs(lms)) > 1.5:
                problems.add(lm_path, "values exceed 1: PIPNet landmarks are normalised by the image size")
                lms = None
        ident = seq_dir / "identity.npy"
        if ident.exists() and shape.size == 0:
            s = np.load(ident, allow_pickle=False).astype(np.float64).reshape(-1)
            shape = s if np.all(np.isfinite(s)) else shape
        for i, image in enumerate(images):
            k = checkpoint_index(i)
            cam = _load_camera(tracker / "checkpoint" / f"{k:05d}_cam_params_opencv.npz", problems, i)
            size = _check_image(image, problems, i, "image", seq_dir)
            seg = seq_dir / "seg" / f"{i}.png"
            matte = seq_dir / "matting" / image.name
            _check_image(seg, problems, i, "segmentation", seq_dir)
            _check_image(matte, problems, i, "matte", seq_dir)
            if cam is None or size is None:
                continue
            R, t, K_npz = cam
            K = K_file if K_file is not None else np.array([K_npz[0, 0], K_npz[1, 1], K_npz[0, 2], K_npz[1, 2]])
            K = K + np.array([0.0, 0.0, HALF_PIXEL, HALF_PIXEL])
            lm = None
            if lms is not None:
                lm = lms[i][WFLW_TO_IBUG68].astype(np.float64) * np.array(size, dtype=np.float64) + HALF_PIXEL
            mesh = tracker / "mesh" / f"{k:05d}.ply"
            have_meshes &= mesh.exists()
            depth = seq_dir / "depth" / image.name
            idx = len(frames)
            frames.append(
                FrameInfo(
                    image, name, i, mononphm_camera(R, t), K, np.zeros(0), np.zeros(POSE_DIM),
                    mask=seq_dir / CACHE_DIR / "masks" / image.name, landmarks=lm,
                    depth=depth if depth.exists() else None, size=size, mesh=mesh, mask_recipe=("facer", seg, matte),
                )  # fmt: skip
            )
            if name in tests:
                if i % test_every == 0:
                    splits["test"].append(idx)
            else:
                splits["train"].append(idx)
    _check_sizes(frames, problems)
    splits["val"] = list(splits["test"])
    subject = VideoSubject(root, "kinect", frames, splits, shape, head_folded=True, depth_to_world=WORLD_SCALE / 1000.0)
    subject.notes.extend(notes)
    subject.split_rule = f"train: the others; {rule}; every {test_every}-th test frame"
    if frames and have_meshes:
        subject.recover = "pose+expression"
        subject.notes.append("FLAME expression, jaw, eyes, neck: recovered from metrical_tracker/<seq>/mesh/ (shape from identity.npy)")
    elif frames:
        subject.flame_tracked = False
        subject.flame_missing = "it has no tracked FLAME meshes (metrical_tracker/<seq>/mesh/{k:05d}.ply) to recover FLAME expression and pose from"
        for f in frames:
            f.mesh = None
            f.expression = np.zeros(50)
    return subject
