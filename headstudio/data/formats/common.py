"""What the layout readers of :mod:`headstudio.data.formats` share.

The records a reader fills (:class:`FrameInfo` per frame, :class:`VideoSubject` per
subject folder), :func:`detect_layout`, which guesses a folder's layout from the files it
holds, and the validators every reader builds on: JSON loading, numeric vectors checked
for length, shape and finiteness, the ``frames`` list of a layout JSON, image files checked
for presence and truncation, and the cross-frame checks (one image size, one expression
length). Every validator records what it finds in a :class:`~headstudio.data.errors.Problems`
instead of raising, so a reader reports all problems at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from headstudio.data.errors import DataError, Problems

LAYOUTS = ("imavatar", "nerface", "insta", "kinect")
POSE_DIM = 15
HALF_PIXEL = 0.5
"""Added to principal points and landmarks of layouts whose pixel (i, j) is sampled at the integer
position (i, j) (IMavatar, NerFace, OpenCV-style Kinect calibration), so that the same 3D point lands
on the same pixel under nerfstudio's convention, which samples pixel (i, j) at (i + 0.5, j + 0.5)."""
CACHE_DIR = ".headstudio"
"""Folder inside a subject where headstudio keeps what it derives once (masks, recovered FLAME
parameters); delete it to recompute."""


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
    mesh: Optional[Path] = None  # tracked FLAME mesh (metres, FLAME space) to recover parameters from
    mask_recipe: Optional[tuple] = None  # how to derive ``mask`` when the layout has no binary mask


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
    flame_tracked: bool = True  # expression and pose are FLAME's (False: NerFace's own tracker)
    flame_missing: str = ""  # what the layout lacks, for the one-line refusal of FLAME methods
    recover: Optional[str] = None  # None, "pose" (jaw/eyes/neck + shape) or "pose+expression", from ``mesh``
    split_rule: str = ""  # how the train / test split was chosen, for hs-check-data

    @property
    def cache(self) -> Path:
        return self.root / CACHE_DIR

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
    if (root / "flame_params.json").exists() or any(root.glob("*/flame_params.json")) or any(root.glob("*/*/flame_params.json")):
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
