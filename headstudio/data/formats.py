"""Readers of FLAME-tracked video layouts (IMavatar, NerFace, INSTA) and Kinect sequences.

Each reader turns a subject folder into a :class:`VideoSubject`: per-frame camera (OpenGL
camera-to-world in headstudio's world units), intrinsics, FLAME expression and pose, 2D
landmarks and bbox in pixels, image / mask / depth paths. Readers never stop at the first
problem: they collect every one in a :class:`~headstudio.data.errors.Problems`, so
``hs-check-data`` can list them all; the dataparser raises the first.

World units: FLAME coordinates x 4 (IMavatar's convention; a head spans about one unit).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from headstudio.data.errors import DataError, Problems
from headstudio.flame.constants import WORLD_SCALE

LAYOUTS = ("imavatar", "nerface", "insta", "kinect")
POSE_DIM = 15
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class FrameInfo:
    image: Path
    sequence: str
    index: int  # index within its sequence
    c2w: np.ndarray  # (4, 4) OpenGL camera-to-world, world units
    intrinsics: np.ndarray  # (4,) fx, fy, cx, cy in pixels
    expression: np.ndarray  # (E,)
    pose: np.ndarray  # (15,) global, neck, jaw, left eye, right eye
    mask: Optional[Path] = None
    landmarks: Optional[np.ndarray] = None  # (L, 2) pixels
    bbox: Optional[np.ndarray] = None  # (4,) x0, y0, x1, y1 pixels
    depth: Optional[Path] = None
    size: tuple[int, int] = (0, 0)  # width, height


@dataclass
class VideoSubject:
    root: Path
    layout: str
    frames: list[FrameInfo]
    splits: dict[str, list[int]]  # split name -> indices into frames
    shape: np.ndarray  # (S,) FLAME identity
    head_folded: bool  # cameras already have the rigid head pose folded in
    depth_to_world: float = 0.0  # depth PNG value -> world units (0: no depth)
    notes: list[str] = field(default_factory=list)

    @property
    def sequences(self) -> list[str]:
        seen: list[str] = []
        for f in self.frames:
            if f.sequence not in seen:
                seen.append(f.sequence)
        return seen


def detect_layout(root: Path) -> str:
    """Guess a subject folder's layout from the files it holds."""
    if not root.is_dir():
        raise DataError(f"{root}: subject folder not found")
    if (root / "flame_params.json").exists() or any(root.glob("*/flame_params.json")):
        return "imavatar"
    split_files = [root / f"transforms_{s}.json" for s in ("train", "val", "test")]
    present = [p for p in split_files if p.exists()]
    if present:
        doc = _load_json(present[0], Problems())
        return "insta" if doc is not None and "fl_x" in doc else "nerface"  # INSTA names pixel intrinsics
    if (root / "transforms.json").exists():
        return "insta"
    if (root / "source").is_dir() or any(root.glob("*/source")):
        return "kinect"
    raise DataError(
        f"{root}: unknown layout: no flame_params.json (IMavatar), transforms_{{train,val,test}}.json (NerFace), "
        "transforms.json (INSTA) or source/ (Kinect) found; pass --format or check the path"
    )


# ------------------------------------------------------------------------------------ helpers


def _load_json(path: Path, problems: Problems) -> Optional[dict]:
    if not path.exists():
        problems.add(path, "file not found")
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.add(path, f"not valid JSON ({exc})")
        return None
    if not isinstance(doc, dict):
        problems.add(path, "expected a JSON object at the top level")
        return None
    return doc


def _vector(
    doc: dict, key: str, problems: Problems, file: Path, frame: Any, length: Optional[int] = None, shape: Optional[tuple] = None
) -> Optional[np.ndarray]:
    if key not in doc:
        problems.add(file, "missing", frame, key)
        return None
    try:
        arr = np.asarray(doc[key], dtype=np.float64)
    except (TypeError, ValueError):
        problems.add(file, "is not a list of numbers", frame, key)
        return None
    return _validated(arr, problems, file, frame, key, length, shape)


