"""``imavatar-surface``: IMavatar (seed 002) as a nerfstudio method."""

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from headstudio.data.datamanager import HeadDataManagerConfig
from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig
from headstudio.models.imavatar_surface import IMavatarSurfaceModelConfig
from headstudio.pipeline import HeadPipelineConfig
from headstudio.schedulers import StepDecayConfig

MAX_ITERS = 300_000
"""Supp. 2.6: 60 epochs; at one 2048-pixel batch per frame, 60 x ~5000 frames of a paper subject."""


def _adam() -> dict:
    # Supp. 2.6: Adam, lr 1e-4, betas (0.9, 0.999), halved after epoch 40 of 60.
    return {
        "optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-8),
        "scheduler": StepDecayConfig(max_steps=MAX_ITERS, gamma=0.5, milestone_fraction=2.0 / 3.0),
    }


imavatar_surface = MethodSpecification(
    config=TrainerConfig(
        method_name="imavatar-surface",
        steps_per_eval_batch=500,
        steps_per_save=2000,
        steps_per_eval_all_images=1_000_000,
        max_num_iterations=MAX_ITERS,
        mixed_precision=False,
        pipeline=HeadPipelineConfig(
            datamanager=HeadDataManagerConfig(
                dataparser=FlameVideoDataParserConfig(),
                train_num_rays_per_batch=2048,  # public configuration: 2048 pixels per step
                eval_num_rays_per_batch=2048,
            ),
            model=IMavatarSurfaceModelConfig(eval_num_rays_per_chunk=1 << 12),
            test_time_steps=0,  # IMavatar fits no codes at test time: unseen frames use a training frame's code
        ),
        optimizers={"fields": _adam(), "deformation": _adam(), "latent_codes": _adam()},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 12),
        vis="viewer",
    ),
    description="IMavatar: implicit morphable head surface with forward skinning fields and implicit gradients",
)
