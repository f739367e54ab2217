"""Readers of FLAME-tracked video layouts (IMavatar, NerFace, INSTA) and Kinect sequences.

Each reader turns a subject folder into a :class:`VideoSubject`: per-frame camera (OpenGL
camera-to-world in headstudio's world units), intrinsics, FLAME expression and pose, 2D
landmarks and bbox in pixels, image / mask / depth paths. Readers never stop at the first
problem: they collect every one in a :class:`~headstudio.data.errors.Problems`, so
``hs-check-data`` can list them all; the dataparser raises the first.

World units: FLAME coordinates x 4 (IMavatar's convention; a head spans about one unit).
Each layout module holds the one function that converts its cameras into that world
(:func:`imavatar_camera`, :func:`nerface_camera`, :func:`insta_camera`, :func:`mononphm_camera`);
pixel coordinates follow nerfstudio's convention (pixel (i, j) sampled at (i + 0.5, j + 0.5)).
What a layout lacks is made once by :func:`complete_subject`: one-channel masks
(:mod:`~headstudio.data.formats.masks`) and FLAME parameters recovered from tracked meshes
(:mod:`~headstudio.data.formats.recover`), both cached in ``<subject>/.headstudio/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from headstudio.data.errors import DataError, Problems
from headstudio.data.formats.common import LAYOUTS, POSE_DIM, FrameInfo, VideoSubject, detect_layout
from headstudio.data.formats.imavatar import imavatar_camera, read_imavatar
from headstudio.data.formats.insta import GL_FROM_CV, insta_camera, read_insta
from headstudio.data.formats.kinect import mononphm_camera, read_kinect
from headstudio.data.formats.masks import derive_masks
from headstudio.data.formats.nerface import nerface_camera, read_nerface
from headstudio.data.formats.recover import Recovery, recover_flame_parameters

__all__ = [
    "GL_FROM_CV",
    "LAYOUTS",
    "POSE_DIM",
    "FrameInfo",
    "Recovery",
    "VideoSubject",
    "complete_subject",
    "derive_masks",
    "detect_layout",
    "imavatar_camera",
    "insta_camera",
    "mononphm_camera",
    "nerface_camera",
    "recover_flame_parameters",
    "read_imavatar",
    "read_insta",
    "read_kinect",
    "read_nerface",
    "read_subject",
]


def read_subject(
    root: Path,
    layout: str = "auto",
    problems: Optional[Problems] = None,
    test_sequences: tuple[str, ...] = (),
    test_every: int = 10,
    nerface_camera_depth: float = 1.0,
    kinect_intrinsics: Optional[Path] = None,
) -> tuple[VideoSubject, Problems]:
    """Read any supported layout; returns the subject and every problem found.

    Nothing is written: masks and recovered parameters come from :func:`complete_subject`.
    """
    problems = problems if problems is not None else Problems()
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DataError(f"{root}: unknown format '{layout}': choose one of {', '.join(LAYOUTS)}")
    if layout == "imavatar":
        subject = read_imavatar(root, problems, test_sequences, test_every)
    elif layout == "nerface":
        subject = read_nerface(root, problems, nerface_camera_depth)
    elif layout == "insta":
        subject = read_insta(root, problems)
    else:
        subject = read_kinect(root, problems, test_sequences, test_every, kinect_intrinsics)
    if not subject.frames and not problems.items:
        problems.add(root, "no frames")
    return subject, problems


def complete_subject(
    subject: VideoSubject,
    problems: Problems,
    flame_path: Optional[Path],
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> tuple[int, Optional[Recovery]]:
    """Derive missing masks and recover missing FLAME parameters (both cached in the subject).

    Returns how many masks were written and the recovery report (None when the layout
    needs none). Without a FLAME file, recovery is recorded as a problem.
    """
    step = (lambda what: (lambda done, total: progress(what, done, total))) if progress else (lambda what: None)  # noqa: E731
    written = derive_masks(subject, problems, step("deriving masks"))
    recovery = None
    if subject.recover is not None:
        if flame_path is None:
            problems.add(subject.root, f"needs a FLAME model to recover {subject.recover} from the tracked meshes (--flame-path or $HEADSTUDIO_FLAME)")
        else:
            try:
                recovery = recover_flame_parameters(subject, flame_path, step("fitting FLAME to the tracked meshes"))
            except (DataError, ValueError) as exc:
                problems.add(subject.root, f"cannot recover the FLAME parameters: {exc}")
    return written, recovery
