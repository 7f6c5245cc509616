"""steerdeco.training.checkpoint: pickle-free state files, and a killed run resumes to the same result."""

import json

import numpy as np
import pytest
import torch
from training_setup import config, heads_state
from transformers import TrainerCallback

from steerdeco.training import SteeringTrainer
from steerdeco.training.checkpoint import flatten_state, load_state, save_state, unflatten_state


def test_state_files_round_trip_without_pickle(tmp_path):
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0], "name": None}],
        "numpy": ("MT19937", np.arange(5, dtype=np.uint32), 2, 0, 0.0),
    }
    tensors, skeleton = flatten_state(state)
    json.dumps(skeleton)
    back = unflatten_state(skeleton, tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and 0 in back["state"]
    save_state(tmp_path, "opt", state)
    loaded = load_state(tmp_path, "opt")
    torch.testing.assert_close(loaded["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert loaded["numpy"][1].dtype == np.uint32 and loaded["numpy"][1].tolist() == list(range(5))
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state({"x": object()})


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("killed")


@pytest.mark.parametrize("mode", ["head_only", "lora_joint"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, train_rows, mode):
    extra = {"training_mode": mode, "save_strategy": "steps", "save_steps": 3, "max_steps": 6}
    if mode == "lora_joint":
        extra["lora_dropout"] = 0.1  # RNG state matters
    straight = SteeringTrainer(args=config(tmp_path / "a", **extra), train_dataset=train_rows)
    straight.train()
    killed = SteeringTrainer(args=config(tmp_path / "b", **extra), train_dataset=train_rows, callbacks=[KillAt(4)])
    with pytest.raises(RuntimeError, match="killed"):
        killed.train()
    resumed = SteeringTrainer(args=config(tmp_path / "b", resume_from_checkpoint="last", **extra), train_dataset=train_rows)
    resumed.train()
    expected, got = heads_state(straight.autodeco_model), heads_state(resumed.autodeco_model)
    # equal up to the order of float sums, which many CPU threads may change between runs; a step taken with
    # another dropout mask or optimizer state is off by about the learning rate
    close = {"atol": 1e-4, "rtol": 1e-3}
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **close)
    if mode == "lora_joint":
        from peft import get_peft_model_state_dict

        lora_a = get_peft_model_state_dict(straight.autodeco_model.base_model)
        lora_b = get_peft_model_state_dict(resumed.autodeco_model.base_model)
        for key in lora_a:
            torch.testing.assert_close(lora_b[key], lora_a[key], **close)
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    names = {p.name for p in checkpoint.rglob("*") if p.is_file()}
    assert {"heads.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.json"} <= names
    pickled = [p for p in (tmp_path / "b").rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert pickled == []