def _validated(
    arr: np.ndarray, problems: Problems, file: Path, frame: Any, key: str, length: Optional[int], shape: Optional[tuple] = None
) -> Optional[np.ndarray]:
    """``arr`` if it has the expected length / shape and only finite values, else None (and a problem)."""
    if length is not None and arr.shape != (length,):
        problems.add(file, f"has {arr.size} values, expected {length}", frame, key)
        return None
    if shape is not None and arr.shape != shape:
        problems.add(file, f"has shape {arr.shape}, expected {shape}", frame, key)
        return None
    if not np.all(np.isfinite(arr)):
        problems.add(file, "contains NaN or inf", frame, key)
        return None
    return arr


def _frames(doc: dict, file: Path, problems: Problems) -> list[tuple[int, dict]]:
    """The ``frames`` list of a layout JSON as (index, frame) pairs that name a ``file_path``."""
    raw = doc.get("frames")
    if not isinstance(raw, list) or not raw:
        problems.add(file, "no frames" if isinstance(raw, list) else "missing", None, "frames")
        return []
    out = []
    for i, fr in enumerate(raw):
        if not isinstance(fr, dict) or "file_path" not in fr:
            problems.add(file, "missing", i, "file_path")
        else:
            out.append((i, fr))
    return out


def _check_image(path: Path, problems: Problems, frame: Any, what: str, source: Path) -> Optional[tuple[int, int]]:
    """Size of an image file, after checking it is present and not truncated."""
    if not path.exists():
        problems.add(path, f"{what} file not found (frame {frame} of {source})")
        return None
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()  # reads the whole file: catches truncation and bad checksums
    except Exception as exc:  # PIL raises many types for corrupt files
        problems.add(path, f"{what} is unreadable or truncated ({type(exc).__name__}: {exc})".replace("\n", " "))
        return None
    return size


def _check_sizes(frames: list[FrameInfo], problems: Problems) -> None:
    sizes = [f.size for f in frames if f.size != (0, 0)]
    if not sizes:
        return
    first = sizes[0]
    for f in frames:
        if f.size != (0, 0) and f.size != first:
            problems.add(f.image, f"image is {f.size[0]}x{f.size[1]} but the first frame is {first[0]}x{first[1]}")


def _check_frames(frames: list[FrameInfo], splits: dict[str, list[int]], problems: Problems, source: dict[int, Path]) -> None:
    """Checks shared by the layouts with split files; a missing val or test split borrows the other."""
    _check_sizes(frames, problems)
    _check_expression_lengths(frames, problems, source)
    splits.setdefault("train", [])
    splits.setdefault("test", splits.get("val", []))
    splits.setdefault("val", splits["test"])


def _check_expression_lengths(frames: list[FrameInfo], problems: Problems, source: dict[int, Path]) -> None:
    if not frames:
        return
    n = len(frames[0].expression)
    for i, f in enumerate(frames):
        if len(f.expression) != n:
            problems.add(source.get(i, f.image), f"has {len(f.expression)} values but frame 0 has {n}", f.index, "expression")


# ------------------------------------------------------------------------------------ IMavatar


def _imavatar_sequences(root: Path) -> list[Path]:
    if (root / "flame_params.json").exists():
        return [root]
    return sorted(p.parent for p in root.glob("*/flame_params.json"))


