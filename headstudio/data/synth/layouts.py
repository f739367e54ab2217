"""Writers for the subject folder layouts: IMavatar, NerFace, INSTA and MonoNPHM Kinect.

Every writer receives rendered frames one at a time and writes the per-frame files, then
the sequence's JSON at the end. Ground truth for measuring (depth, normals, labels, test
meshes) goes to ``gt/<sequence>/`` with the same file stems in every layout.

World frame: FLAME coordinates x 4 (a head spans about one unit), y up, the face looking
along +z. The camera is fixed on the +z axis looking at the origin; the head moves.
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from headstudio.data.synth.render import Frame, PinholeCamera
from headstudio.flame.constants import WORLD_SCALE

GL_FROM_CV = np.diag([1.0, -1.0, -1.0])
DEPTH_SCALE = 10000.0
"""GT depth PNGs store camera z in world units x 10000 (uint16)."""


@dataclass
class FrameRecord:
    """Everything a layout writer may need about one rendered frame."""

    index: int
    frame: Frame
    expression: np.ndarray  # (E,)
    pose: np.ndarray  # (15,)
    landmarks_px: np.ndarray  # (68, 2) pixel coordinates (x right, y down)
    head_transform: np.ndarray  # (4, 4) rigid head pose in world units (global joint)
    vertices_world: np.ndarray  # (V, 3)


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
    """gt/<seq>/{depth,normal,semantic}/<stem>.png and gt/<seq>/mesh/<stem>.ply (test frames)."""

    def __init__(self, root: Path, faces: np.ndarray) -> None:
        self.root = root / "gt"
        self.faces = faces

    def write(self, seq: str, stem: str, rec: FrameRecord, mesh: bool) -> None:
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
        self.gt.write(seq, stem, rec, mesh=(seq == "test"))

    @abc.abstractmethod
    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        """Write the layout's own per-frame files."""

    @abc.abstractmethod
    def finish(self) -> None:
        """Write the per-sequence files once every frame is written."""


class IMavatarWriter(LayoutWriter):
    """``<seq>/flame_params.json``, ``<seq>/image/<n>.png``, ``<seq>/mask/<n>.png`` (n from 1)."""

    name = "imavatar"

    def stem(self, seq: str, index: int) -> str:
        return str(index + 1)

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        d = self.root / seq
        _write_png(d / "image" / f"{stem}.png", _u8(rec.frame.rgb))
        _write_png(d / "mask" / f"{stem}.png", rec.frame.mask.numpy().astype(np.uint8) * 255)
        cam = self.camera
        w2c_gl = GL_FROM_CV @ np.concatenate([cam.R, cam.t[:, None]], 1)
        kp = np.stack([2 * rec.landmarks_px[:, 0] / cam.width - 1, 2 * rec.landmarks_px[:, 1] / cam.height - 1], -1)
        self.frames.setdefault(seq, []).append(
            {
                "file_path": f"./image/{stem}",
                "world_mat": _rounded(w2c_gl),
                "expression": _rounded(rec.expression),
                "pose": _rounded(rec.pose),
                "bbox": _rounded(_bbox_norm(rec.frame.mask.numpy())),
                "flame_keypoints": _rounded(kp),
            }
        )

    def finish(self) -> None:
        cam = self.camera
        intr = [-cam.K[0, 0] / cam.width, cam.K[1, 1] / cam.height, cam.K[0, 2] / cam.width, cam.K[1, 2] / cam.height]
        for seq, frames in self.frames.items():
            doc = {"shape_params": _rounded(self.shape), "intrinsics": _rounded(intr), "frames": frames}
            (self.root / seq / "flame_params.json").write_text(json.dumps(doc))


