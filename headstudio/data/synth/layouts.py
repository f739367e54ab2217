"""Writers for the subject folder layouts, in the conventions of the tools that make them:
IMavatar's preprocessing, NerFace's ``real_to_nerf.py``, INSTA's ``transforms.py`` (from
metrical-tracker) and MonoNPHM's preprocessing (metrical-tracker checkpoints, PIPNet, facer).
The readers in :mod:`headstudio.data.formats` document each convention; here they are written.

Every writer receives rendered frames one at a time and writes the per-frame files, then
the sequence's files at the end. Ground truth for measuring (depth, normals, labels, test
meshes, the FLAME parameters) goes to ``gt/<sequence>/`` with the same file stems as the
layout's images.

World frame: FLAME coordinates x 4 (a head spans about one unit), y up, the face looking
along +z. The camera is fixed on the +z axis looking at the origin; the head moves.
Rendered pixel (i, j) is sampled at (i + 0.5, j + 0.5); layouts with integer pixel centres
(IMavatar, NerFace, MonoNPHM's OpenCV calibration) get principal points and landmarks half a
pixel lower.
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from headstudio.data.formats.imavatar import imavatar_frame, imavatar_intrinsics
from headstudio.data.synth.render import Frame, PinholeCamera
from headstudio.flame.constants import WORLD_SCALE

GL_FROM_CV = np.diag([1.0, -1.0, -1.0])
GL_FROM_CV4 = np.diag([1.0, -1.0, -1.0, 1.0])
HALF = 0.5
"""Our pixel centres are at +0.5; integer-centre layouts store coordinates this much lower."""
NERFACE_UNITS = 1.0 / 8.0
"""NerFace units per world unit here: the synthetic camera is 1 m (4 world units) from the head and
NerFace scales the mean camera depth to 0.5."""
DEPTH_SCALE = 10000.0
"""GT depth PNGs store camera z in world units x 10000 (uint16)."""


@dataclass
class FrameRecord:
    """Everything a layout writer may need about one rendered frame."""

    index: int
    frame: Frame
    expression: np.ndarray  # (E,)
    pose: np.ndarray  # (15,)
    landmarks_px: np.ndarray  # (68, 2) pixel coordinates (x right, y down; centres at +0.5)
    iris_px: np.ndarray  # (2, 2) the irises (subject's right eye first), same convention
    head_transform: np.ndarray  # (4, 4) rigid head pose in world units (global joint)
    vertices_world: np.ndarray  # (V, 3)
    tracked_vertices_world: Optional[np.ndarray] = None
    """(V, 3) The mesh a FLAME tracker would report (with its errors), where it differs from the truth."""

    def vertices_head_metres(self, tracked: bool = False) -> np.ndarray:
        """The mesh in FLAME space without the rigid head pose, in metres (metrical-tracker's meshes);
        ``tracked``: the tracker's mesh where the subject simulates tracking errors."""
        verts = self.vertices_world if not tracked or self.tracked_vertices_world is None else self.tracked_vertices_world
        inv = np.linalg.inv(self.head_transform)
        return (verts @ inv[:3, :3].T + inv[:3, 3]) / WORLD_SCALE

    def head_folded_c2w(self, camera: "PinholeCamera") -> np.ndarray:
        """OpenGL camera-to-world in the head's frame (world units): the camera carries the head pose."""
        return np.linalg.inv(self.head_transform) @ _c2w_gl(camera)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"{path}: could not write PNG")