def read_imavatar(root: Path, problems: Problems, test_sequences: tuple[str, ...] = (), test_every: int = 10) -> VideoSubject:
    """IMavatar: one or more sequence folders with ``flame_params.json``, ``image/``, ``mask/``.

    ``world_mat`` is world-to-camera with OpenGL axes; FLAME is already x 4 in that world.
    Train: every frame of the training sequences. Test (and val): every ``test_every``-th
    frame of the test sequences (default: a sequence named ``test``, else the last one).
    """
    seq_dirs = _imavatar_sequences(root)
    if not seq_dirs:
        problems.add(root, "no flame_params.json in the folder or its sub-folders")
    names = [d.name if d != root else "all" for d in seq_dirs]
    tests = set(test_sequences) if test_sequences else ({"test"} if "test" in names else ({names[-1]} if len(names) > 1 else set()))
    # Training sequences first, so frame indices do not depend on the held-out sequences.
    order = sorted(range(len(names)), key=lambda k: names[k] in tests)
    seq_dirs, names = [seq_dirs[k] for k in order], [names[k] for k in order]
    unknown = set(test_sequences) - set(names)
    if unknown:
        problems.add(root, f"--test-sequences names {sorted(unknown)}, not among the sequences {names}")
    frames: list[FrameInfo] = []
    source: dict[int, Path] = {}
    splits: dict[str, list[int]] = {"train": [], "test": []}
    shape = np.zeros(0)
    for seq_dir, name in zip(seq_dirs, names):
        jf = seq_dir / "flame_params.json"
        doc = _load_json(jf, problems)
        if doc is None:
            continue
        s = _vector(doc, "shape_params", problems, jf, None)
        if s is not None and shape.size == 0:
            shape = s
        intr = _vector(doc, "intrinsics", problems, jf, None, length=4)
        for i, fr in _frames(doc, jf, problems):
            rel = str(fr["file_path"])
            image = (seq_dir / rel).with_suffix(".png") if not rel.endswith(".png") else seq_dir / rel
            wm = _vector(fr, "world_mat", problems, jf, i, shape=(3, 4))
            expr = _vector(fr, "expression", problems, jf, i)
            pose = _vector(fr, "pose", problems, jf, i, length=POSE_DIM)
            kp = fr.get("flame_keypoints")
            size = _check_image(image, problems, i, "image", jf)
            mask = seq_dir / "mask" / image.name
            _check_image(mask, problems, i, "mask", jf)
            if wm is None or expr is None or pose is None or intr is None or size is None:
                continue
            w, h = size
            # Normalised principal point is about 0.5; the old form stores pixels of a 512-px image.
            scale = (w / 512.0, h / 512.0) if np.abs(intr[2:]).max() > 1.0 else (w, h)
            K = np.array([-intr[0] * scale[0], intr[1] * scale[1], intr[2] * scale[0], intr[3] * scale[1]])
            w2c = np.eye(4)
            w2c[:3] = wm
            lm = None
            if kp is not None:
                kp_arr = _vector(fr, "flame_keypoints", problems, jf, i)
                if kp_arr is not None and kp_arr.ndim == 2 and kp_arr.shape[1] == 2:
                    lm = (kp_arr + 1.0) * 0.5 * np.array([w, h])
            bbox = None
            if "bbox" in fr:
                b = _vector(fr, "bbox", problems, jf, i, length=4)
                if b is not None:
                    bbox = (b + 1.0) * 0.5 * np.array([w, h, w, h])
            idx = len(frames)
            frames.append(
                FrameInfo(image, name, i, np.linalg.inv(w2c), K, expr, pose, mask=mask, landmarks=lm, bbox=bbox, size=size)
            )
            source[idx] = jf
            if name in tests:
                if i % test_every == 0:
                    splits["test"].append(idx)
            else:
                splits["train"].append(idx)
    if shape.size == 0 and seq_dirs:
        problems.add(seq_dirs[0] / "flame_params.json", "missing", None, "shape_params")
    _check_sizes(frames, problems)
    _check_expression_lengths(frames, problems, source)
    if frames and not splits["train"]:
        problems.add(root, "no training frames: every sequence is a test sequence")
    splits["val"] = list(splits["test"])
    return VideoSubject(root, "imavatar", frames, splits, shape, head_folded=False)


# ------------------------------------------------------------------------------------ NerFace


