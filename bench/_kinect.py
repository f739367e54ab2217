"""Geometry of a method's per-frame meshes on a synthetic Kinect sequence, as the benches measure it.

One implementation for ``bench/mononphm_track.py`` and ``bench/compare.py``: each frame's mesh against
the back-projected depth (MonoNPHM §5.1: face region, similarity ICP, L1-Chamfer, normal
consistency, Recall@2.5 mm) and against the frame's ground-truth mesh (no ICP; the whole head's face
region as ground truth), and whether the meshes follow the expressions (each frame's mesh nearer to
its own true mesh than to the other frames').
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch


def true_vertices(model, meta: dict, frame: int, cache: dict) -> np.ndarray:
    """Ground-truth vertices of a frame (world units): the true FLAME parameters of the frame
    (gt/<seq>/flame.npz), head pose removed (the Kinect world is the head's frame: the cameras carry it)."""
    from headstudio.data.track import FlameTrack

    table = meta["frame_table"]
    seq = table["sequence"][frame]
    if seq not in cache:
        cache[seq] = dict(np.load(Path(meta["subject_root"]) / "gt" / seq / "flame.npz"))
    gt = cache[seq]
    stem = Path(table["image"][frame]).stem
    stems = [str(x) for x in gt["stem"]]
    # Source frame 0 repeats rendered frame 0 (ground-truth stem 00001): MonoNPHM reads tracker frame t - 1.
    k = stems.index(stem if stem in stems else f"{max(int(stem), 1):05d}")
    pose = gt["pose"][k].copy()
    pose[:3] = 0.0
    track = FlameTrack(model.subject.track.flame, torch.as_tensor(gt["shape"], dtype=torch.float32),
                       torch.as_tensor(gt["expression"][k : k + 1], dtype=torch.float32),
                       torch.as_tensor(pose[None], dtype=torch.float32), world_scale=float(meta["world_scale"]))  # fmt: skip
    return track.vertices[0].cpu().numpy()


def face_region_faces(model) -> np.ndarray:
    """Faces of the FLAME topology in its 'face' region (the ground-truth comparison's region)."""
    flame = model.subject.track.flame
    face = np.zeros(flame.num_vertices, dtype=bool)
    face[np.asarray(flame.region_masks["face"])] = True
    f = model.subject.faces.cpu().numpy()
    return np.nonzero(face[f].all(1))[0]


def sequence_geometry(
    model,
    dataset,
    frames: Sequence[int],
    mesh_of: Callable[[int], tuple[np.ndarray, np.ndarray]],
    save: Optional[Path] = None,
    threshold_m: float = 0.0025,
) -> dict:
    """Mean geometry metrics over ``frames`` (frame indices of ``dataset``'s images) of the meshes
    ``mesh_of(frame)`` gives (world units), and the per-frame values (``per_frame``)."""
    from headstudio.metrics.depth_geometry import DepthForeground, FrameCamera, evaluate_depth_frame, mesh_geometry

    meta = dataset.metadata
    world_scale = float(meta["world_scale"])
    image_of_frame = {int(f): i for i, f in enumerate(dataset.cameras.metadata["frame_index"].reshape(-1))}
    gt_faces = model.subject.faces.cpu().numpy()
    kept = face_region_faces(model)
    rows = {"depth": [], "gt": []}
    cache: dict = {}
    meshes, gts = [], []
    for frame in frames:
        i = image_of_frame[int(frame)]
        verts, faces = mesh_of(int(frame))
        cam = dataset.cameras[i]
        camera = FrameCamera(float(cam.fx), float(cam.fy), float(cam.cx), float(cam.cy), int(cam.width), int(cam.height),
                             cam.camera_to_worlds.double().numpy())  # fmt: skip
        segs = meta.get("segmentation_filenames")
        rows["depth"].append(evaluate_depth_frame(verts, faces, meta["eval_depth_filenames"][i], segs[i] if segs else None,
                                                  camera, float(meta["eval_depth_to_world"]), 1.0 / world_scale,
                                                  threshold_m, DepthForeground()))  # fmt: skip
        gt_verts = true_vertices(model, meta, int(frame), cache)
        meshes.append((verts, faces))
        gts.append(gt_verts)
        if save is not None:  # for looking at them (PLY)
            from headstudio.export.ply import write_ply

            save.mkdir(parents=True, exist_ok=True)
            write_ply(save / f"frame_{frame:05d}.ply", np.asarray(verts, np.float32), np.asarray(faces))
            write_ply(save / f"gt_{frame:05d}.ply", gt_verts.astype(np.float32), gt_faces)
        rows["gt"].append(mesh_geometry(verts, faces, gt_verts, gt_faces, threshold_m, 1.0 / world_scale,
                                        num_points=50_000, gt_faces_kept=kept))  # fmt: skip
    # Expression following: is each frame's mesh closer to its own frame's true mesh than to the other frames'?
    n = len(meshes)
    dist = np.zeros((n, n))
    for i, (verts, faces) in enumerate(meshes):
        for j, gt_verts in enumerate(gts):
            dist[i, j] = mesh_geometry(verts, faces, gt_verts, gt_faces, threshold_m, 1.0 / world_scale,
                                       num_points=20_000, gt_faces_kept=kept).chamfer_l1_m  # fmt: skip
    off = [(dist[i].sum() - dist[i, i]) / max(n - 1, 1) - dist[i, i] for i in range(n)]
    mean = lambda key, rs: float(np.mean([getattr(r, key) for r in rs]))  # noqa: E731
    return {
        "following_margin_m": float(np.mean(off)),
        "following_matched": float(np.mean([int(np.argmin(dist[i])) == i for i in range(n)])),
        **{f"depth_{k}": mean(k, rows["depth"]) for k in ("chamfer_l1_m", "chamfer_manhattan_m", "normal_consistency", "recall")},
        **{f"gt_{k}": mean(k, rows["gt"]) for k in ("chamfer_l1_m", "normal_consistency", "recall")},
        "frames": len(frames),
        "per_frame": [{"frame": int(f), "depth_chamfer_l1_m": float(d.chamfer_l1_m), "gt_chamfer_l1_m": float(g.chamfer_l1_m)}
                      for f, d, g in zip(frames, rows["depth"], rows["gt"])],  # fmt: skip
    }


def flame_meshes(model) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """The input FLAME tracking's mesh of a frame (the baseline row)."""
    faces = model.subject.faces.cpu().numpy()
    return lambda frame: (model.subject.track.vertices[frame].cpu().numpy(), faces)
