"""``tensorf-local-deform``: Chen et al. 2023 (local deformation fields on a TensoRF head) as a nerfstudio method."""

from headstudio.method_configs.common import adam_exponential, head_method
from headstudio.models.tensorf_local_deform import TensoRFLocalDeformModelConfig

MAX_ITERS = 30000  # TensoRF's default length; Chen et al. 2023 do not state the joint-training length.

tensorf_local_deform = head_method(
    "tensorf-local-deform",
    "TensoRF canonical head with local deformation fields on facial keypoints (Chen et al. 2023)",
    model=TensoRFLocalDeformModelConfig(),
    optimizers={
        # TensoRF's rates for the grids and the decoder (nerfstudio's tensorf config).
        "fields": adam_exponential(1e-3, 1e-4, MAX_ITERS),
        "encodings": adam_exponential(2e-2, 2e-3, MAX_ITERS),
        # Ours: Chen et al. 2023 give no rates for the deformation fields and the codes.
        "deformation": adam_exponential(5e-4, 5e-5, MAX_ITERS),
        "appearance_codes": adam_exponential(1e-3, 1e-4, MAX_ITERS),
    },
    max_iters=MAX_ITERS,
    rays_per_batch=4096,
    chunk=1 << 13,
)
