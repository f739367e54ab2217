"""The head pipeline: nerfstudio's VanillaPipeline plus the papers' evaluation protocol.

- ``ns-eval`` reports every metric twice, as Chen et al. 2023 (supp. Table 4) does: ``<metric>_dagger``
  renders unseen frames with the first training frame's latent codes (Ours†); ``<metric>``
  first optimises the frame's codes for ``test_time_steps`` steps (Ours). LPIPS is left out,
  with ``lpips`` naming the reason, when its weights are not available offline.
- On Kinect subjects (eval metadata ``eval_depth_filenames``) every eval image also gets MonoNPHM's
  geometry metrics (Giebenhain et al. 2024, §5.1; :mod:`headstudio.metrics.depth_geometry`), in both
  protocols: the head is meshed in the image's frame (``FrameMesher``, ``geometry_resolution``),
  moved onto the back-projected face depth by a similarity ICP, and measured from the depth points:
  ``chamfer_l1_m`` (mean distance, metres), ``chamfer_manhattan_m`` (MonoNPHM eval.py's L1 norm of
  the offset), ``normal_consistency_depth`` (mean |cos| of normals), ``recall_2.5mm`` (share of depth
  points within ``geometry_threshold_mm``; the key names the threshold) and ``geometry_points``
  (depth points used). Where a frame cannot be meshed the values are NaN and ``geometry_unavailable``
  says why; ``geometry_region`` says whether the face parsing (metadata ``segmentation_filenames``)
  restricted the points.
- ``ns-export tsdf|poisson`` renders every training camera, each in its own frame's state. With
  ``HEADSTUDIO_FRAME=N`` in the environment (read once, when the pipeline is built) every camera
  renders the head in frame N instead, so the fused mesh is one expression:
  ``HEADSTUDIO_FRAME=0 ns-export tsdf --load-config ...``. Nothing else changes that state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from time import time
from typing import Dict, List, Mapping, Optional, Tuple, Type

import torch
import torchvision.utils as vutils
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from headstudio.export.frame_mesh import FrameMesher
from headstudio.fields.frame_codes import FrameCodes
from headstudio.metrics.depth_geometry import DepthForeground, FrameCamera, evaluate_depth_frame
from headstudio.metrics.geometry import camera_normals_to_world, gt_normal_path, load_gt_normal
from headstudio.metrics.images import lpips_unavailable_reason
from headstudio.pipelines.code_fitting import optimise_frame_codes

FRAME_ENV = "HEADSTUDIO_FRAME"


@dataclass
class HeadPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: HeadPipeline)
    test_time_steps: int = 100
    """Steps of test-time latent-code optimisation per eval image (Chen et al. 2023 give no count; 0 = † only)."""
    test_time_lr: float = 1e-2
    """Adam learning rate of the test-time optimisation."""
    test_time_rays: int = 1024
    """Random pixels per test-time step."""
    test_time_sample_fraction: float = 0.5
    """Share of the model's samples per ray in the renders of the test-time steps (ours, for speed: the same
    codes are fitted to the same pixels, from coarser renders; 1.0 renders as evaluation does). The metrics
    after fitting are always taken on a full render."""
    geometry_metrics: bool = True
    """Kinect subjects: MonoNPHM's depth geometry metrics per eval image (Giebenhain et al. 2024, §5.1)."""
    geometry_resolution: int = 128
    """Marching-cubes lattice resolution over the scene box of the meshes the geometry metrics measure."""
    geometry_threshold_mm: float = 2.5
    """Distance threshold of the geometry recall, mm (MonoNPHM §5.1, Recall@2.5mm)."""
    geometry_depth_range_m: Tuple[float, float] = (0.2, 1.5)
    """Valid Kinect depth, metres (MonoNPHM's eval.py: 0.01..0.8 for subjects ~0.6 m away; the synthetic ones are ~1 m)."""


def fixed_frame_from_env(environ: Mapping[str, str], num_frames: int) -> Optional[int]:
    """The frame ``HEADSTUDIO_FRAME`` names (checked against the subject), or None when it is unset."""
    text = environ.get(FRAME_ENV, "").strip()
    if not text:
        return None
    try:
        frame = int(text)
    except ValueError:
        raise ValueError(f"{FRAME_ENV}={text!r}: expected a frame index 0..{num_frames - 1}") from None
    if not 0 <= frame < num_frames:
        raise ValueError(f"{FRAME_ENV}={frame}: the subject has frames 0..{num_frames - 1}")
    return frame


def frame_codes_of(model: torch.nn.Module) -> List[FrameCodes]:
    """The model's per-frame code tables (what test-time fitting tunes): deformation and appearance codes,
    or imavatar-surface's geometry codes."""
    return [m for m in model.modules() if isinstance(m, FrameCodes)]


