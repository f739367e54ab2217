"""``rignerf-star``: the RigNeRF* baseline of Chen et al. 2023 (supp.) as a nerfstudio method."""

from headstudio.method_configs.common import adam_exponential, head_method
from headstudio.models.rignerf_star import RigNeRFStarModelConfig

MAX_ITERS = 1_000_000  # Chen et al. 2023, supp.: "1M iterations with ray batch-size of 1550".

rignerf_star = head_method(
    "rignerf-star",
    "RigNeRF* (the baseline of Chen et al. 2023): 3DMM-guided deformation + residual MLP, canonical NeRF",
    model=RigNeRFStarModelConfig(),
    optimizers={
        # NeRF's Adam rate, decayed exponentially 5e-4 -> 5e-5 (RigNeRF gives no rates; Nerfies/NeRF do).
        "fields": adam_exponential(5e-4, 5e-5, MAX_ITERS),
        "deformation": adam_exponential(5e-4, 5e-5, MAX_ITERS),
        "appearance_codes": adam_exponential(5e-4, 5e-5, MAX_ITERS),
    },
    max_iters=MAX_ITERS,
    rays_per_batch=1550,  # Chen et al. 2023, supp.; the dataparser folds the head pose into the cameras
    chunk=1 << 12,
)
