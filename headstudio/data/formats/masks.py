"""Binary foreground masks for layouts that ship none in nerfstudio's form.

nerfstudio's mask loader wants one-channel images; NerFace has no masks at all, INSTA keeps
its matte in the alpha channel of ``images/{id}.png`` (and a 3-channel ``seg_mask``), and
MonoNPHM combines a face-parsing map with a matte. A reader sets ``FrameInfo.mask`` to a path
inside the subject's cache folder and ``FrameInfo.mask_recipe`` to how it is made;
:func:`derive_masks` writes the missing ones once (temporary file, then rename).

Recipes:

- ``("plate", plate)``: NerFace. Foreground where the image differs from the background
  plate by more than :data:`PLATE_THRESHOLD` in some channel, cleaned by a 3-px opening and a
  7-px closing, holes filled, largest connected region kept.
- ``("alpha", image, seg_mask)``: INSTA. Its ``postprocess.py`` writes the matte, thresholded
  at 127.5, as the alpha of the image; without alpha, pixels where ``seg_mask`` is non-zero.
- ``("threshold", mask)``: IMavatar. Its reader loads the (often soft, MODNet-made) mask as grey
  levels and keeps values above 127.5; nerfstudio would count every non-zero pixel.
- ``("facer", seg, matting)``: MonoNPHM's ``prepare_data`` rule: face-parsing classes other
  than background, neck, cloth and necklace (0, 1, 3, 18) and the background class written as
  ``n_classes + 1``, plus the neck, where the MODNet matte exceeds 0.8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
from PIL import Image

from headstudio.data.errors import Problems
from headstudio.data.formats.common import VideoSubject
from headstudio.utils.atomic import atomic_path

PLATE_THRESHOLD = 0.08
"""Colour difference (0..1, max over channels) above which a NerFace pixel is foreground."""
MATTE_THRESHOLD = 0.8
"""MonoNPHM's matte threshold (``matting > 0.8 * 255``)."""


def _read(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise ValueError(f"{path}: unreadable image")
    return img


def _largest_region(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if n <= 1:
        return mask
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == keep


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    flood = np.pad(mask.astype(np.uint8), 1)
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def plate_mask(image: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """Foreground of a NerFace frame against its background plate (both HxWx3 uint8)."""
    diff = np.abs(image.astype(np.float32) - plate.astype(np.float32)).max(-1) / 255.0
    mask = (diff > PLATE_THRESHOLD).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    return _largest_region(_fill_holes(mask.astype(bool)))


def alpha_mask(image: np.ndarray, seg: Optional[np.ndarray]) -> np.ndarray:
    """INSTA: the image's alpha matte, else the non-zero pixels of its segmentation."""
    if image.ndim == 3 and image.shape[2] == 4:
        return image[..., 3] > 127.5
    if seg is None:
        raise ValueError("the image has no alpha channel and there is no seg_mask")
    return (seg.reshape(seg.shape[0], seg.shape[1], -1) > 0).any(-1)


def facer_mask(seg: np.ndarray, matting: np.ndarray) -> np.ndarray:
    """MonoNPHM: face-parsing classes of the head (neck and hair included) under a confident matte."""
    seg = seg if seg.ndim == 2 else seg[..., 0]
    keep = ~((seg == 3) | (seg <= 1) | (seg == 18)) | (seg == 14)
    if seg.max() > 14:  # facer's background is written as n_classes + 1
        keep &= seg != seg.max()
    keep |= seg == 1
    matte = matting if matting.ndim == 2 else matting[..., 0]
    return keep & (matte > MATTE_THRESHOLD * 255)


def _make(recipe: tuple, image: Path) -> np.ndarray:
    kind = recipe[0]
    if kind == "plate":
        plate = _read(recipe[1], cv2.IMREAD_COLOR)
        img = _read(image, cv2.IMREAD_COLOR)
        if plate.shape != img.shape:
            raise ValueError(f"{recipe[1]}: background plate is {plate.shape[1]}x{plate.shape[0]} but {image} is {img.shape[1]}x{img.shape[0]}")
        return plate_mask(img, plate)
    if kind == "alpha":
        seg = _read(recipe[2]) if recipe[2] is not None and Path(recipe[2]).exists() else None
        return alpha_mask(_read(image), seg)
    if kind == "threshold":
        grey = _read(recipe[1], cv2.IMREAD_GRAYSCALE)
        if grey.shape != _read(image, cv2.IMREAD_GRAYSCALE).shape:
            raise ValueError(f"{recipe[1]}: mask is {grey.shape[1]}x{grey.shape[0]} but its image is not")
        return grey > 127.5
    if kind == "facer":
        return facer_mask(_read(recipe[1]), _read(recipe[2]))
    raise ValueError(f"unknown mask recipe {kind!r}")


def derive_masks(subject: VideoSubject, problems: Problems, progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Write every derived mask that is missing or older than its sources; returns how many were written."""
    todo = []
    for f in subject.frames:
        if f.mask_recipe is None or f.mask is None:
            continue
        sources = [f.image] + [Path(p) for p in f.mask_recipe[1:] if p is not None]
        newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0.0)
        if not f.mask.exists() or f.mask.stat().st_mtime < newest:
            todo.append(f)
    for k, f in enumerate(todo):
        try:
            mask = _make(f.mask_recipe, f.image)
        except ValueError as exc:
            problems.add(f.image, f"cannot derive its mask: {exc}", f.index)
            continue
        with atomic_path(f.mask) as tmp:
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        if progress is not None:
            progress(k + 1, len(todo))
    return len(todo)
