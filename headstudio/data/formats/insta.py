"""Reader of the INSTA layout (Zielonka et al. 2023).

A subject folder holds ``transforms.json`` or ``transforms_{train,val,test}.json`` with
pixel intrinsics (``fl_x``, ``fl_y``, ``cx``, ``cy``) and head-pose-folded cameras, plus
per-frame FLAME parameters in text files (``flame/exp``, ``flame/jaw``, ``flame/eyes``, or
the ``flame_pose_path`` that hs-synth writes), optional segmentation masks and depth maps
in millimetres.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from headstudio.data.errors import Problems
from headstudio.data.formats.common import (
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
