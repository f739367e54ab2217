"""The head datamanager: FLAME-conditioned rays with mask- and face-aware pixel sampling.

Rays carry their frame through ``RayBundle.metadata`` (``frame_index``, ``expression``,
``pose``, ...), which nerfstudio copies from ``Cameras.metadata``. Images are composited
onto the dataparser's background colour outside the mask, the same colour the models
render as background, so masked and unmasked pixels agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Type

import cv2
import numpy as np
import torch
from jaxtyping import Bool, Int
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.pixel_samplers import PixelSampler, PixelSamplerConfig
from torch import Tensor

from headstudio.data.errors import DataError
from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig
from headstudio.engine.tracking_schedule import TrackingSchedule, TrackingScheduleConfig


def face_region(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Convex hull of the 2D landmarks as a (H, W) bool mask (empty if there are none)."""
    pts = landmarks[np.all(np.isfinite(landmarks), axis=-1)]
    out = np.zeros((height, width), np.uint8)
    if len(pts) >= 3:
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(out, hull, 1)
    return out.astype(bool)


def read_labels(path, height: int, width: int) -> np.ndarray:
    """A face-parsing label image (one class id per pixel) at ``height x width`` (nearest neighbour)."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise DataError(f"{path}: cannot read the segmentation image")
    if labels.ndim == 3:
        labels = labels[..., 0]
    if labels.shape != (height, width):
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    return labels


class HeadDataset(InputDataset):
    """Adds ``face_mask``, the hull of the frame's landmarks, to every image's data, and
    ``segmentation`` (class ids, long) where the dataparser lists segmentation images (Kinect)."""

    def get_metadata(self, data: Dict) -> Dict:
        lms = self.metadata.get("landmarks_px")
        h, w = data["image"].shape[:2]
        out: Dict[str, Tensor] = {}
        if lms is None:
            out["face_mask"] = torch.zeros(h, w, 1, dtype=torch.bool)
        else:
            pts = lms[data["image_idx"]].numpy() * self.scale_factor
            out["face_mask"] = torch.from_numpy(face_region(pts, h, w))[..., None]
        seg = self.metadata.get("segmentation_filenames")
        if seg is not None:
            labels = read_labels(seg[data["image_idx"]], h, w)
            out["segmentation"] = torch.from_numpy(labels.astype(np.int64))[..., None]
        return out


@dataclass
class HeadPixelSamplerConfig(PixelSamplerConfig):
    _target: Type = field(default_factory=lambda: HeadPixelSampler)
    foreground_fraction: float = 0.75
    """Share of rays drawn inside the head mask; the rest are drawn uniformly over the image."""
    face_fraction: float = 0.0
    """Share of rays drawn inside the face region (landmark hull), on top of the above."""


class HeadPixelSampler(PixelSampler):
    """Draws a fixed share of rays inside the mask (and the face), the rest anywhere.

    nerfstudio's own sampler, given a mask, samples *only* inside it; a head model must also
    see background rays to learn where the head ends.
    """

    config: HeadPixelSamplerConfig

    def __init__(self, config: HeadPixelSamplerConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self._nonzero_cache: dict[str, tuple[Tensor, Tensor]] = {}

    def _nonzero(self, key: str, mask: Bool[Tensor, "N H W 1"]) -> Int[Tensor, "M 3"]:
        """Pixel indices inside ``mask``, computed once per image batch (the cache holds the
        mask itself, so a new batch is never mistaken for the old one)."""
        cached = self._nonzero_cache.get(key)
        if cached is None or cached[0] is not mask:
            cached = (mask, torch.nonzero(mask[..., 0], as_tuple=False))
            self._nonzero_cache[key] = cached
        return cached[1]

    def sample_indices(
        self, num: int, num_images: int, height: int, width: int, mask: Optional[Tensor], face: Optional[Tensor], device
    ) -> Int[Tensor, "num 3"]:
        n_face = int(round(num * self.config.face_fraction)) if face is not None else 0
        n_fg = int(round(num * self.config.foreground_fraction)) if mask is not None else 0
        parts = []
        for key, m, n in (("mask", mask, n_fg), ("face", face, n_face)):
            if n == 0:
                continue
            pool = self._nonzero(key, m)
            if len(pool) == 0:
                continue
            parts.append(pool[torch.randint(len(pool), (n,), device=pool.device)].to(device))
        rest = num - sum(len(p) for p in parts)
        scale = torch.tensor([num_images, height, width], device=device)
        parts.append((torch.rand((rest, 3), device=device) * scale).long())
        return torch.cat(parts)

    def collate_image_dataset_batch(self, batch: Dict, num_rays_per_batch: int, keep_full_image: bool = False):
        device = batch["image"].device
        num_images, height, width, _ = batch["image"].shape
        indices = self.sample_indices(
            num_rays_per_batch, num_images, height, width, batch.get("mask"), batch.get("face_mask"), device
        )
        c, y, x = (i.flatten().cpu() for i in torch.split(indices, 1, dim=-1))
        collated = {k: v[c, y, x] for k, v in batch.items() if k != "image_idx" and v is not None}
        indices[:, 0] = batch["image_idx"][c]
        collated["indices"] = indices
        if keep_full_image:
            collated["full_image"] = batch["image"]
        return collated


@dataclass
class HeadDataManagerConfig(VanillaDataManagerConfig):
    """Datamanager for FLAME-tracked heads (flame-video-data by default)."""

    _target: Type = field(default_factory=lambda: HeadDataManager)
    dataparser: FlameVideoDataParserConfig = field(default_factory=FlameVideoDataParserConfig)
    pixel_sampler: HeadPixelSamplerConfig = field(default_factory=HeadPixelSamplerConfig)


class HeadDataManager(VanillaDataManager[HeadDataset]):
    """VanillaDataManager with :class:`HeadDataset` and :class:`HeadPixelSampler`."""

    config: HeadDataManagerConfig


@dataclass
class TrackingDataManagerConfig(HeadDataManagerConfig):
    """Datamanager of photometric tracking: each step's rays come from the one frame the tracking schedule names."""

    _target: Type = field(default_factory=lambda: TrackingDataManager)
    schedule: TrackingScheduleConfig = field(default_factory=TrackingScheduleConfig)


