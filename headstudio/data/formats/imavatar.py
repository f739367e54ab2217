"""Reader of the IMavatar layout (Zheng et al. 2022), as IMavatar's DECA-based preprocessing writes it.

A subject is one or more sequence folders, each with a ``flame_params.json`` (FLAME shape,
normalised intrinsics, and per frame a world-to-camera ``world_mat``, expression, pose,
keypoints and bbox), an ``image/`` and a ``mask/`` folder. IMavatar nests them as
``<subject>/<subject>/<sequence>/``; ``--data`` may name the outer or the inner folder (or a
single sequence). Training frames are every frame of the training sequences; test and val
frames are every ``test_every``-th frame of the held-out sequences.

Conventions, as IMavatar's ``preprocess/DECA/optimize.py`` writes them and its
``real_dataset.py`` / ``rend_util.py`` read them (see :func:`imavatar_camera`):

- ``world_mat`` is ``[R|t]`` world-to-camera with OpenGL axes, in FLAME x 4 (our world units).
- ``intrinsics`` = ``[-fx/size, fy/size, cx/size, cy/size]`` of the square crop; the "old
  format" (``cy > 1``) stores pixels of a 512-px image.
- Pixels are sampled at integer positions (no +0.5): principal point and keypoints move by
  half a pixel into nerfstudio's convention.
- ``flame_keypoints``: 68 or 70 points (``landmark_embedding_with_eyes.npy``: 17 contour, 51
  inner, 2 iris) in [-1, 1], x right, y down. Rows 68-69 (the irises) are kept.
- ``mask/``: grey levels, foreground above 127.5 (one-channel thresholded copies are derived).
- ``pose``: 15 axis-angle values, global / neck / jaw / eyes. DECA's head rotation starts
  in the neck slot, so real data carries head rotation in both global and neck; the neck
  is kept as an articulation (IMavatar's reason for its "ghost bone").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headstudio.data.errors import Problems
from headstudio.data.formats.common import (
    CACHE_DIR,
    HALF_PIXEL,
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

RELEASED_TEST_SEQUENCES = {
    "MVI_1812": "IMavatar's and PointAvatar's subject1 configs (train MVI_1810, MVI_1814; test MVI_1812)",
    "MVI_1802": "PointAvatar's subject2 (marcel) config (train MVI_1797, MVI_1801; test MVI_1802)",
}
"""Test sequences of the released IMavatar / PointAvatar configs, by sequence name."""


def imavatar_sequences(root: Path) -> tuple[list[Path], str]:
    """Sequence folders of an IMavatar subject and where they were found.

    Accepts a sequence folder, the inner ``<subject>/<subject>`` folder, or the outer
    ``<subject>`` folder that holds it.
    """
    if (root / "flame_params.json").exists():
        return [root], "the folder itself is one sequence"
    inner = sorted(p.parent for p in root.glob("*/flame_params.json"))
    if inner:
        return inner, f"sequences in {root}"
    nested = sorted(p.parent for p in root.glob("*/*/flame_params.json"))
    holders = sorted({p.parent for p in nested})
    if len(holders) == 1:
        return nested, f"sequences in the nested {holders[0]} (IMavatar's <subject>/<subject>/ layout)"
    return [], ""


def default_test_sequences(names: list[str]) -> tuple[set[str], str]:
    """IMavatar's released test sequence when the names are theirs, else ``test``, else the last."""
    released = [n for n in names if n in RELEASED_TEST_SEQUENCES]
    if released and len(names) > 1:
        return set(released), f"test {', '.join(released)} as in {RELEASED_TEST_SEQUENCES[released[0]]}"
    if "test" in names:
        return {"test"}, "test: the sequence named 'test'"
    if len(names) > 1:
        return {names[-1]}, f"test {names[-1]}: the last sequence (pass --test-sequences to choose)"
    return set(), "a single sequence: no test frames (pass a subject with several sequences)"


