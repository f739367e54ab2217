"""hs-track's input: the frames of a video file (PyAV, installed with nerfstudio) or of a folder of images,
and one fixed square crop around the face for the whole clip."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

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


class ClipReader:
    """The frames of a video file or an image folder, read anew on each :meth:`frames` pass, so a long clip is
    never held in memory (hs-track reads it twice: landmarks first, then the crops).

    Image folders are read in natural name order (2.png before 10.png). ``fps`` keeps about that many frames
    per second of a video (every k-th frame); for a folder it is the rate to record (25 by default). A
    video's display rotation (the container's display matrix, which phones write instead of turning the
    pixels) is applied, to the nearest quarter turn, so the frames stand as a player shows them."""

    def __init__(self, source: Path, fps: Optional[float] = None, max_frames: Optional[int] = None) -> None:
        self.source = Path(source)
        self.max_frames = max_frames
        self.rotation = 0
        self.files: Optional[list[Path]] = None
        if not self.source.exists():
            raise DataError(f"{self.source}: no such file or folder")
        if self.source.is_dir():
            self.files = sorted((p for p in self.source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
            if not self.files:
                raise DataError(f"{self.source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            self.files = self.files[:max_frames]
            self.fps, self.step = float(fps or 25.0), 1
            return
        import av

        try:
            container = av.open(str(self.source))
        except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.source}: not a video PyAV can read ({type(exc).__name__})") from None
        with container:
            if not container.streams.video:
                raise DataError(f"{self.source}: has no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 25.0)
            declared = int(stream.frames or 0)
        self.step = max(1, round(rate / fps)) if fps else 1
        self.fps = rate / self.step
        self._declared = -(-declared // self.step) if declared > 0 else None

    @property
    def count_hint(self) -> Optional[int]:
        """How many frames a pass yields: exact for a folder, the container's declared count for a video
        (None where it declares none)."""
        if self.files is not None:
            return len(self.files)
        if self._declared is None:
            return self.max_frames
        return min(self._declared, self.max_frames) if self.max_frames else self._declared

    def frames(self) -> Iterator[np.ndarray]:
        """RGB uint8 [H, W, 3] frames, all one size (one-line :class:`DataError` otherwise)."""
        if self.files is not None:
            first = None
            for path in self.files:
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise DataError(f"{path}: not a readable image")
                if first is None:
                    first = bgr.shape
                elif bgr.shape != first:
                    raise DataError(f"{path}: {bgr.shape[1]}x{bgr.shape[0]} px, but the first image is "
                                    f"{first[1]}x{first[0]}: every frame must have one size")  # fmt: skip
                yield bgr[:, :, ::-1].copy()
            return
        import av

        kept = 0
        with av.open(str(self.source)) as container:
            stream = container.streams.video[0]
            turns = 0
            try:
                for i, frame in enumerate(container.decode(stream)):
                    if i == 0:  # PyAV: counter-clockwise degrees of the display matrix; -90 = a quarter turn clockwise
                        turns = round(float(getattr(frame, "rotation", 0) or 0) / 90.0) % 4
                        self.rotation = (-90 * turns) % 360
                    if i % self.step == 0:
                        rgb = frame.to_ndarray(format="rgb24")
                        yield np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
                        kept += 1
                    if self.max_frames and kept >= self.max_frames:
                        break
            except av.error.FFmpegError as exc:
                raise DataError(f"{self.source}: decoding failed after {kept} frames ({exc})") from None
        if kept == 0:
            raise DataError(f"{self.source}: the video has no frames")


def read_clip(source: Path, fps: Optional[float] = None, max_frames: Optional[int] = None) -> Clip:
    """Every frame of a (short) clip in memory; see :class:`ClipReader`."""
    reader = ClipReader(source, fps=fps, max_frames=max_frames)
    frames = list(reader.frames())
    return Clip(frames, reader.fps, reader.source, rotation=reader.rotation)


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
