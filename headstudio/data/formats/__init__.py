"""Readers of FLAME-tracked video layouts (IMavatar, NerFace, INSTA) and Kinect sequences.

Each reader turns a subject folder into a :class:`VideoSubject`: per-frame camera (OpenGL
camera-to-world in headstudio's world units), intrinsics, FLAME expression and pose, 2D
landmarks and bbox in pixels, image / mask / depth paths. Readers never stop at the first
problem: they collect every one in a :class:`~headstudio.data.errors.Problems`, so
``hs-check-data`` can list them all; the dataparser raises the first.

World units: FLAME coordinates x 4 (IMavatar's convention; a head spans about one unit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from headstudio.data.errors import DataError, Problems
from headstudio.data.formats.common import LAYOUTS, POSE_DIM, FrameInfo, VideoSubject, detect_layout
from headstudio.data.formats.imavatar import read_imavatar
from headstudio.data.formats.insta import read_insta
from headstudio.data.formats.kinect import GL_FROM_CV, read_kinect
from headstudio.data.formats.nerface import read_nerface

__all__ = [
    "GL_FROM_CV",
    "LAYOUTS",
    "POSE_DIM",
    "FrameInfo",
    "VideoSubject",
    "detect_layout",
    "read_imavatar",
    "read_insta",
    "read_kinect",
    "read_nerface",
    "read_subject",
]


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