def _u8(img) -> np.ndarray:
    return (img.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def _bbox_norm(mask: np.ndarray) -> list[float]:
    """Mask bounding box [x0, y0, x1, y1] in [-1, 1] image coordinates."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [-1.0, -1.0, 1.0, 1.0]
    return [2 * xs.min() / w - 1, 2 * ys.min() / h - 1, 2 * (xs.max() + 1) / w - 1, 2 * (ys.max() + 1) / h - 1]


def _c2w_gl(camera: PinholeCamera) -> np.ndarray:
    """Camera-to-world in OpenGL axes (x right, y up, looking down -z)."""
    c2w = np.eye(4)
    c2w[:3, :3] = camera.R.T @ GL_FROM_CV
    c2w[:3, 3] = -camera.R.T @ camera.t
    return c2w


def _rounded(a: np.ndarray, nd: int = 6) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


class GroundTruthWriter:
    """gt/<seq>/{depth,normal,semantic}/<stem>.png, gt/<seq>/mesh/<stem>.ply (test frames) and
    gt/<seq>/flame.npz (stems, shape, expression, pose of every frame)."""

    def __init__(self, root: Path, faces: np.ndarray) -> None:
        self.root = root / "gt"
        self.faces = faces
        self.params: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}

    def finish(self, shape: np.ndarray) -> None:
        for seq, rows in self.params.items():
            np.savez(
                self.root / seq / "flame.npz", stem=np.array([r[0] for r in rows]), shape=shape,
                expression=np.stack([r[1] for r in rows]), pose=np.stack([r[2] for r in rows]),
            )  # fmt: skip

    def write(self, seq: str, stem: str, rec: FrameRecord, mesh: bool) -> None:
        self.params.setdefault(seq, []).append((stem, np.asarray(rec.expression), np.asarray(rec.pose)))
        f = rec.frame
        base = self.root / seq
        _write_png(base / "depth" / f"{stem}.png", np.round(f.depth.numpy() * DEPTH_SCALE).clip(0, 65535).astype(np.uint16))
        normal16 = np.round((f.normal.numpy() + 1.0) * 0.5 * 65535.0).clip(0, 65535).astype(np.uint16)
        normal16[~f.mask.numpy()] = 0
        _write_png(base / "normal" / f"{stem}.png", normal16)
        _write_png(base / "semantic" / f"{stem}.png", f.label.numpy().astype(np.uint8))
        if mesh:
            from headstudio.export.ply import write_ply

            (base / "mesh").mkdir(parents=True, exist_ok=True)
            write_ply(base / "mesh" / f"{stem}.ply", rec.vertices_world, self.faces)


class LayoutWriter(abc.ABC):
    """Base class: one subject folder, several sequences."""

    name = ""

    all_meshes = False
    """Ground-truth meshes of every sequence (else of the test sequence only)."""

    def __init__(self, root: Path, camera: PinholeCamera, shape: np.ndarray, faces: np.ndarray) -> None:
        self.root = root
        self.camera = camera
        self.shape = shape
        self.gt = GroundTruthWriter(root, faces)
        self.frames: dict[str, list[dict]] = {}

    @abc.abstractmethod
    def stem(self, seq: str, index: int) -> str:
        """File stem of frame ``index`` of sequence ``seq`` in this layout."""

    def write_frame(self, seq: str, rec: FrameRecord) -> None:
        stem = self.stem(seq, rec.index)
        self._write_frame(seq, stem, rec)
        self.gt.write(seq, stem, rec, mesh=(seq == "test" or self.all_meshes))

    @abc.abstractmethod
    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        """Write the layout's own per-frame files."""

    def finish(self) -> None:
        """Write the per-sequence files once every frame is written."""
        self._finish()
        self.gt.finish(self.shape)

    @abc.abstractmethod
    def _finish(self) -> None:
        """The layout's own per-sequence files."""


class IMavatarWriter(LayoutWriter):
    """``<name>/<seq>/flame_params.json``, ``image/<n>.png``, ``mask/<n>.png`` (n from 1), nested as
    IMavatar's ``<subject>/<subject>/<sequence>/``; 70 keypoints (68 + 2 iris), integer pixel centres."""

    name = "imavatar"

    def __init__(self, *args, subject_name: str = "subject", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inner = self.root / subject_name

    def stem(self, seq: str, index: int) -> str:
        return str(index + 1)

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        d = self.inner / seq
        _write_png(d / "image" / f"{stem}.png", _u8(rec.frame.rgb))
        _write_png(d / "mask" / f"{stem}.png", rec.frame.mask.numpy().astype(np.uint8) * 255)
        cam = self.camera
        w2c_gl = GL_FROM_CV @ np.concatenate([cam.R, cam.t[:, None]], 1)
        points = np.concatenate([rec.landmarks_px, rec.iris_px])  # DECA's bbox: of the landmarks
        frame = imavatar_frame(stem, w2c_gl, rec.expression, rec.pose, points, points, (cam.width, cam.height))
        self.frames.setdefault(seq, []).append(frame)

    def _finish(self) -> None:
        cam = self.camera
        intr = imavatar_intrinsics(cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2], (cam.width, cam.height))
        for seq, frames in self.frames.items():
            doc = {"shape_params": _rounded(self.shape), "intrinsics": intr, "frames": frames}
            (self.inner / seq / "flame_params.json").write_text(json.dumps(doc))


class NerFaceWriter(LayoutWriter):
    """``transforms_{train,val,test}.json`` with images in ``<split>/f_<n>.png`` and the plate
    ``bg/00050.png``; no masks, no FLAME parameters.

    As NerFace's ``real_to_nerf.py``: the rigid head pose is folded into the camera, the scene is
    scaled so the mean camera depth is 0.5 (:data:`NERFACE_UNITS`), fx is stored negative with a
    rotation matrix (a world mirrored in x), pixels have integer centres, and ``bbox`` is
    ``[y0, y1, x0, x1]`` fractions. ``expression`` holds 76 values of NerFace's own tracker;
    here a stand-in: the FLAME expression, zero-padded (the FLAME ground truth is in ``gt/``).
    ``val`` is every 10th test frame.
    """

    name = "nerface"
    EXPR_DIM = 76

    def stem(self, seq: str, index: int) -> str:
        return f"f_{index:04d}"

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        _write_png(self.root / seq / f"{stem}.png", _u8(rec.frame.rgb))
        c2w = rec.head_folded_c2w(self.camera)
        c2w[:3, 3] *= NERFACE_UNITS
        mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
        c2w = mirror @ c2w @ mirror  # the same rays with a negative fx, in the mirrored world
        expr = np.zeros(self.EXPR_DIM)
        n = min(self.EXPR_DIM, len(rec.expression))
        expr[:n] = rec.expression[:n]
        h, w = rec.frame.mask.shape
        ys, xs = np.nonzero(rec.frame.mask.numpy())
        bbox = [ys.min() / h, (ys.max() + 1) / h, xs.min() / w, (xs.max() + 1) / w] if len(xs) else [0.0, 1.0, 0.0, 1.0]
        self.frames.setdefault(seq, []).append(
            {"file_path": f"./{seq}/{stem}", "transform_matrix": _rounded(c2w), "expression": _rounded(expr), "bbox": _rounded(bbox)}
        )

    def _finish(self) -> None:
        cam = self.camera
        angle_x = 2 * math.atan(cam.width / (2 * cam.K[0, 0]))
        intr = [-cam.K[0, 0], cam.K[1, 1], (cam.K[0, 2] - HALF) / cam.width, (cam.K[1, 2] - HALF) / cam.height]
        splits = dict(self.frames)
        if "test" in splits:
            splits["val"] = splits["test"][::10]
        for split, frames in splits.items():
            doc = {"camera_angle_x": angle_x, "intrinsics": _rounded(intr), "frames": frames}
            (self.root / f"transforms_{split}.json").write_text(json.dumps(doc))
        bg = np.full((cam.height, cam.width, 3), 255, np.uint8)
        _write_png(self.root / "bg" / "00050.png", bg)


class InstaWriter(LayoutWriter):
    """As INSTA's ``transforms.py`` writes metrical-tracker's output: ``transforms{,_train,_val,_test}.json``
    (OpenCV camera-to-world in FLAME metres, header values as floats, sorted keys), ``images/{id}.png``
    (RGBA: the matte in alpha), ``meshes/{id}.obj`` (FLAME space, metres), ``flame/exp/{id}.txt``
    (100 values, one per line: the only parameter written), ``depth/{id}.png`` (mm), ``seg_mask/{id}.png``
    (3 channels); ``{id}`` 5-digit, 0-based over the whole video. Test: the last ``num_test`` frames;
    val: the last 20."""

    name = "insta"
    EXPR_DIM = 100
    VAL_FRAMES = 20

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counter = 0
        self.faces = self.gt.faces
        self.all_frames: list[tuple[str, dict]] = []

    def stem(self, seq: str, index: int) -> str:
        return f"{self.counter:05d}"

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        r = self.root
        rgba = np.concatenate([_u8(rec.frame.rgb), rec.frame.mask.numpy().astype(np.uint8)[..., None] * 255], -1)
        _write_rgba(r / "images" / f"{stem}.png", rgba)
        label = rec.frame.label.numpy().astype(np.uint8)
        _write_png(r / "seg_mask" / f"{stem}.png", np.stack([label] * 3, -1))
        depth_mm = np.round(rec.frame.depth.numpy() / WORLD_SCALE * 1000.0).clip(0, 65535).astype(np.uint16)
        _write_png(r / "depth" / f"{stem}.png", depth_mm)
        _write_obj(r / "meshes" / f"{stem}.obj", rec.vertices_head_metres(), self.faces)
        expr = np.zeros(self.EXPR_DIM)
        expr[: len(rec.expression)] = rec.expression
        p = r / "flame" / "exp" / f"{stem}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(p, expr, fmt="%.8f")
        c2w_cv = rec.head_folded_c2w(self.camera) @ GL_FROM_CV4
        c2w_cv[:3, 3] /= WORLD_SCALE
        self.all_frames.append(
            (seq, {
                "file_path": f"images/{stem}.png",
                "transform_matrix": c2w_cv.tolist(),
                "mesh_path": f"meshes/{stem}.obj",
                "exp_path": f"flame/exp/{stem}.txt",
                "depth_path": f"depth/{stem}.png",
                "seg_mask_path": f"seg_mask/{stem}.png",
            })
        )  # fmt: skip
        self.counter += 1

    def _finish(self) -> None:
        cam = self.camera
        ax, ay = 2 * math.atan(cam.width / (2 * cam.K[0, 0])), 2 * math.atan(cam.height / (2 * cam.K[1, 1]))
        header = {
            "w": cam.width, "h": cam.height, "cx": cam.K[0, 2], "cy": cam.K[1, 2], "fl_x": cam.K[0, 0], "fl_y": cam.K[1, 1],
            "camera_angle_x": ax, "camera_angle_y": ay, "x_fov": math.degrees(ax), "y_fov": math.degrees(ay),
            "integer_depth_scale": 1 / 1000,
        }  # fmt: skip
        header = {k: float(v) for k, v in header.items()}
        frames = [f for _, f in self.all_frames]
        num_test = sum(1 for seq, _ in self.all_frames if seq == "test")
        splits = {
            "transforms.json": frames,
            "transforms_train.json": frames[: len(frames) - num_test],
            "transforms_test.json": frames[len(frames) - num_test :],
            "transforms_val.json": frames[-self.VAL_FRAMES :],
        }
        for name, fr in splits.items():
            (self.root / name).write_text(json.dumps({**header, "frames": fr}, indent=4, sort_keys=True))


def _write_rgba(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    if not cv2.imwrite(str(path), bgra, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"{path}: could not write PNG")


def _write_obj(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["v %.8f %.8f %.8f" % tuple(v) for v in verts]
    lines += ["f %d %d %d" % tuple(f) for f in (faces + 1)]
    path.write_text("\n".join(lines) + "\n")


def ibug68_to_wflw98(lm: np.ndarray) -> np.ndarray:
    """Approximate WFLW-98 landmarks (PIPNet's layout) from iBUG-68 ones.

    Points WFLW has and iBUG lacks (contour midpoints, lower brow edges, extra eyelid
    points, pupils) are interpolated from their neighbours.
    """
    out = np.zeros((98, 2))
    mid = lambda a, b: 0.5 * (lm[a] + lm[b])  # noqa: E731
    for i in range(17):
        out[2 * i] = lm[i]
    for i in range(16):
        out[2 * i + 1] = mid(i, i + 1)
    eye_down = 0.15 * (mid(37, 38) - mid(19, 20))
    out[33:38] = lm[17:22]
    out[38:42] = [mid(21, 20) + eye_down, mid(20, 19) + eye_down, mid(19, 18) + eye_down, mid(18, 17) + eye_down]
    out[42:47] = lm[22:27]
    out[47:51] = [mid(26, 25) + eye_down, mid(25, 24) + eye_down, mid(24, 23) + eye_down, mid(23, 22) + eye_down]
    out[51:55] = lm[27:31]
    out[55:60] = lm[31:36]
    for base, e in ((60, 36), (68, 42)):
        out[base + 0] = lm[e]
        out[base + 1] = lm[e + 1]
        out[base + 2] = mid(e + 1, e + 2)
        out[base + 3] = lm[e + 2]
        out[base + 4] = lm[e + 3]
        out[base + 5] = lm[e + 4]
        out[base + 6] = mid(e + 4, e + 5)
        out[base + 7] = lm[e + 5]
    out[76:88] = lm[48:60]
    out[88:96] = lm[60:68]
    out[96] = lm[36:42].mean(0)
    out[97] = lm[42:48].mean(0)
    return out


class KinectWriter(LayoutWriter):
    """MonoNPHM's Kinect sequence per ``<seq>/``: ``source/<t:05d>.png``, ``seg/<t>.png`` (facer
    classes, 11 = mouth interior), ``matting/<t:05d>.png``, ``depth/<t:05d>.png`` (uint16 mm, with
    sensor noise and holes), ``pipnet/test.npy`` (T x 98 x 2 WFLW, normalised to [0, 1]),
    ``bboxes/test.npy``, ``identity.npy`` (300 shape values), ``kinect_intrinsics.txt``
    (``cx cy fx fy`` + 10 distortion values) and metrical-tracker's output:
    ``metrical_tracker/<seq>/checkpoint/<k:05d>_cam_params_opencv.npz`` (R 1x3x3, t 1x3, K 1x3x3:
    OpenCV world-to-camera in FLAME metres, the head pose in the camera) and ``mesh/<k:05d>.ply``.

    MonoNPHM reads checkpoint ``max(t - 1, 0)`` for source frame ``t``: rendered frame ``r`` is
    written as source frame ``r + 1`` with checkpoint ``r``, and source frame 0 repeats frame 1."""

    name = "kinect"

    all_meshes = True  # ground-truth meshes of every frame: the geometry evaluation of tracked frames needs them

    def __init__(self, *args, seed: int = 0, tracked_shape: Optional[np.ndarray] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tracked_shape = tracked_shape
        """Identity coefficients the simulated tracker reports (None: the truth)."""
        self.rng = np.random.default_rng(seed + 4242)
        self.lms: dict[str, list[np.ndarray]] = {}
        self.boxes: dict[str, list[list[float]]] = {}

    def noisy_depth_mm(self, frame: Frame) -> np.ndarray:
        """Kinect-like depth: axial noise growing with distance, holes at grazing angles,
        silhouette edges, dark hair and random dropouts, 1 mm quantisation."""
        depth_m = frame.depth.numpy() / WORLD_SCALE
        mask = frame.mask.numpy()
        noise_sd = 0.0008 + 0.0012 * depth_m**2
        d = depth_m + self.rng.normal(size=depth_m.shape) * noise_sd
        grazing = np.abs(frame.normal.numpy()[..., 2]) < 0.22
        edge = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        hair = frame.label.numpy() == 14
        drop = grazing | (edge & (self.rng.random(mask.shape) < 0.6)) | (hair & (self.rng.random(mask.shape) < 0.25))
        drop |= self.rng.random(mask.shape) < 0.01
        out = np.where(mask & ~drop, np.round(d * 1000.0), 0)
        return out.clip(0, 65535).astype(np.uint16)

    def stem(self, seq: str, index: int) -> str:
        return f"{index + 1:05d}"

    def _write_source(self, d: Path, t: int, rec: FrameRecord) -> None:
        _write_png(d / "source" / f"{t:05d}.png", _u8(rec.frame.rgb))
        _write_png(d / "seg" / f"{t}.png", rec.frame.label.numpy().astype(np.uint8))
        _write_png(d / "matting" / f"{t:05d}.png", rec.frame.mask.numpy().astype(np.uint8) * 255)
        _write_png(d / "depth" / f"{t:05d}.png", self.noisy_depth_mm(rec.frame))
        cam = self.camera
        size = np.array([cam.width, cam.height], dtype=np.float64)
        self.lms.setdefault(d.name, []).append((ibug68_to_wflw98(rec.landmarks_px) - HALF) / size)
        ys, xs = np.nonzero(rec.frame.mask.numpy())
        box = [xs.min() / size[0], ys.min() / size[1], (xs.max() - xs.min()) / size[0], (ys.max() - ys.min()) / size[1], 1.0]
        self.boxes.setdefault(d.name, []).append(box if len(xs) else [-1.0, -1.0, -1.0, -1.0, -1.0])

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        d = self.root / seq
        if rec.index == 0:
            self._write_source(d, 0, rec)  # source 0 and 1 share checkpoint 0 in MonoNPHM's reader
        self._write_source(d, rec.index + 1, rec)
        tracker = d / "metrical_tracker" / seq
        cam = self.camera
        G = rec.head_transform  # x_world = G x_head (world units)
        R = cam.R @ G[:3, :3]
        t = (cam.R @ G[:3, 3] + cam.t) / WORLD_SCALE
        K = cam.K.copy()
        K[:2, 2] -= HALF
        (tracker / "checkpoint").mkdir(parents=True, exist_ok=True)
        np.savez(tracker / "checkpoint" / f"{rec.index:05d}_cam_params_opencv.npz", R=R[None], t=t[None], K=K[None])
        from headstudio.export.ply import write_ply

        (tracker / "mesh").mkdir(parents=True, exist_ok=True)
        write_ply(tracker / "mesh" / f"{rec.index:05d}.ply", rec.vertices_head_metres(tracked=True), self.gt.faces)

    def _finish(self) -> None:
        cam = self.camera
        for seq, lms in self.lms.items():
            d = self.root / seq
            (d / "pipnet").mkdir(parents=True, exist_ok=True)
            np.save(d / "pipnet" / "test.npy", np.stack(lms).astype(np.float32))
            (d / "bboxes").mkdir(parents=True, exist_ok=True)
            np.save(d / "bboxes" / "test.npy", np.array(self.boxes[seq], dtype=np.float32))
            distortion = " ".join(["0"] * 10)
            (d / "kinect_intrinsics.txt").write_text(
                f"{cam.K[0, 2] - HALF} {cam.K[1, 2] - HALF} {cam.K[0, 0]} {cam.K[1, 1]} {distortion} \n"
            )
            identity = np.zeros(300, np.float32)
            shape = self.shape if self.tracked_shape is None else self.tracked_shape
            identity[: len(shape)] = shape
            np.save(d / "identity.npy", identity)


WRITERS = {w.name: w for w in (IMavatarWriter, NerFaceWriter, InstaWriter)}