class TrackingDataManager(HeadDataManager):
    """Serves the frame of each step of :class:`TrackingSchedule` (training images in frame order).

    The schedule is also put into the training dataset's metadata (``tracking_schedule``), which
    nerfstudio hands to the model, so the model and the datamanager share one schedule."""

    config: TrackingDataManagerConfig

    def __init__(self, config: TrackingDataManagerConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        frames = self.train_dataset.cameras.metadata["frame_index"].reshape(-1)
        self.order = torch.argsort(frames)  # tracked frame k is training image order[k]
        self.schedule = TrackingSchedule(config.schedule, len(frames))
        self.train_dataset.metadata["tracking_schedule"] = self.schedule
        self.train_dataset.metadata["tracked_frames"] = frames[self.order].tolist()
        self.train_dataset.metadata["image_frames"] = frames.tolist()

    def image_of_step(self, step: int) -> int:
        return int(self.order[self.schedule.position(step)])

    def next_train(self, step: int):
        self.train_count += 1
        image_batch = next(self.iter_train_image_dataloader)
        keep = torch.nonzero(image_batch["image_idx"].cpu() == self.image_of_step(step)).reshape(-1)
        if keep.numel() == 0:
            raise RuntimeError("the tracking datamanager needs every training image cached (train-num-images-to-sample-from -1)")
        k = int(keep[0])
        one = {key: (v[k : k + 1] if isinstance(v, Tensor) and v.shape[:1] == image_batch["image_idx"].shape else v)
               for key, v in image_batch.items()}  # fmt: skip
        batch = self.train_pixel_sampler.sample(one)
        ray_bundle = self.train_ray_generator(batch["indices"])
        return ray_bundle, batch
