"""``rignerf-star``: seed 000's RigNeRF* baseline as a nerfstudio method."""

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from headstudio.data.datamanager import HeadDataManagerConfig
from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig
from headstudio.models.rignerf_star import RigNeRFStarModelConfig
from headstudio.pipeline import HeadPipelineConfig
from headstudio.schedulers import ExponentialDecayConfig

MAX_ITERS = 1_000_000  # seed 000: "1M iterations with ray batch-size of 1550".


def _adam(lr: float, lr_final: float) -> dict:
    return {
        "optimizer": AdamOptimizerConfig(lr=lr),
        "scheduler": ExponentialDecayConfig(lr_final=lr_final, max_steps=MAX_ITERS),
    }


rignerf_star = MethodSpecification(
    config=TrainerConfig(
        method_name="rignerf-star",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        steps_per_eval_all_images=1_000_000,
        max_num_iterations=MAX_ITERS,
        mixed_precision=False,
        pipeline=HeadPipelineConfig(
            datamanager=HeadDataManagerConfig(
                dataparser=FlameVideoDataParserConfig(),  # folds the head pose into the cameras
                train_num_rays_per_batch=1550,  # seed 000
                eval_num_rays_per_batch=1550,
            ),
            model=RigNeRFStarModelConfig(eval_num_rays_per_chunk=1 << 12),
        ),
        optimizers={
            # NeRF's Adam rate, decayed exponentially 5e-4 -> 5e-5 (RigNeRF gives no rates; Nerfies/NeRF do).
            "fields": _adam(5e-4, 5e-5),
            "deformation": _adam(5e-4, 5e-5),
            "appearance_codes": _adam(5e-4, 5e-5),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 12),
        vis="viewer",
    ),
    description="RigNeRF* (seed 000's baseline): 3DMM-guided deformation + residual MLP, canonical NeRF",
)
