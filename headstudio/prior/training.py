"""Training the prior on a scan set: an auto-decoder over identity, appearance and expression codes
(Giebenhain et al. 2024, supp. B.3.3).

Adam with the paper's learning rates (networks 5e-4, canonical codes 2e-3, expression codes 1e-2),
halved every ``halve_every`` epochs; the correspondence loss only in the first half. An epoch is one
pass over the scans in batches of ``batch_scans``; each scan contributes random rows of its
precomputed samples. Checkpoints hold only tensors and plain data, so they load with
``torch.load(weights_only=True)``; training resumes from one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from headstudio.data.errors import DataError
from headstudio.data.scans import ScanSet
from headstudio.fields.nphm_anchors import AnchorLayout, build_anchor_layout
from headstudio.prior.losses import LossWeights, prior_losses
from headstudio.prior.model import CPU_PRESET, NPHMPrior, PriorSizes
from headstudio.utils.atomic import atomic_path

CHECKPOINT_FORMAT = "headstudio-nphm-prior"
CHECKPOINT_VERSION = 1


@dataclass
class PriorTrainConfig:
    preset: Literal["paper", "cpu"] = "paper"
    """Network sizes: MonoNPHM's ('paper', supp. B.1) or headstudio's CPU preset (narrower, shallower)."""
    epochs: int = 2500
    """Passes over the scans (supp. B.3.3: 2500)."""
    batch_scans: int = 64
    """Scans per step (supp. B.3.3: batch size 64)."""
    surface_points: int = 1000
    """Surface samples per scan and step (the public code: 750 face + 250 outer face)."""
    near_points: int = 500
    """Near-surface and box samples per scan and step."""
    corr_points: int = 250
    """Correspondences per scan and step (the public code: 250)."""
    lr_networks: float = 5e-4
    """Adam learning rate of the networks (supp. B.3.3)."""
    lr_codes: float = 2e-3
    """Of the canonical (geometry, appearance) codes (supp. B.3.3)."""
    lr_expression: float = 1e-2
    """Of the expression codes (supp. B.3.3)."""
    halve_every: int = 500
    """Epochs between halvings of every learning rate (supp. B.3.3: 500)."""
    correspondence_fraction: float = 0.5
    """Share of training with the correspondence loss (supp. B.3.2: the first half)."""
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)


def sizes_of(preset: str) -> PriorSizes:
    return PriorSizes() if preset == "paper" else CPU_PRESET


def layout_for(scans: ScanSet) -> tuple[AnchorLayout, np.ndarray]:
    """The anchor layout on the set's FLAME model (its neutral mean head) and the mean anchors."""
    from headstudio.flame.model import FlameModel

    model_path = scans.root / scans.manifest.get("flame_model", "flame/generic_model.pkl")
    flame = FlameModel.from_file(model_path).double()
    out = flame()
    layout = build_anchor_layout(out.vertices[0].numpy(), flame.full_landmarks(out.vertices)[0].numpy(), flame.region_masks)
    scale = float(scans.manifest.get("world_scale", 4.0))
    return layout, out.vertices[0].numpy()[layout.vertex_ids] * scale


class ScanBatches:
    """Every scan in memory; random rows per scan and step."""

    KEYS = ("surface_points", "surface_normals", "surface_colors", "near_points", "near_colors", "corr_posed", "corr_canonical")

    def __init__(self, scans: ScanSet, layout: AnchorLayout, device: torch.device) -> None:
        data = [scans.load(k) for k in range(len(scans))]
        self.arrays = {k: torch.as_tensor(np.stack([d[k] for d in data]), dtype=torch.float32, device=device) for k in self.KEYS}
        self.anchors = torch.as_tensor(np.stack([d["vertices"][layout.vertex_ids] for d in data]), dtype=torch.float32, device=device)
        ids = sorted({s.identity for s in scans.scans})
        self.identity = torch.tensor([ids.index(s.identity) for s in scans.scans], device=device)
        self.num_identities = len(ids)

    def __len__(self) -> int:
        return self.identity.shape[0]

    def batch(self, scans: torch.Tensor, counts: dict[str, int], gen: torch.Generator) -> dict[str, torch.Tensor]:
        out = {"identity": self.identity[scans], "scan": scans, "anchors": self.anchors[scans]}
        for prefix, n in counts.items():
            keys = [k for k in self.KEYS if k.startswith(prefix)]
            total = self.arrays[keys[0]].shape[1]
            rows = torch.randint(0, total, (len(scans), n), generator=gen, device=scans.device)
            for k in keys:
                out[k] = torch.gather(self.arrays[k][scans], 1, rows[..., None].expand(-1, -1, 3))
        return out


