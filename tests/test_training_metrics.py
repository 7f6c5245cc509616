"""steerdeco.training.metrics: running sums of the loss terms, mean T and P per variant and ordering."""

from types import SimpleNamespace

import pytest
import torch

from steerdeco.rows import VARIANTS
from steerdeco.training.metrics import SteeringMetrics, top_p_saturation


def batch_of_one_group(temperatures: list[float]):
    """One group (none, low, high) of two response positions each, the last one padding for the high row."""
    variant = torch.tensor([VARIANTS.index(v) for v in ("none", "low", "high")])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    temperature = torch.tensor([[t, t] for t in temperatures]) * mask
    outputs = SimpleNamespace(temperature=temperature, top_p=torch.full((3, 2), 0.9) * mask)
    inputs = {"response_mask": mask, "variant": variant, "command_split": torch.tensor([-1, 0, 0]),
              "groups": torch.zeros(3, dtype=torch.long)}
    return outputs, inputs


def test_metrics_average_since_the_last_log_and_reset():
    metrics = SteeringMetrics(["train"])
    for t_low, loss in ((0.5, 1.0), (1.5, 3.0)):
        outputs, inputs = batch_of_one_group([1.0, t_low, 2.0])
        metrics.record("train", {"ranking_temperature_loss": torch.tensor(loss)}, outputs, inputs)
    logged = metrics.averages(metrics.sums["train"], prefix="eval_")
    assert logged["eval_ranking_temperature_loss"] == pytest.approx(2.0)
    assert logged["eval_mean_temperature/low"] == pytest.approx(1.0) and logged["eval_mean_temperature/high"] == 2.0
    assert logged["eval_ordered_temperature/train"] == pytest.approx(0.5)  # ordered in the first batch, not in the second
    assert "eval_lm_loss" not in logged and "eval_mean_temperature/placebo" not in logged  # nothing counted
    metrics.reset("train")
    assert metrics.averages(metrics.sums["train"]) == {}
    assert metrics.averages(metrics.sums["eval"]) == {}  # train and eval keep separate sums


def test_a_top_p_head_saturated_without_a_command_is_flagged_from_the_logged_metrics():
    metrics = SteeringMetrics(["train"])
    outputs, inputs = batch_of_one_group([1.0, 0.5, 2.0])
    outputs.top_p = torch.full((3, 2), 0.9999)
    metrics.record("train", {}, outputs, inputs)
    warning = top_p_saturation(metrics.averages(metrics.sums["train"]))
    assert warning is not None and "0.9999" in warning and "--warmup_steps" in warning
    assert top_p_saturation({"mean_top_p/none": 0.99}) is None  # high but not where the loss is flat
    assert top_p_saturation({"mean_top_p/low": 1.0}) is None  # only the no-command rows say the head is stuck
