"""Reader of the INSTA layout (Zielonka et al. 2023), as INSTA's ``scripts/transforms.py`` writes
it from metrical-tracker's output.

A subject folder holds ``transforms.json`` (every frame) and ``transforms_{train,val,test}.json``
(train: all but the last ``-t`` frames; test: the last ``-t``; val: the last 20), with per
frame ``images/{id}.png``, ``meshes/{id}.obj``, ``flame/exp/{id}.txt``, ``depth/{id}.png`` and
``seg_mask/{id}.png``; ``{id}`` is the 5-digit, 0-based frame number. Conventions (read by
INSTA-pytorch's ``provider.py``; see :func:`insta_camera`):

- ``transform_matrix`` is the inverse of metrical-tracker's OpenCV world-to-camera: an OpenCV
  camera-to-world (x right, y down, z forward) in FLAME metres. metrical-tracker's FLAME has
  no global rotation, so the head pose lives in the camera (head folded).
- ``fl_x, fl_y, cx, cy, w, h`` are pixels, written as floats; INSTA samples pixel centres
  (+0.5), as nerfstudio does.
- ``flame/exp/{id}.txt``: the 100 expression coefficients, one per line. That is the only
  FLAME parameter written: no jaw, eyes, neck or shape. headstudio recovers those from the
  tracked meshes (:mod:`headstudio.data.formats.recover`).
- ``depth``: uint16 millimetres of the rendered FLAME mesh (``integer_depth_scale`` 0.001).
- Masks: the image's alpha (the matte INSTA's ``postprocess.py`` writes); nerfstudio cannot
  read the 3-channel ``seg_mask`` as a mask, so a one-channel copy is derived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from headstudio.data.errors import Problems
from headstudio.data.formats.common import (
    CACHE_DIR,
    POSE_DIM,
    FrameInfo,
    VideoSubject,
    _check_frames,
    _check_image,
    _frames,
    _load_json,
    _validated,
    _vector,
)
from headstudio.flame.constants import WORLD_SCALE

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Flips camera y and z: OpenCV camera axes <-> OpenGL camera axes (its own inverse)."""
INSTA_VAL_FRAMES = 20
"""INSTA's ``transforms_val.json``: the last 20 frames (part of the test frames)."""


def insta_camera(transform_matrix: np.ndarray) -> np.ndarray:
    """INSTA ``transform_matrix`` (OpenCV camera-to-world, FLAME metres) -> our OpenGL c2w (FLAME x 4)."""
    c2w = np.array(transform_matrix, dtype=np.float64) @ GL_FROM_CV
    c2w[:3, 3] *= WORLD_SCALE
    return c2w


def read_txt_vector(path: Path, problems: Problems, frame: int, name: str, length: Optional[int] = None) -> Optional[np.ndarray]:
    """A whitespace-separated numeric text file (``np.savetxt``, one or many values per line)."""
    if not path.exists():
        problems.add(path, f"{name} file not found", frame)
        return None
    try:
        arr = np.atleast_1d(np.loadtxt(path, dtype=np.float64)).reshape(-1)
    except ValueError as exc:
        problems.add(path, f"not a list of numbers ({exc})", frame, name)
        return None
    return _validated(arr, problems, path, frame, name, length)


def read_insta(root: Path, problems: Problems) -> VideoSubject:
    """INSTA: ``transforms{,_train,_val,_test}.json`` with per-frame expression files and meshes."""
    frames: list[FrameInfo] = []
    source: dict[int, Path] = {}
    splits: dict[str, list[int]] = {}
    seen: dict[Path, int] = {}
    split_files = {s: root / f"transforms_{s}.json" for s in ("train", "test", "val")}
    rule = "the layout's transforms_{train,val,test}.json"
    if not any(p.exists() for p in split_files.values()):
        split_files = {"all": root / "transforms.json"}
        rule = f"transforms.json only: train all but the last {INSTA_VAL_FRAMES}, test and val the last {INSTA_VAL_FRAMES}"
    for split, jf in split_files.items():
        if not jf.exists():
            continue
        doc = _load_json(jf, problems)
        if doc is None:
            continue
        try:
            intr = np.array([float(doc[k]) for k in ("fl_x", "fl_y", "cx", "cy")])
        except (KeyError, TypeError, ValueError):
            problems.add(jf, "missing or not a number: one of fl_x, fl_y, cx, cy", None, "intrinsics")
            continue
        declared = (doc.get("w"), doc.get("h"))
        splits[split] = []
        for i, fr in _frames(doc, jf, problems):
            image = root / str(fr["file_path"])
            if image in seen:  # val frames are also test frames
                splits[split].append(seen[image])
                continue
            stem = image.stem
            c2w = _vector(fr, "transform_matrix", problems, jf, i, shape=(4, 4))
            expr = read_txt_vector(root / str(fr.get("exp_path", f"flame/exp/{stem}.txt")), problems, i, "expression")
            mesh = root / str(fr.get("mesh_path", f"meshes/{stem}.obj"))
            if not mesh.exists():
                problems.add(mesh, "tracked mesh not found: headstudio recovers jaw, eyes, neck and shape from it", i)
            size = _check_image(image, problems, i, "image", jf)
            seg = root / str(fr["seg_mask_path"]) if "seg_mask_path" in fr else None
            depth = root / str(fr["depth_path"]) if "depth_path" in fr else None
            if c2w is None or expr is None or size is None:
                continue
            if all(v is not None for v in declared) and (int(float(declared[0])), int(float(declared[1]))) != size:
                problems.add(image, f"image is {size[0]}x{size[1]} but {jf.name} declares w={declared[0]}, h={declared[1]}", i)
                continue
            mask = root / CACHE_DIR / "masks" / "images" / f"{stem}.png"
            idx = seen[image] = len(frames)
            frames.append(
                FrameInfo(
                    image, split, i, insta_camera(c2w), intr.copy(), expr, np.zeros(POSE_DIM), mask=mask,
                    depth=depth if depth is not None and depth.exists() else None, size=size, mesh=mesh,
                    mask_recipe=("alpha", image, seg),
                )  # fmt: skip
            )
            source[idx] = jf
            splits[split].append(idx)
    if "all" in splits:
        every = splits.pop("all")
        k = max(1, min(INSTA_VAL_FRAMES, len(every) // 2))
        splits = {"train": every[:-k], "val": every[-k:], "test": every[-k:]}
        for n, i in enumerate(every):
            frames[i].sequence = "train" if n < len(every) - k else "test"
    _check_frames(frames, splits, problems, source)
    subject = VideoSubject(root, "insta", frames, splits, np.zeros(0), head_folded=True, depth_to_world=WORLD_SCALE / 1000.0)
    subject.recover = "pose"
    subject.split_rule = rule
    subject.notes.append("jaw, eyes, neck and shape: recovered from meshes/{id}.obj (INSTA writes only flame/exp)")
    subject.notes.append("masks: the alpha of images/{id}.png (else seg_mask), as one-channel copies")
    return subject