def read_nerface(root: Path, problems: Problems) -> VideoSubject:
    """NerFace: ``transforms_{train,val,test}.json``; cameras already have the head pose folded in.

    FLAME parameters come from ``flame_expression`` / ``flame_pose`` when present (written by
    hs-synth); otherwise NerFace's own 76-d ``expression`` is passed on with a zero pose.
    """
    frames: list[FrameInfo] = []
    source: dict[int, Path] = {}
    splits: dict[str, list[int]] = {}
    shape = np.zeros(0)
    seen: dict[Path, int] = {}
    for split in ("train", "test", "val"):
        jf = root / f"transforms_{split}.json"
        if not jf.exists():
            if split == "train":
                problems.add(jf, "file not found")
            continue
        doc = _load_json(jf, problems)
        if doc is None:
            continue
        if "shape_params" in doc and shape.size == 0:
            s = _vector(doc, "shape_params", problems, jf, None)
            shape = s if s is not None else shape
        splits[split] = []
        for i, fr in _frames(doc, jf, problems):
            rel = str(fr["file_path"])
            image = root / (rel if rel.endswith(".png") else rel + ".png")
            if image in seen:  # the same frame listed in two splits (val is often part of test)
                splits[split].append(seen[image])
                continue
            c2w = _vector(fr, "transform_matrix", problems, jf, i, shape=(4, 4))
            key = "flame_expression" if "flame_expression" in fr else "expression"
            expr = _vector(fr, key, problems, jf, i)
            pose = _vector(fr, "flame_pose", problems, jf, i, length=POSE_DIM) if "flame_pose" in fr else np.zeros(POSE_DIM)
            size = _check_image(image, problems, i, "image", jf)
            mask = root / "mask" / Path(rel).parent / (Path(rel).stem + ".png")
            has_mask = mask.exists() or (root / "mask").is_dir()
            if has_mask:
                _check_image(mask, problems, i, "mask", jf)
            if c2w is None or expr is None or pose is None or size is None:
                continue
            w, h = size
            if "intrinsics" in doc:
                intr = _vector(doc, "intrinsics", problems, jf, None, length=4)
                if intr is None:
                    continue
                K = np.array([intr[0], intr[1], intr[2] * w, intr[3] * h])
            elif "camera_angle_x" in doc:
                f = 0.5 * w / math.tan(0.5 * float(doc["camera_angle_x"]))
                K = np.array([f, f, w / 2, h / 2])
            else:
                problems.add(jf, "missing (and no camera_angle_x)", None, "intrinsics")
                continue
            lm = None
            if "flame_keypoints_px" in fr:
                lm = _vector(fr, "flame_keypoints_px", problems, jf, i)
            bbox = None
            if "bbox" in fr:
                b = _vector(fr, "bbox", problems, jf, i, length=4)
                if b is not None:
                    bbox = (b + 1.0) * 0.5 * np.array([w, h, w, h]) if np.abs(b).max() <= 1.0 else b
            idx = seen[image] = len(frames)
            frames.append(FrameInfo(image, split, i, c2w, K, expr, pose, mask=mask if has_mask else None, landmarks=lm, bbox=bbox, size=size))
            source[idx] = jf
            splits[split].append(idx)
    _check_frames(frames, splits, problems, source)
    return VideoSubject(root, "nerface", frames, splits, shape, head_folded=True)


# ------------------------------------------------------------------------------------ INSTA


