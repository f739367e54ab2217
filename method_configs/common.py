"""What the method configs share: Adam with a decay schedule, and the head TrainerConfig skeleton.

Each method file states only what its paper fixes (iterations, rays per batch, rates, the
model config); checkpointing, evaluation cadence, the viewer and the head pipeline are set here
once, so every method trains, resumes, evaluates and exports the same way.
"""

from __future__ import annotations

from typing import Dict, Optional

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.plugins.types import MethodSpecification

from headstudio.data.datamanager import HeadDataManagerConfig
from headstudio.dataparsers.flame_video import FlameVideoDataParserConfig
from headstudio.engine.schedulers import ExponentialDecayConfig, StepDecayConfig
from headstudio.pipelines.head_pipeline import HeadPipelineConfig


def adam_exponential(lr: float, lr_final: float, max_steps: int, eps: float = 1e-8) -> dict:
    """Adam whose rate decays exponentially from ``lr`` to ``lr_final`` over ``max_steps``."""
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=eps),
        "scheduler": ExponentialDecayConfig(lr_final=lr_final, max_steps=max_steps),
    }


def adam_step(lr: float, max_steps: int, gamma: float, milestone_fraction: float, eps: float = 1e-8) -> dict:
    """Adam at a constant ``lr`` multiplied by ``gamma`` once ``milestone_fraction`` of the steps have passed."""
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=eps),
        "scheduler": StepDecayConfig(max_steps=max_steps, gamma=gamma, milestone_fraction=milestone_fraction),
    }


def head_method(
    method_name: str,
    description: str,
    model: ModelConfig,
    optimizers: Dict[str, dict],
    max_iters: int,
    rays_per_batch: int,
    chunk: int,
    test_time_steps: Optional[int] = None,
) -> MethodSpecification:
    """A headstudio method: the FLAME video dataparser, the head datamanager and pipeline, the viewer."""
    pipeline = HeadPipelineConfig(
        datamanager=HeadDataManagerConfig(
            dataparser=FlameVideoDataParserConfig(),
            train_num_rays_per_batch=rays_per_batch,
            eval_num_rays_per_batch=rays_per_batch,
        ),
        model=model,
    )
    if test_time_steps is not None:
        pipeline.test_time_steps = test_time_steps
    model.eval_num_rays_per_chunk = chunk
    return MethodSpecification(
        config=TrainerConfig(
            method_name=method_name,
            steps_per_eval_batch=500,
            steps_per_save=2000,
            steps_per_eval_all_images=1_000_000,
            max_num_iterations=max_iters,
            mixed_precision=False,
            pipeline=pipeline,
            optimizers=optimizers,
            viewer=ViewerConfig(num_rays_per_chunk=chunk),
            vis="viewer",
        ),
        description=description,
    )
