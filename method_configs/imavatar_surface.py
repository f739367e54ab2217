"""``imavatar-surface``: IMavatar (Zheng et al. 2022) as a nerfstudio method."""

from headstudio.method_configs.common import adam_step, head_method
from headstudio.models.imavatar_surface import IMavatarSurfaceModelConfig

MAX_ITERS = 300_000
"""Zheng et al. 2022, supp. 2.6: 60 epochs; at one 2048-pixel batch per frame, 60 x ~5000 frames of a paper subject."""


def _adam() -> dict:
    # Zheng et al. 2022, supp. 2.6: Adam, lr 1e-4, betas (0.9, 0.999), halved after epoch 40 of 60.
    return adam_step(1e-4, MAX_ITERS, gamma=0.5, milestone_fraction=2.0 / 3.0)


imavatar_surface = head_method(
    "imavatar-surface",
    "IMavatar: implicit morphable head surface with forward skinning fields and implicit gradients",
    model=IMavatarSurfaceModelConfig(),
    optimizers={"fields": _adam(), "deformation": _adam(), "latent_codes": _adam()},
    max_iters=MAX_ITERS,
    rays_per_batch=2048,  # public configuration: 2048 pixels per step
    chunk=1 << 12,
    test_time_steps=0,  # IMavatar fits no codes at test time: unseen frames use a training frame's code
)