def _optimizer(model: NPHMPrior, cfg: PriorTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        [
            {"params": model.network_parameters(), "lr": cfg.lr_networks},
            {"params": [model.z_geo.weight, model.z_app.weight], "lr": cfg.lr_codes},
            {"params": [model.z_exp.weight], "lr": cfg.lr_expression},
        ]
    )


def save_checkpoint(path: Path, model: NPHMPrior, optimizer, epoch: int, cfg: PriorTrainConfig, scans: ScanSet) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "sizes": model.sizes.as_dict(),
        "layout": model.anchor_vertices.cpu(),
        "num_pairs": model.num_pairs,
        "mean_anchors": model.field.anchors.mean.cpu(),
        "num_identities": model.z_geo.num_embeddings,
        "num_scans": model.z_exp.num_embeddings,
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "config": {k: v for k, v in asdict(cfg).items()},
        "scans": [s.file for s in scans.scans],
        "scan_set": str(scans.root),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[NPHMPrior, dict]:
    """The prior and the raw checkpoint; one-line errors for files that are not headstudio priors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prior checkpoint not found")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        raise DataError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a headstudio NPHM prior checkpoint (format {ck.get('format') if isinstance(ck, dict) else type(ck).__name__!r})")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise DataError(f"{path}: prior checkpoint version {ck.get('version')}, this headstudio reads {CHECKPOINT_VERSION}")
    layout = AnchorLayout(ck["layout"].numpy(), int(ck["num_pairs"]))
    model = NPHMPrior(layout, ck["mean_anchors"], int(ck["num_identities"]), int(ck["num_scans"]), PriorSizes.from_dict(ck["sizes"]))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise DataError(f"{path}: the checkpoint's weights do not fit its model ({str(exc).splitlines()[0]})") from None
    return model.to(device), ck


def train_prior(
    scans: ScanSet,
    cfg: PriorTrainConfig,
    output: Path,
    resume: bool = False,
    device: str = "cpu",
    progress: Optional[Callable[[int, int, dict[str, float]], None]] = None,
    log_dir: Optional[Path] = None,
    save_every: int = 50,
    sizes: Optional[PriorSizes] = None,
) -> dict:
    """Train (or resume) and write ``output``; returns the final losses and timings.

    ``sizes`` overrides the preset's network sizes (tests use tiny ones).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    layout, mean = layout_for(scans)
    data = ScanBatches(scans, layout, torch.device(device))
    start_epoch = 0
    if resume and Path(output).exists():
        model, ck = load_checkpoint(output, device)
        optimizer = _optimizer(model, cfg)
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch = int(ck["epoch"])
    else:
        sizes = sizes if sizes is not None else sizes_of(cfg.preset)
        model = NPHMPrior(layout, torch.as_tensor(mean), data.num_identities, len(data), sizes).to(device)
        optimizer = _optimizer(model, cfg)
    base_lrs = [cfg.lr_networks, cfg.lr_codes, cfg.lr_expression]
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    counts = {"surface": cfg.surface_points, "near": cfg.near_points, "corr": cfg.corr_points}
    steps_per_epoch = math.ceil(len(data) / cfg.batch_scans)
    t0, last = time.perf_counter(), {}
    for epoch in range(start_epoch, cfg.epochs):
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * 0.5 ** (epoch // max(cfg.halve_every, 1))
        order = torch.randperm(len(data), generator=gen, device=device)
        with_corr = epoch < cfg.correspondence_fraction * cfg.epochs
        for b in range(steps_per_epoch):
            batch = data.batch(order[b * cfg.batch_scans : (b + 1) * cfg.batch_scans], counts, gen)
            losses = prior_losses(model, batch, cfg.weights, with_corr)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            last = {k: float(v.detach()) for k, v in losses.items()} | {"total": float(total.detach())}
        if writer is not None:
            for k, v in last.items():
                writer.add_scalar(f"prior/{k}", v, epoch)
        if progress is not None:
            progress(epoch + 1, cfg.epochs, last)
        if (epoch + 1) % save_every == 0 or epoch + 1 == cfg.epochs:
            save_checkpoint(output, model, optimizer, epoch + 1, cfg, scans)
    if start_epoch >= cfg.epochs:
        save_checkpoint(output, model, optimizer, cfg.epochs, cfg, scans)
    if writer is not None:
        writer.close()
    return {"losses": last, "seconds": time.perf_counter() - t0, "epochs": cfg.epochs - start_epoch}