def imavatar_camera(world_mat: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """IMavatar ``world_mat`` (3x4 world-to-camera, OpenGL) and ``intrinsics`` -> our c2w and K.

    Returns the OpenGL camera-to-world (world units: FLAME x 4, as IMavatar's) and
    ``(fx, fy, cx, cy)`` in pixels of the image as it is on disk, with nerfstudio's pixel
    centres. IMavatar's fx is stored negative and used with a sign flip in its ray lift, so
    the camera itself is a plain OpenGL one with focal ``|fx|``.
    """
    w, h = size
    old_format = intrinsics[3] > 1.0  # IMavatar's test: values are pixels of a 512-px image
    scale = (w / 512.0, h / 512.0) if old_format else (float(w), float(h))
    K = np.array([
        abs(intrinsics[0]) * scale[0],
        intrinsics[1] * scale[1],
        intrinsics[2] * scale[0] + HALF_PIXEL,
        intrinsics[3] * scale[1] + HALF_PIXEL,
    ])  # fmt: skip
    w2c = np.eye(4)
    w2c[:3] = world_mat
    return np.linalg.inv(w2c), K


def imavatar_points(normalised: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """IMavatar keypoints / bbox corners in [-1, 1] (``pixel / size * 2 - 1``) -> our pixels."""
    w, h = size
    wh = np.tile(np.array([w, h], dtype=np.float64), normalised.shape[-1] // 2)
    return (normalised + 1.0) * 0.5 * wh + HALF_PIXEL


def to_imavatar_points(px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Our pixels -> IMavatar's [-1, 1] keypoints (the inverse of :func:`imavatar_points`)."""
    return 2.0 * (np.asarray(px, dtype=np.float64) - HALF_PIXEL) / np.asarray(size, dtype=np.float64) - 1.0


def imavatar_intrinsics(fx: float, fy: float, cx: float, cy: float, size: tuple[int, int]) -> list:
    """IMavatar's ``intrinsics`` of a camera in our pixels (the inverse of :func:`imavatar_camera`'s K)."""
    w, h = size
    return _round([-fx / w, fy / h, (cx - HALF_PIXEL) / w, (cy - HALF_PIXEL) / h])


def imavatar_frame(
    stem: str, world_mat: np.ndarray, expression: np.ndarray, pose: np.ndarray, keypoints_px: np.ndarray,
    box_px: np.ndarray, size: tuple[int, int],
) -> dict:  # fmt: skip
    """One ``frames[]`` entry as IMavatar's DECA-based preprocessing writes it: ``keypoints_px`` (68 or 70,
    our pixels) become ``flame_keypoints``, the extent of ``box_px[:68]`` the ``bbox``."""
    lo, hi = np.asarray(box_px)[:68].min(0), np.asarray(box_px)[:68].max(0)
    return {
        "file_path": f"./image/{stem}",
        "world_mat": _round(world_mat),
        "expression": _round(expression),
        "pose": _round(pose),
        "bbox": _round(np.concatenate([to_imavatar_points(lo, size), to_imavatar_points(hi, size)])),
        "flame_keypoints": _round(to_imavatar_points(keypoints_px, size)),
    }


def _round(a, nd: int = 6) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def read_imavatar(root: Path, problems: Problems, test_sequences: tuple[str, ...] = (), test_every: int = 10) -> VideoSubject:
    """IMavatar: sequence folders with ``flame_params.json``, ``image/``, ``mask/``."""
    seq_dirs, found = imavatar_sequences(root)
    if not seq_dirs:
        problems.add(root, "no flame_params.json in the folder, its sub-folders or one nested <subject>/<sequence>/ level")
    names = [d.name if d != root else "all" for d in seq_dirs]
    if test_sequences:
        tests, rule = set(test_sequences), f"test {', '.join(test_sequences)} (--test-sequences)"
    else:
        tests, rule = default_test_sequences(names)
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
            size = _check_image(image, problems, i, "image", jf)
            # IMavatar's reader: the mask path is the image path with 'image' replaced by 'mask'.
            given = seq_dir / "mask" / image.relative_to(seq_dir / "image") if image.is_relative_to(seq_dir / "image") else seq_dir / "mask" / image.name
            _check_image(given, problems, i, "mask", jf)
            mask = seq_dir / CACHE_DIR / "masks" / given.name  # thresholded at 127.5 as IMavatar's reader does
            if wm is None or expr is None or pose is None or intr is None or size is None:
                continue
            c2w, K = imavatar_camera(wm, intr, size)
            lm = None
            if "flame_keypoints" in fr:
                kp = _vector(fr, "flame_keypoints", problems, jf, i)
                if kp is not None:
                    if kp.ndim != 2 or kp.shape not in ((68, 2), (70, 2)):
                        problems.add(jf, f"has shape {kp.shape}, expected (68, 2) or (70, 2) (68 + 2 iris)", i, "flame_keypoints")
                    else:
                        lm = imavatar_points(kp, size)
            bbox = None
            if "bbox" in fr:
                b = _vector(fr, "bbox", problems, jf, i, length=4)
                if b is not None:
                    bbox = imavatar_points(b, size)
            idx = len(frames)
            frames.append(
                FrameInfo(
                    image, name, i, c2w, K, expr, pose, mask=mask, landmarks=lm, bbox=bbox, size=size,
                    mask_recipe=("threshold", given),
                )  # fmt: skip
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
    subject = VideoSubject(root, "imavatar", frames, splits, shape, head_folded=False)
    subject.split_rule = f"{found}; train: the others; {rule}; every {test_every}-th test frame"
    return subject