def eval_inputs(dataset, camera, batch: Dict) -> Dict:
    """An eval image's batch plus what geometry metrics need: the camera, landmarks in pixels of this
    resolution, and the ground-truth normal map in world space where the subject has one."""
    batch = dict(batch, camera=camera)
    meta = camera.metadata or {}
    if "landmarks" in meta:
        batch["landmarks_px"] = meta["landmarks"].reshape(-1, 2) * dataset.scale_factor
    idx = int(batch.get("image_idx", -1))
    if 0 <= idx < len(dataset.image_filenames):
        path = gt_normal_path(dataset.image_filenames[idx])
        if path is not None:
            h, w = batch["image"].shape[:2]
            batch["gt_normal_world"] = camera_normals_to_world(load_gt_normal(path, h, w), camera.camera_to_worlds[0])
    return batch


class HeadPipeline(VanillaPipeline):
    config: HeadPipelineConfig

    def __init__(self, config: HeadPipelineConfig, device: str, *args, **kwargs) -> None:
        super().__init__(config, device, *args, **kwargs)
        subject = getattr(self.model, "subject", None)
        frame = fixed_frame_from_env(os.environ, subject.num_frames) if subject is not None else None
        if frame is not None:
            subject.fixed_frame = frame
            CONSOLE.print(f"headstudio: every camera renders the head in frame {frame} ({FRAME_ENV})")

    def get_average_eval_image_metrics(
        self,
        step: Optional[int] = None,
        output_path: Optional[Path] = None,
        get_std: bool = False,
        per_image: Optional[List[Dict[str, float]]] = None,
    ) -> Dict[str, float | str]:
        """Means over the eval images (without, ``_dagger``, and with test-time codes); each image's row,
        with its ``frame`` index, is also appended to ``per_image`` when a list is given."""
        self.eval()
        loader = self.datamanager.fixed_indices_eval_dataloader
        steps = self.config.test_time_steps
        rows: List[Dict[str, float]] = []
        if output_path is not None:
            output_path.mkdir(exist_ok=True, parents=True)
        columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, MofNCompleteColumn(), transient=True) as progress:
            task = progress.add_task("[green]Evaluating (without and with test-time codes)", total=len(loader))
            fitting = progress.add_task("[cyan]Test-time code fitting", total=steps, visible=steps > 0)
            geometry = self._geometry_mesher()
            meshing = progress.add_task("[magenta]Meshing for geometry metrics", total=1, visible=geometry is not None)
            if geometry is not None:
                geometry.progress = lambda n: progress.advance(meshing, n)
            reasons: List[str] = []

            def measure(camera, batch, idx: int, suffix: str) -> Dict[str, float]:
                if geometry is None:
                    return {}
                progress.reset(meshing, total=geometry.lattice_points or 1, description=f"[magenta]Meshing, image {idx + 1}{suffix}")
                row, reason = self.depth_geometry_row(geometry, camera, int(batch.get("image_idx", idx)))
                if reason is not None:
                    reasons.append(f"image {idx + 1}{suffix}: {reason}")
                return {f"{k}{suffix}": v for k, v in row.items()}

            fit_seconds: List[float] = []
            for idx, (camera, batch) in enumerate(loader):
                start = time()
                outputs = self.model.get_outputs_for_camera(camera=camera)
                seconds = time() - start
                batch = self.eval_inputs(camera, batch)
                metrics, images = self.model.get_image_metrics_and_images(outputs, batch)
                row = {f"{k}_dagger": v for k, v in metrics.items()}
                geo = measure(camera, batch, idx, "_dagger")
                row.update(geo)
                if steps == 0:  # no test-time fitting: the two protocols are one
                    row.update(metrics)
                    row.update({k.removesuffix("_dagger"): v for k, v in geo.items()})
                row["num_rays_per_sec"] = float(camera.height * camera.width) / seconds
                self._save(output_path, "eval_dagger", idx, images)
                if steps > 0:
                    progress.reset(fitting, total=steps, description=f"[cyan]Test-time code fitting, image {idx + 1}")
                    start = time()
                    with self.model.reduced_sampling(self.config.test_time_sample_fraction):
                        losses = optimise_frame_codes(
                            self.model,
                            camera,
                            batch["image"][..., :3],
                            frame_codes_of(self.model),
                            steps,
                            lr=self.config.test_time_lr,
                            num_rays=self.config.test_time_rays,
                            seed=idx,
                            on_step=lambda i, loss: progress.update(
                                fitting, completed=i + 1, description=f"[cyan]Test-time fitting, image {idx + 1}, loss {loss:.4f}"
                            ),
                        )
                    fit_seconds.append(time() - start)
                    row["test_time_loss_first"], row["test_time_loss_last"] = losses[0], losses[-1]
                    outputs = self.model.get_outputs_for_camera(camera=camera)
                    metrics, images = self.model.get_image_metrics_and_images(outputs, batch)
                    row.update(metrics)
                    row.update(measure(camera, batch, idx, ""))
                    self._save(output_path, "eval", idx, images)
                rows.append(row)
                if per_image is not None:
                    frame = (camera.metadata or {}).get("frame_index")
                    per_image.append(dict(row, frame=float("nan") if frame is None else float(frame.reshape(-1)[0])))
                progress.advance(task)
        result: Dict[str, float | str] = {}
        for key in rows[0]:
            values = torch.tensor([r[key] for r in rows])
            result[key] = float(values.mean())
            if get_std:
                result[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
        result["test_time_steps"] = float(steps)
        if fit_seconds:
            result["test_time_seconds_per_frame"] = float(sum(fit_seconds) / len(fit_seconds))
        if geometry is not None:
            region = "face parsing" if self.datamanager.eval_dataset.metadata.get("segmentation_filenames") else "all valid depth"
            result["geometry_region"] = f"{region}; ICP similarity; mesh resolution {geometry.resolution}"
        if reasons:
            result["geometry_unavailable"] = "; ".join(reasons)
        reason = lpips_unavailable_reason()
        if reason is not None:
            result["lpips"] = f"unavailable: {reason}"
        self.train()
        return result

    def eval_inputs(self, camera, batch: Dict) -> Dict:
        """The eval batch plus what geometry metrics need (:func:`eval_inputs`)."""
        return eval_inputs(self.datamanager.eval_dataset, camera, batch)

    def _geometry_mesher(self) -> Optional[FrameMesher]:
        """The mesher of the geometry metrics, or None where they do not apply (not a Kinect subject,
        switched off, or a model that cannot be meshed)."""
        meta = self.datamanager.eval_dataset.metadata
        if not self.config.geometry_metrics or not meta.get("eval_depth_filenames"):
            return None
        if getattr(self.model, "export_kind", None) is None:
            return None
        return FrameMesher(self.model, resolution=self.config.geometry_resolution)

    def depth_geometry_row(self, mesher: FrameMesher, camera, image_idx: int) -> Tuple[Dict[str, float], Optional[str]]:
        """MonoNPHM's geometry metrics of one eval image (the model meshed in the camera's frame against
        the image's depth map), and why they are NaN where the frame could not be meshed."""
        dataset = self.datamanager.eval_dataset
        meta = dataset.metadata
        recall = f"recall_{self.config.geometry_threshold_mm:g}mm"
        keys = ("chamfer_l1_m", "chamfer_manhattan_m", "normal_consistency_depth", recall, "geometry_points")
        segs = meta.get("segmentation_filenames")
        frame = int(camera.metadata["frame_index"].reshape(-1)[0])
        try:
            verts, faces = mesher(frame)
        except ValueError as exc:  # the field never crosses the level, or nothing left after cleaning
            return {k: float("nan") for k in keys}, str(exc)
        if len(faces) == 0:
            return {k: float("nan") for k in keys}, "the mesh is empty"
        cam = FrameCamera(
            float(camera.fx.reshape(-1)[0]), float(camera.fy.reshape(-1)[0]), float(camera.cx.reshape(-1)[0]),
            float(camera.cy.reshape(-1)[0]), int(camera.width.reshape(-1)[0]), int(camera.height.reshape(-1)[0]),
            camera.camera_to_worlds.reshape(-1, 3, 4)[0].double().cpu().numpy(),
        )  # fmt: skip
        near, far = self.config.geometry_depth_range_m
        world_scale = float(meta.get("world_scale", 4.0))
        try:
            result = evaluate_depth_frame(
                verts, faces, meta["eval_depth_filenames"][image_idx], segs[image_idx] if segs else None, cam,
                float(meta["eval_depth_to_world"]), 1.0 / world_scale, self.config.geometry_threshold_mm / 1000.0,
                DepthForeground(near_m=near, far_m=far),
            )  # fmt: skip
        except ValueError as exc:  # no ground-truth points in the face region
            return {k: float("nan") for k in keys}, str(exc)
        values = (result.chamfer_l1_m, result.chamfer_manhattan_m, result.normal_consistency, result.recall, float(result.num_points))
        return dict(zip(keys, values)), None

    @staticmethod
    def _save(output_path: Optional[Path], prefix: str, idx: int, images: Dict[str, torch.Tensor]) -> None:
        if output_path is None:
            return
        for key, image in images.items():
            vutils.save_image(image.permute(2, 0, 1).cpu(), output_path / f"{prefix}_{key}_{idx:04d}.png")
