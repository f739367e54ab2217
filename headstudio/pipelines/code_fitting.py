"""Test-time optimisation of a frame's latent codes (Chen et al. 2023's "Ours" vs "Ours†").

Every network weight stays fixed; only the given frame's rows of the per-frame code tables
are fitted to the frame's image by photometric loss on random pixels.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import Model
from torch import Tensor

from headstudio.fields.frame_codes import FrameCodes


def optimise_frame_codes(
    model: Model,
    camera: Cameras,
    image: Float[Tensor, "H W 3"],
    codes: Sequence[FrameCodes],
    steps: int,
    lr: float = 1e-2,
    num_rays: int = 1024,
    seed: int = 0,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> list[float]:
    """Fit ``codes``' rows of the camera's frame to ``image``; returns the loss of each step.

    Only the code tables take gradients: every network parameter has ``requires_grad`` off
    for the duration, so autograd records only what depends on the codes. ``on_step(i, loss)``
    is called after each step (progress display)."""
    frame = int(camera.metadata["frame_index"].reshape(-1)[0])
    for table in codes:
        table.adopt(frame)
    params = [table.codes for table in codes]
    sparse = [table.sparse for table in codes]
    for table in codes:
        table.sparse = False  # dense gradients for torch.optim.Adam
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    bundle = camera.generate_rays(camera_indices=0, keep_shape=False)
    target = image.reshape(-1, 3).to(bundle.origins.device)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    losses = []
    try:
        with torch.enable_grad():
            for _ in range(steps):
                idx = torch.randint(0, target.shape[0], (min(num_rays, target.shape[0]),), generator=generator)
                idx = idx.to(target.device)
                rgb = model(bundle[idx])["rgb"]
                loss = F.mse_loss(rgb, target[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
                if on_step is not None:
                    on_step(len(losses) - 1, losses[-1])
    finally:
        for table, flag in zip(codes, sparse):
            table.sparse = flag
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return losses
