"""Reader of the IMavatar layout (Zheng et al. 2022).

A subject is one or more sequence folders, each with a ``flame_params.json`` (FLAME shape,
intrinsics, and per frame a world-to-camera ``world_mat``, expression, pose, keypoints and
bbox), an ``image/`` and a ``mask/`` folder. Training frames are every frame of the
training sequences; test and val frames are every ``test_every``-th frame of the held-out
sequences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headstudio.data.errors import Problems
from headstudio.data.formats.common import (
    POSE_DIM,
    FrameInfo,
    VideoSubject,
    _check_expression_lengths,
    _check_image,
    _check_sizes,
    _frames,
    _load_json,
    _vector,
)


def _imavatar_sequences(root: Path) -> list[Path]:
    if (root / "flame_params.json").exists():
        return [root]
    return sorted(p.parent for p in root.glob("*/flame_params.json"))


def read_imavatar(root: Path, problems: Problems, test_sequences: tuple[str, ...] = (), test_every: int = 10) -> VideoSubject:
    """IMavatar: one or more sequence folders with ``flame_params.json``, ``image/``, ``mask/``.

    ``world_mat`` is world-to-camera with OpenGL axes; FLAME is already x 4 in that world.
    Train: every frame of the training sequences. Test (and val): every ``test_every``-th
    frame of the test sequences (default: a sequence named ``test``, else the last one).
    """
    seq_dirs = _imavatar_sequences(root)
    if not seq_dirs:
        problems.add(root, "no flame_params.json in the folder or its sub-folders")
    names = [d.name if d != root else "all" for d in seq_dirs]
    tests = set(test_sequences) if test_sequences else ({"test"} if "test" in names else ({names[-1]} if len(names) > 1 else set()))
    # Training sequences first, so frame indices do not depend on the held-out sequences.
    order = sorted(range(len(names)), key=lambda k: names[k] in tests)
    seq_dirs, names = [seq_dirs[k] for k in order], [names[k] for k in order]
    unknown = set(test_sequences) - set(names)
    if unknown:
        problems.add(root, f"--test-sequences names {sorted(unknown)}, not among the sequences {names}")
    frames: list[FrameInfo] = []
    source: dict[int, Path] = {}
    splits: dict[str, list[int]] = {"train": [], "test": []}
    shape = np.zeros(0)
    for seq_dir, name in zip(seq_dirs, names):
        jf = seq_dir / "flame_params.json"
        doc = _load_json(jf, problems)
        if doc is None:
            continue
        s = _vector(doc, "shape_params", problems, jf, None)
        if s is not None and shape.size == 0:
            shape = s
        intr = _vector(doc, "intrinsics", problems, jf, None, length=4)
        for i, fr in _frames(doc, jf, problems):
            rel = str(fr["file_path"])
            image = (seq_dir / rel).with_suffix(".png") if not rel.endswith(".png") else seq_dir / rel
            wm = _vector(fr, "world_mat", problems, jf, i, shape=(3, 4))
            expr = _vector(fr, "expression", problems, jf, i)
            pose = _vector(fr, "pose", problems, jf, i, length=POSE_DIM)
            kp = fr.get("flame_keypoints")
            size = _check_image(image, problems, i, "image", jf)
            mask = seq_dir / "mask" / image.name
            _check_image(mask, problems, i, "mask", jf)
            if wm is None or expr is None or pose is None or intr is None or size is None:
                continue
            w, h = size
            # Normalised principal point is about 0.5; the old form stores pixels of a 512-px image.
            scale = (w / 512.0, h / 512.0) if np.abs(intr[2:]).max() > 1.0 else (w, h)
            K = np.array([-intr[0] * scale[0], intr[1] * scale[1], intr[2] * scale[0], intr[3] * scale[1]])
            w2c = np.eye(4)
            w2c[:3] = wm
            lm = None
            if kp is not None:
                kp_arr = _vector(fr, "flame_keypoints", problems, jf, i)
                if kp_arr is not None and kp_arr.ndim == 2 and kp_arr.shape[1] == 2:
                    lm = (kp_arr + 1.0) * 0.5 * np.array([w, h])
            bbox = None
            if "bbox" in fr:
                b = _vector(fr, "bbox", problems, jf, i, length=4)
                if b is not None:
                    bbox = (b + 1.0) * 0.5 * np.array([w, h, w, h])
            idx = len(frames)
            frames.append(
                FrameInfo(image, name, i, np.linalg.inv(w2c), K, expr, pose, mask=mask, landmarks=lm, bbox=bbox, size=size)
            )
            source[idx] = jf
            if name in tests:
                if i % test_every == 0:
                    splits["test"].append(idx)
            else:
                splits["train"].append(idx)
    if shape.size == 0 and seq_dirs:
        problems.add(seq_dirs[0] / "flame_params.json", "missing", None, "shape_params")
    _check_sizes(frames, problems)
    _check_expression_lengths(frames, problems, source)
    if frames and not splits["train"]:
        problems.add(root, "no training frames: every sequence is a test sequence")
    splits["val"] = list(splits["test"])
    return VideoSubject(root, "imavatar", frames, splits, shape, head_folded=False)
