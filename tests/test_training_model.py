"""steerdeco.training.model and lora: the model a run builds, what it trains and what it leaves frozen."""

import pytest
import torch
from training_setup import config, heads_state

from steerdeco.training import SteeringTrainer, build_model


def test_build_model_is_seeded(tmp_path):
    first, _ = build_model(config(tmp_path, seed=5))
    second, _ = build_model(config(tmp_path, seed=5))
    third, _ = build_model(config(tmp_path, seed=6))
    a, b, c = heads_state(first), heads_state(second), heads_state(third)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_train_heads_freezes_the_other_head(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, train_heads="temperature"), train_dataset=train_rows)
    model = trainer.autodeco_model
    before = heads_state(model)
    trainer.train()
    after = heads_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("temperature_head") for k in changed)
    logged = set().union(*trainer.state.log_history)
    assert "ranking_temperature_loss" in logged and "ranking_top_p_loss" not in logged


@pytest.mark.parametrize("cache", [True, False])
def test_head_only_training_leaves_every_backbone_weight_bit_identical(tmp_path, train_rows, cache):
    trainer = SteeringTrainer(args=config(tmp_path, max_steps=4, backbone_cache=cache), train_dataset=train_rows)
    base = trainer.autodeco_model.base_model
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    heads_before = heads_state(trainer.autodeco_model)
    trainer.train()
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(heads_before[k], v) for k, v in heads_state(trainer.autodeco_model).items())
