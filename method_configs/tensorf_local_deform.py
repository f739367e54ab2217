"""``tensorf-local-deform``: the method of seed 000 as a nerfstudio method."""

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from headstudio.data.datamanager import HeadDataManagerConfig
from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig
from headstudio.models.tensorf_local_deform import TensoRFLocalDeformModelConfig
from headstudio.pipeline import HeadPipelineConfig
from headstudio.schedulers import ExponentialDecayConfig

MAX_ITERS = 30000  # TensoRF's default length; seed 000 does not state the joint-training length.


def _adam(lr: float, lr_final: float) -> dict:
    return {
        "optimizer": AdamOptimizerConfig(lr=lr),
        "scheduler": ExponentialDecayConfig(lr_final=lr_final, max_steps=MAX_ITERS),
    }


tensorf_local_deform = MethodSpecification(
    config=TrainerConfig(
        method_name="tensorf-local-deform",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        steps_per_eval_all_images=1_000_000,
        max_num_iterations=MAX_ITERS,
        mixed_precision=False,
        pipeline=HeadPipelineConfig(
            datamanager=HeadDataManagerConfig(
                dataparser=FlameVideoDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=TensoRFLocalDeformModelConfig(eval_num_rays_per_chunk=1 << 13),
        ),
        optimizers={
            # TensoRF's rates for the grids and the decoder (nerfstudio's tensorf config).
            "fields": _adam(1e-3, 1e-4),
            "encodings": _adam(2e-2, 2e-3),
            # Ours: seed 000 gives no rates for the deformation fields and the codes.
            "deformation": _adam(5e-4, 5e-5),
            "appearance_codes": _adam(1e-3, 1e-4),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 13),
        vis="viewer",
    ),
    description="TensoRF canonical head with local deformation fields on facial keypoints (Chen et al. 2023)",
)