def read_insta(root: Path, problems: Problems) -> VideoSubject:
    """INSTA: ``transforms{,_train,_val,_test}.json`` with per-frame expression files.

    Cameras have the head pose folded in. The pose comes from ``flame_pose_path`` (hs-synth)
    or from ``flame/jaw`` and ``flame/eyes`` with a zero global and neck rotation.
    """
    frames: list[FrameInfo] = []
    source: dict[int, Path] = {}
    splits: dict[str, list[int]] = {}
    shape = np.zeros(0)
    seen: dict[Path, int] = {}
    split_files = {s: root / f"transforms_{s}.json" for s in ("train", "test", "val")}
    if not any(p.exists() for p in split_files.values()):
        split_files = {"train": root / "transforms.json"}
    for split, jf in split_files.items():
        if not jf.exists():
            continue
        doc = _load_json(jf, problems)
        if doc is None:
            continue
        intr = [doc.get(k) for k in ("fl_x", "fl_y", "cx", "cy")]
        if any(v is None for v in intr):
            problems.add(jf, "missing one of fl_x, fl_y, cx, cy", None, "intrinsics")
            continue
        if "shape_params" in doc and shape.size == 0:
            s = _vector(doc, "shape_params", problems, jf, None)
            shape = s if s is not None else shape
        elif shape.size == 0 and (root / "flame" / "shape.txt").exists():
            shape = np.atleast_1d(np.loadtxt(root / "flame" / "shape.txt"))
        splits[split] = []
        for i, fr in _frames(doc, jf, problems):
            image = root / str(fr["file_path"])
            if image in seen:
                splits[split].append(seen[image])
                continue
            stem = image.stem
            c2w = _vector(fr, "transform_matrix", problems, jf, i, shape=(4, 4))
            expr = _read_txt_vector(root / str(fr.get("exp_path", f"flame/exp/{stem}.txt")), problems, i, "expression")
            if "flame_pose_path" in fr:
                pose = _read_txt_vector(root / str(fr["flame_pose_path"]), problems, i, "pose", length=POSE_DIM)
            else:
                jaw = _read_txt_vector(root / "flame" / "jaw" / f"{stem}.txt", problems, i, "jaw", length=3)
                eyes = _read_txt_vector(root / "flame" / "eyes" / f"{stem}.txt", problems, i, "eyes", length=6)
                pose = None if jaw is None or eyes is None else np.concatenate([np.zeros(6), jaw, eyes])
            size = _check_image(image, problems, i, "image", jf)
            mask = root / str(fr["seg_mask_path"]) if "seg_mask_path" in fr else None
            if mask is not None:
                _check_image(mask, problems, i, "mask", jf)
            depth = root / str(fr["depth_path"]) if "depth_path" in fr else None
            if c2w is None or expr is None or pose is None or size is None:
                continue
            idx = seen[image] = len(frames)
            frames.append(FrameInfo(image, split, i, c2w, np.array(intr, dtype=np.float64), expr, pose, mask=mask, depth=depth, size=size))
            source[idx] = jf
            splits[split].append(idx)
    _check_frames(frames, splits, problems, source)
    return VideoSubject(root, "insta", frames, splits, shape, head_folded=True, depth_to_world=WORLD_SCALE / 1000.0)


def _read_txt_vector(path: Path, problems: Problems, frame: int, name: str, length: Optional[int] = None) -> Optional[np.ndarray]:
    if not path.exists():
        problems.add(path, f"{name} file not found", frame)
        return None
    try:
        arr = np.atleast_1d(np.loadtxt(path, dtype=np.float64)).reshape(-1)
    except ValueError as exc:
        problems.add(path, f"not a list of numbers ({exc})", frame, name)
        return None
    return _validated(arr, problems, path, frame, name, length)


# ------------------------------------------------------------------------------------ Kinect




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


def read_subject(
    root: Path, layout: str = "auto", problems: Optional[Problems] = None, test_sequences: tuple[str, ...] = (), test_every: int = 10
) -> tuple[VideoSubject, Problems]:
    """Read any supported layout; returns the subject and every problem found."""
    problems = problems if problems is not None else Problems()
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DataError(f"{root}: unknown format '{layout}': choose one of {', '.join(LAYOUTS)}")
    if layout == "imavatar":
        subject = read_imavatar(root, problems, test_sequences, test_every)
    elif layout == "nerface":
        subject = read_nerface(root, problems)
    elif layout == "insta":
        subject = read_insta(root, problems)
    else:
        subject = read_kinect(root, problems, test_sequences, test_every)
    if not subject.frames and not problems.items:
        problems.add(root, "no frames")
    return subject, problems
