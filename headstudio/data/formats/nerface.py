"""Reader of the NerFace layout (Gafni et al. 2021), as NerFace's ``real_to_nerf.py`` writes it.

A subject folder holds ``transforms_{train,val,test}.json`` and the images they name
(``./<split>/f_<n>``, ``.png`` appended), and a background plate ``bg/00050.png``.
Conventions (NerFace's ``load_flame.py`` and ``get_ray_bundle`` read them; see
:func:`nerface_camera`):

- ``transform_matrix`` is an OpenGL camera-to-world with the tracked rigid head pose folded
  in, in a frame scaled so the mean camera depth is 0.5 (the factor is not recorded).
- ``intrinsics`` = ``[fx, fy, cx / w, cy / h]`` with fx, fy in pixels; fx is negative in
  NerFace's own data. Without ``intrinsics``: ``camera_angle_x``, centred principal point.
- Pixels are sampled at integer positions (no +0.5).
- ``expression``: 76 coefficients of NerFace's Face2Face-style tracker, not FLAME; there is
  no FLAME shape or pose. headstudio's methods, which need FLAME, refuse such a subject.
- ``bbox`` = ``[y0, y1, x0, x1]`` as fractions of the image, default the whole image.
- No masks: they are derived from the background plate (pixels that differ from it).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from headstudio.data.errors import Problems
from headstudio.data.formats.common import (
    CACHE_DIR,
    HALF_PIXEL,
    POSE_DIM,
    FrameInfo,
    VideoSubject,
    _check_frames,
    _check_image,
    _frames,
    _load_json,
    _vector,
)
from headstudio.flame.constants import WORLD_SCALE

NERFACE_MEAN_DEPTH = 0.5
"""NerFace scales its cameras so that their mean depth is 0.5 (``real_to_nerf.py``)."""
MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])
BACKGROUND_PLATE = Path("bg") / "00050.png"


def nerface_scale(camera_depth_m: float) -> float:
    """World units per NerFace unit, for a real mean camera depth of ``camera_depth_m`` metres."""
    return WORLD_SCALE * camera_depth_m / NERFACE_MEAN_DEPTH


def nerface_camera(
    transform_matrix: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """NerFace ``transform_matrix`` and ``intrinsics`` -> our OpenGL c2w (world units) and K.

    NerFace's ray through pixel (i, j) is ``((i - w cx) / fx, -(j - h cy) / fy, -1)`` rotated
    by the matrix. A negative fx is the same ray as focal ``|fx|`` with the camera's x axis
    negated; if that leaves a reflection (det < 0, as with NerFace's own data, whose matrix
    is a rotation used with a negative fx), the whole world is mirrored in x, which changes
    no image and makes the rotation proper. Translations are multiplied by ``scale``.
    """
    w, h = size
    c2w = np.array(transform_matrix, dtype=np.float64)
    if intrinsics[0] < 0:
        c2w[:, 0] *= -1.0
    if np.linalg.det(c2w[:3, :3]) < 0:
        c2w = MIRROR_X @ c2w
    c2w[:3, 3] *= scale
    K = np.array([abs(intrinsics[0]), abs(intrinsics[1]), intrinsics[2] * w + HALF_PIXEL, intrinsics[3] * h + HALF_PIXEL])
    if intrinsics[1] < 0:  # not seen in NerFace's data; the same reflection argument for y
        c2w[:3, 1] *= -1.0
        if np.linalg.det(c2w[:3, :3]) < 0:
            c2w = MIRROR_X @ c2w
    return c2w, K


def nerface_bbox(b: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """NerFace ``[y0, y1, x0, x1]`` fractions -> our ``[x0, y0, x1, y1]`` pixels."""
    w, h = size
    return np.array([b[2] * w, b[0] * h, b[3] * w, b[1] * h])


def read_nerface(root: Path, problems: Problems, camera_depth_m: float = 1.0) -> VideoSubject:
    """NerFace: ``transforms_{train,val,test}.json``; cameras already have the head pose folded in."""
    frames: list[FrameInfo] = []
    source: dict[int, Path] = {}
    splits: dict[str, list[int]] = {}
    seen: dict[Path, int] = {}
    scale = nerface_scale(camera_depth_m)
    plate = root / BACKGROUND_PLATE
    if not plate.exists():
        problems.add(plate, "background plate not found: NerFace subjects have no masks, and headstudio derives them from it")
    for split in ("train", "test", "val"):
        jf = root / f"transforms_{split}.json"
        if not jf.exists():
            if split == "train":
                problems.add(jf, "file not found")
            continue
        doc = _load_json(jf, problems)
        if doc is None:
            continue
        splits[split] = []
        for i, fr in _frames(doc, jf, problems):
            rel = str(fr["file_path"])
            image = root / (rel if rel.endswith(".png") else rel + ".png")
            if image in seen:  # the same frame listed in two splits
                splits[split].append(seen[image])
                continue
            c2w = _vector(fr, "transform_matrix", problems, jf, i, shape=(4, 4))
            expr = _vector(fr, "expression", problems, jf, i)
            size = _check_image(image, problems, i, "image", jf)
            if c2w is None or expr is None or size is None:
                continue
            w, h = size
            if doc.get("intrinsics"):
                intr = _vector(doc, "intrinsics", problems, jf, None, length=4)
                if intr is None:
                    continue
            elif "camera_angle_x" in doc:  # NerFace's fallback: focal from the angle, centred
                f = 0.5 * w / math.tan(0.5 * float(doc["camera_angle_x"]))
                intr = np.array([f, f, 0.5, 0.5])
            else:
                problems.add(jf, "missing (and no camera_angle_x)", None, "intrinsics")
                continue
            cam, K = nerface_camera(c2w, intr, size, scale)
            bbox = None
            if "bbox" in fr:
                b = _vector(fr, "bbox", problems, jf, i, length=4)
                if b is not None:
                    if not (0 <= b.min() and b.max() <= 1 and b[0] < b[1] and b[2] < b[3]):
                        problems.add(jf, f"{b.tolist()} is not [y0, y1, x0, x1] fractions of the image", i, "bbox")
                    else:
                        bbox = nerface_bbox(b, size)
            mask = root / CACHE_DIR / "masks" / Path(rel).parent / (Path(rel).name.removesuffix(".png") + ".png")
            idx = seen[image] = len(frames)
            frames.append(
                FrameInfo(
                    image, split, i, cam, K, expr, np.zeros(POSE_DIM), mask=mask, bbox=bbox, size=size,
                    mask_recipe=("plate", plate),
                )  # fmt: skip
            )
            source[idx] = jf
            splits[split].append(idx)
    _check_frames(frames, splits, problems, source)
    subject = VideoSubject(root, "nerface", frames, splits, np.zeros(0), head_folded=True)
    subject.flame_tracked = False
    n = len(frames[0].expression) if frames else 76
    subject.flame_missing = (
        f"its {n} expression values are NerFace's own Face2Face-style blendshape coefficients, not FLAME's, and it has "
        "no FLAME shape, jaw, neck or eye pose"
    )
    subject.split_rule = "the layout's transforms_{train,val,test}.json"
    subject.notes.append(
        f"cameras: NerFace units x {scale:g} (a real mean camera depth of {camera_depth_m:g} m; --nerface-camera-depth)"
    )
    subject.notes.append(f"masks: derived from the background plate {BACKGROUND_PLATE} (NerFace has none)")
    return subject
