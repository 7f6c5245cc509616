"""Shared helpers of the training tests: a fast tiny-model SteeringConfig and a copy of the heads' weights
(the control-row fixtures are in conftest.py)."""

from pathlib import Path

import torch

from steerdeco import AutoDecoModel
from steerdeco.training import SteeringConfig
from steerdeco.training.synthetic import COMMANDS

REPO = Path(__file__).resolve().parents[1]
VARIANTS_PER_GROUP = 1 + len(COMMANDS)


def config(tmp_path, **overrides) -> SteeringConfig:
    """A fast tiny-model configuration; the backbone cache lives in tmp_path/cache."""
    values = dict(
        output_dir=str(tmp_path / "out"),
        model_name_or_path="tiny",
        max_steps=6,
        logit_top_k=32,
        logit_bins=8,
        learning_rate=3e-3,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
        cache_dir=str(tmp_path / "cache"),
        seed=0,
        heads_mlp_width=192,
        heads_context_features=True,
    )
    values.update(overrides)
    return SteeringConfig(**values)


def heads_state(model: AutoDecoModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.heads.state_dict().items()}
