"""Reader of the NerFace layout (Gafni et al. 2021).

A subject folder holds ``transforms_{train,val,test}.json`` with per-frame camera-to-world
matrices that already have the rigid head pose folded in, and the images (and optional
masks) they name. FLAME parameters come from the ``flame_expression`` / ``flame_pose``
fields that hs-synth writes, else NerFace's own expression vector is passed on with a
zero pose.
"""

from __future__ import annotations

import math
from pathlib import Path

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
    _vector,
)


def read_nerface(root: Path, problems: Problems) -> VideoSubject:
    """NerFace: ``transforms_{train,val,test}.json``; cameras already have the head pose folded in.

    FLAME parameters come from ``flame_expression`` / ``flame_pose`` when present (written by
    hs-synth); otherwise NerFace's own 76-d ``expression`` is passed on with a zero pose.
    """
    frames: list[FrameInfo] = []
    source: dict[int, Path] = {}
    splits: dict[str, list[int]] = {}
    shape = np.zeros(0)
    seen: dict[Path, int] = {}
    for split in ("train", "test", "val"):
        jf = root / f"transforms_{split}.json"
        if not jf.exists():
            if split == "train":
                problems.add(jf, "file not found")
            continue
        doc = _load_json(jf, problems)
        if doc is None:
            continue
        if "shape_params" in doc and shape.size == 0:
            s = _vector(doc, "shape_params", problems, jf, None)
            shape = s if s is not None else shape
        splits[split] = []
        for i, fr in _frames(doc, jf, problems):
            rel = str(fr["file_path"])
            image = root / (rel if rel.endswith(".png") else rel + ".png")
            if image in seen:  # the same frame listed in two splits (val is often part of test)
                splits[split].append(seen[image])
                continue
            c2w = _vector(fr, "transform_matrix", problems, jf, i, shape=(4, 4))
            key = "flame_expression" if "flame_expression" in fr else "expression"
            expr = _vector(fr, key, problems, jf, i)
            pose = _vector(fr, "flame_pose", problems, jf, i, length=POSE_DIM) if "flame_pose" in fr else np.zeros(POSE_DIM)
            size = _check_image(image, problems, i, "image", jf)
            mask = root / "mask" / Path(rel).parent / (Path(rel).stem + ".png")
            has_mask = mask.exists() or (root / "mask").is_dir()
            if has_mask:
                _check_image(mask, problems, i, "mask", jf)
            if c2w is None or expr is None or pose is None or size is None:
                continue
            w, h = size
            if "intrinsics" in doc:
                intr = _vector(doc, "intrinsics", problems, jf, None, length=4)
                if intr is None:
                    continue
                K = np.array([intr[0], intr[1], intr[2] * w, intr[3] * h])
            elif "camera_angle_x" in doc:
                f = 0.5 * w / math.tan(0.5 * float(doc["camera_angle_x"]))
                K = np.array([f, f, w / 2, h / 2])
            else:
                problems.add(jf, "missing (and no camera_angle_x)", None, "intrinsics")
                continue
            lm = None
            if "flame_keypoints_px" in fr:
                lm = _vector(fr, "flame_keypoints_px", problems, jf, i)
            bbox = None
            if "bbox" in fr:
                b = _vector(fr, "bbox", problems, jf, i, length=4)
                if b is not None:
                    bbox = (b + 1.0) * 0.5 * np.array([w, h, w, h]) if np.abs(b).max() <= 1.0 else b
            idx = seen[image] = len(frames)
            frames.append(FrameInfo(image, split, i, c2w, K, expr, pose, mask=mask if has_mask else None, landmarks=lm, bbox=bbox, size=size))
            source[idx] = jf
            splits[split].append(idx)
    _check_frames(frames, splits, problems, source)
    return VideoSubject(root, "nerface", frames, splits, shape, head_folded=True)
