"""Writing videos atomically: MP4 through mediapy (ffmpeg) or PyAV, GIF through Pillow.

mediapy, as nerfstudio's ``ns-render``, needs an ``ffmpeg`` executable; where there is none (a bare
machine: ``apt-get install ffmpeg``), PyAV, installed with nerfstudio, encodes the same H.264 MP4 with
its bundled libav. Frames are written to a temporary file beside the target, then renamed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from headstudio.utils.atomic import atomic_path


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 with 4:2:0 chroma needs even sizes: drop a last odd row / column."""
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    return frames[:, :h, :w]


def write_video(path: Path | str, frames: Sequence[np.ndarray] | np.ndarray, fps: float) -> str:
    """Write RGB uint8 frames [T, H, W, 3] to ``path`` (.mp4 or .gif); returns the writer used."""
    path = Path(path)
    video = np.ascontiguousarray(np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames)
    if video.dtype != np.uint8:
        video = (np.clip(video, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if video.ndim != 4 or video.shape[-1] != 3 or len(video) == 0:
        raise ValueError(f"{path}: expected RGB frames [T, H, W, 3], got shape {video.shape}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        with atomic_path(path) as tmp:
            images = [Image.fromarray(f) for f in video]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return "pillow"
    if suffix != ".mp4":
        raise ValueError(f"{path}: write .mp4 or .gif")
    video = _even(video)
    with atomic_path(path) as tmp:
        mp4 = tmp.with_suffix(".mp4")  # both writers choose the container from the suffix
        try:
            if shutil.which("ffmpeg"):
                import mediapy

                mediapy.write_video(mp4, video, fps=fps)
                writer = "mediapy"
            else:
                _write_pyav(mp4, video, fps)
                writer = "pyav"
            mp4.replace(tmp)
        finally:
            mp4.unlink(missing_ok=True)
    return writer


def _write_pyav(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """H.264 MP4 of RGB uint8 frames, encoded as they come (one frame in memory at a time); returns the count.
    An odd last row / column is dropped (4:2:0 chroma)."""
    import av
    from fractions import Fraction

    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            if count == 0:
                stream.width, stream.height = int(frame.shape[1]) // 2 * 2, int(frame.shape[0]) // 2 * 2
            frame = np.ascontiguousarray(frame[: stream.height, : stream.width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def write_video_stream(path: Path | str, frames: Iterable[np.ndarray], fps: float) -> int:
    """Write RGB uint8 frames from an iterator to an MP4 (PyAV), one at a time, atomically: for videos too
    long to hold in memory. Returns the number of frames."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"{path}: write_video_stream writes .mp4")
    with atomic_path(path) as tmp:
        mp4 = tmp.with_suffix(".mp4")
        try:
            count = _write_pyav(mp4, frames, fps)
            if count == 0:
                raise ValueError(f"{path}: no frames to write")
            mp4.replace(tmp)
        finally:
            mp4.unlink(missing_ok=True)
    return count


def read_video(path: Path | str) -> np.ndarray:
    """Frames of a video file as RGB uint8 [T, H, W, 3] (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