class NerFaceWriter(LayoutWriter):
    """``transforms_{train,val,test}.json`` with images in ``<split>/f_<n>.png``.

    The rigid head pose is folded into the camera (head static, camera moves), as NerFace
    does. ``expression`` holds NerFace's 76 values: here the FLAME expression, zero-padded.
    The FLAME parameters themselves travel in ``flame_expression`` / ``flame_pose``, and
    ``val`` is every 10th test frame.
    """

    name = "nerface"
    EXPR_DIM = 76

    def stem(self, seq: str, index: int) -> str:
        return f"f_{index:04d}"

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        _write_png(self.root / seq / f"{stem}.png", _u8(rec.frame.rgb))
        _write_png(self.root / "mask" / seq / f"{stem}.png", rec.frame.mask.numpy().astype(np.uint8) * 255)
        c2w = np.linalg.inv(rec.head_transform) @ _c2w_gl(self.camera)
        expr = np.zeros(self.EXPR_DIM)
        n = min(self.EXPR_DIM, len(rec.expression))
        expr[:n] = rec.expression[:n]
        self.frames.setdefault(seq, []).append(
            {
                "file_path": f"./{seq}/{stem}",
                "transform_matrix": _rounded(c2w),
                "expression": _rounded(expr),
                "bbox": _rounded(_bbox_norm(rec.frame.mask.numpy())),
                "flame_expression": _rounded(rec.expression),
                "flame_pose": _rounded(rec.pose),
                "flame_keypoints_px": _rounded(rec.landmarks_px, 3),
            }
        )

    def finish(self) -> None:
        cam = self.camera
        angle_x = 2 * math.atan(cam.width / (2 * cam.K[0, 0]))
        intr = [cam.K[0, 0], cam.K[1, 1], cam.K[0, 2] / cam.width, cam.K[1, 2] / cam.height]
        splits = dict(self.frames)
        if "test" in splits:
            splits["val"] = splits["test"][::10]
        for split, frames in splits.items():
            doc = {"camera_angle_x": angle_x, "intrinsics": _rounded(intr), "shape_params": _rounded(self.shape), "frames": frames}
            (self.root / f"transforms_{split}.json").write_text(json.dumps(doc))
        bg = np.full((cam.height, cam.width, 3), 255, np.uint8)
        _write_png(self.root / "bg" / "00050.png", bg)


class InstaWriter(LayoutWriter):
    """``transforms{,_train,_val,_test}.json``; ``images/``, ``meshes/``, ``flame/{exp,jaw,eyes,pose}/``,
    ``depth/``, ``seg_mask/``. Head pose folded into the camera; meshes in the head frame."""

    name = "insta"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counter = 0
        self.faces = self.gt.faces

    def stem(self, seq: str, index: int) -> str:
        return f"{self.counter:05d}"

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        r = self.root
        _write_png(r / "images" / f"{stem}.png", _u8(rec.frame.rgb))
        _write_png(r / "seg_mask" / f"{stem}.png", rec.frame.label.numpy().astype(np.uint8))
        depth_mm = np.round(rec.frame.depth.numpy() / WORLD_SCALE * 1000.0).clip(0, 65535).astype(np.uint16)
        _write_png(r / "depth" / f"{stem}.png", depth_mm)
        head = np.linalg.inv(rec.head_transform)
        verts = rec.vertices_world @ head[:3, :3].T + head[:3, 3]
        _write_obj(r / "meshes" / f"{stem}.obj", verts, self.faces)
        for key, values in (
            ("exp", rec.expression),
            ("jaw", rec.pose[6:9]),
            ("eyes", rec.pose[9:15]),
            ("pose", rec.pose),
        ):
            p = r / "flame" / key / f"{stem}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(p, np.asarray(values)[None], fmt="%.6f")
        c2w = head @ _c2w_gl(self.camera)
        self.frames.setdefault(seq, []).append(
            {
                "file_path": f"images/{stem}.png",
                "transform_matrix": _rounded(c2w),
                "mesh_path": f"meshes/{stem}.obj",
                "exp_path": f"flame/exp/{stem}.txt",
                "depth_path": f"depth/{stem}.png",
                "seg_mask_path": f"seg_mask/{stem}.png",
                "flame_pose_path": f"flame/pose/{stem}.txt",
            }
        )
        self.counter += 1

    def finish(self) -> None:
        cam = self.camera
        head = {
            "w": cam.width,
            "h": cam.height,
            "fl_x": float(cam.K[0, 0]),
            "fl_y": float(cam.K[1, 1]),
            "cx": float(cam.K[0, 2]),
            "cy": float(cam.K[1, 2]),
            "camera_angle_x": 2 * math.atan(cam.width / (2 * cam.K[0, 0])),
            "shape_params": _rounded(self.shape),
        }
        splits = dict(self.frames)
        if "test" in splits:
            splits["val"] = splits["test"][::10]
        everything = [f for s in ("train", "test") for f in self.frames.get(s, [])]
        (self.root / "transforms.json").write_text(json.dumps({**head, "frames": everything}))
        for split, frames in splits.items():
            (self.root / f"transforms_{split}.json").write_text(json.dumps({**head, "frames": frames}))
        np.savetxt(self.root / "flame" / "shape.txt", self.shape[None], fmt="%.6f")


