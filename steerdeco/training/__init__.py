"""Training AutoDeco heads to obey randomness commands (trl ``SFTTrainer`` subclass, ranking losses,
backbone cache, pickle-free checkpoints, ordering metrics).

    >>> from steerdeco.training import SteeringConfig, SteeringTrainer
    >>> trainer = SteeringTrainer(args=SteeringConfig(output_dir="out", dataset_path="control_data/demo"))
    >>> trainer.train(); trainer.save_model()

The command line is ``python -m steerdeco.train --config configs/head_only.yaml`` (see
:mod:`steerdeco.train`).
"""

from ..loading import load_base_model, load_trained_model
from .cache import BackboneCache, build_backbone_cache, load_or_build_cache
from .collator import SteeringCollator, encode_groups
from .config import SteeringConfig
from .evaluation import evaluate_ordering, summarize_ordering
from .model import SteeringModel, build_model
from .objective import SteeringObjective
from .trainer import SteeringTrainer

__all__ = [
    "BackboneCache",
    "SteeringCollator",
    "SteeringConfig",
    "SteeringModel",
    "SteeringObjective",
    "SteeringTrainer",
    "build_backbone_cache",
    "build_model",
    "encode_groups",
    "evaluate_ordering",
    "load_base_model",
    "load_or_build_cache",
    "load_trained_model",
    "summarize_ordering",
]
