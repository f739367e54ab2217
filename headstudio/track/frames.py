"""hs-track's input: the frames of a video file (PyAV, installed with nerfstudio) or of a folder of images,
and one fixed square crop around the face for the whole clip."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from headstudio.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Clip:
    frames: list
    """RGB uint8 [H, W, 3] each, all one size."""
    fps: float
    source: Path
    rotation: int = 0
    """Degrees the frames were turned, clockwise, to stand upright (a video's display matrix, as phones record)."""


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def read_clip(source: Path, fps: Optional[float] = None, max_frames: Optional[int] = None) -> Clip:
    """Frames of a video file or an image folder (natural name order: 2.png before 10.png).

    ``fps`` keeps about that many frames per second of a video (every k-th frame); for a folder it is the
    rate to record (25 by default). A video's display rotation (the container's display matrix, which
    phones write instead of turning the pixels) is applied, to the nearest quarter turn, so the frames
    stand as a player shows them."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if source.is_dir():
        files = sorted((p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        frames = []
        for path in files[:max_frames]:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(f"{path}: not a readable image")
            if frames and bgr.shape != frames[0].shape:
                raise DataError(f"{path}: {bgr.shape[1]}x{bgr.shape[0]} px, but the first image is "
                                f"{frames[0].shape[1]}x{frames[0].shape[0]}: every frame must have one size")  # fmt: skip
            frames.append(bgr[:, :, ::-1].copy())
        return Clip(frames, float(fps or 25.0), source)
    import av

    try:
        container = av.open(str(source))
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise DataError(f"{source}: not a video PyAV can read ({type(exc).__name__})") from None
    with container:
        if not container.streams.video:
            raise DataError(f"{source}: has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25.0)
        step = max(1, round(rate / fps)) if fps else 1
        frames = []
        turns = 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i == 0:  # PyAV: counter-clockwise degrees of the display matrix; -90 = a quarter turn clockwise
                    turns = round(float(getattr(frame, "rotation", 0) or 0) / 90.0) % 4
                if i % step == 0:
                    rgb = frame.to_ndarray(format="rgb24")
                    frames.append(np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb)
                if max_frames and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            raise DataError(f"{source}: decoding failed after {len(frames)} frames ({exc})") from None
    if not frames:
        raise DataError(f"{source}: the video has no frames")
    return Clip(frames, rate / step, source, rotation=(-90 * turns) % 360)


@dataclass
class SquareCrop:
    """A square window ``[x0, x0 + side) x [y0, y0 + side)`` of the source frames (may reach past their edges:
    padded with the border's colour), resized to ``size``."""

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side

    def points(self, px: np.ndarray) -> np.ndarray:
        """Source pixels -> crop pixels."""
        return (px - np.array([self.x0, self.y0])) * self.scale

    def apply(self, rgb: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        m = np.array([[self.scale, 0.0, -self.x0 * self.scale], [0.0, self.scale, -self.y0 * self.scale]])
        return cv2.warpAffine(rgb, m, (self.size, self.size), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


def face_crop(landmarks: list, size: int, margin: float = 0.6) -> SquareCrop:
    """One crop for the clip (as IMavatar's preprocessing): the square around the landmarks' extent over all
    frames that have them, widened by ``margin`` of its side on each side (hair, ears and neck)."""
    found = [lm for lm in landmarks if lm is not None]
    if not found:
        raise DataError("no frame has a face: nothing to crop")
    pts = np.concatenate(found)
    lo, hi = pts.min(0), pts.max(0)
    centre = 0.5 * (lo + hi)
    side = float(max(hi - lo)) * (1.0 + 2.0 * margin)
    return SquareCrop(float(centre[0] - side / 2), float(centre[1] - side / 2), side, int(size))