def _write_obj(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["v %.5f %.5f %.5f" % tuple(v) for v in verts]
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
    """MonoNPHM-style Kinect sequence per ``<seq>/``: ``source/<t:05d>.png``, ``seg/<t>.png``
    (11 = mouth interior), ``matting/<t:05d>.png``, ``depth/<t:05d>.png`` (uint16 mm, with
    sensor noise and holes), ``pipnet/test.npy`` (T x 98 x 2 pixels), ``cameras/<t:05d>.npz``
    (OpenCV R, t, K) and ``intrinsics.txt`` ("cx cy fx fy"); the FLAME track in
    ``flame_params.npz``. The camera is fixed; the head moves (its pose is in the track)."""

    name = "kinect"

    def __init__(self, *args, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rng = np.random.default_rng(seed + 4242)
        self.lms: dict[str, list[np.ndarray]] = {}
        self.track: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def stem(self, seq: str, index: int) -> str:
        return f"{index:05d}"

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

    def _write_frame(self, seq: str, stem: str, rec: FrameRecord) -> None:
        d = self.root / seq
        _write_png(d / "source" / f"{stem}.png", _u8(rec.frame.rgb))
        _write_png(d / "seg" / f"{rec.index}.png", rec.frame.label.numpy().astype(np.uint8))
        _write_png(d / "matting" / f"{stem}.png", rec.frame.mask.numpy().astype(np.uint8) * 255)
        _write_png(d / "depth" / f"{stem}.png", self.noisy_depth_mm(rec.frame))
        (d / "cameras").mkdir(parents=True, exist_ok=True)
        cam = self.camera
        np.savez(d / "cameras" / f"{stem}.npz", R=cam.R, t=cam.t / WORLD_SCALE, K=cam.K)  # metres
        self.lms.setdefault(seq, []).append(ibug68_to_wflw98(rec.landmarks_px))
        self.track.setdefault(seq, []).append((rec.expression, rec.pose))

    def finish(self) -> None:
        cam = self.camera
        for seq, lms in self.lms.items():
            d = self.root / seq
            (d / "pipnet").mkdir(parents=True, exist_ok=True)
            np.save(d / "pipnet" / "test.npy", np.stack(lms).astype(np.float32))
            (d / "intrinsics.txt").write_text(f"{cam.K[0, 2]} {cam.K[1, 2]} {cam.K[0, 0]} {cam.K[1, 1]}\n")
            expr = np.stack([e for e, _ in self.track[seq]])
            pose = np.stack([p for _, p in self.track[seq]])
            np.savez(d / "flame_params.npz", expression=expr, pose=pose, shape=self.shape)


WRITERS = {w.name: w for w in (IMavatarWriter, NerFaceWriter, InstaWriter)}
