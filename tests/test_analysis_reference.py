"""analysis.reference: the no-command guard against heads not trained to steer (tiny model)."""

from __future__ import annotations

import pytest
import torch

from analysis.api import run_analysis
from analysis.options import ScoringOptions
from analysis.reference import reference_guard
from analysis.scorecard import scorecard
from analysis.scoring import score_rows
from steerdeco import AutoDecoModel
from steerdeco.testing import jitter_heads, tiny_model_and_tokenizer
from steerdeco.training.synthetic import synthetic_control_records


@pytest.fixture(scope="module")
def setup():
    base, tokenizer = tiny_model_and_tokenizer(seed=0)
    tokenizer.padding_side = "right"
    model = jitter_heads(AutoDecoModel(base), seed=1).eval()
    rows = synthetic_control_records(num_prompts=6, num_eval_prompts=3)
    options = ScoringOptions(protocols=("teacher_forced", "free_running"), seeds=(0, 1), max_new_tokens=4,
                             free_running_variants="none,low3,high3", progress=False)
    return base, tokenizer, model, rows, score_rows(model, tokenizer, rows, options)


def guard(reference, setup):
    _, tokenizer, _, rows, scores = setup
    return reference_guard(reference, tokenizer, rows, scores, seeds=(0, 1), max_new_tokens=4, n_boot=50, progress=False)


def test_the_same_heads_are_within_noise_of_themselves(setup):
    result = guard(setup[2], setup)
    for column in ("temperature", "top_p"):
        entry = result["parameters"][column]
        assert entry["median_log_ratio"] == pytest.approx(0.0, abs=1e-6) and entry["within"]
        assert entry["n_prompts"] == 6
    assert {"self_bleu", "distinct_2"} <= set(result["text"]) and result["n_text_prompts"] == 6


def test_heads_that_sample_hotter_without_a_command_fail_the_guard(setup):
    base, tokenizer, model, rows, scores = setup
    reference = AutoDecoModel(base, model.heads_config)
    reference.heads.load_state_dict(model.heads.state_dict())
    with torch.no_grad():
        reference.temperature_head.mlp[-1].bias.sub_(1.0)  # a lower T for every token
    result = guard(reference.eval(), setup)
    assert result["parameters"]["temperature"]["median_log_ratio"] > 0.05
    assert not result["parameters"]["temperature"]["within"]
    row = next(r for r in scorecard({"no_command_reference": result}) if r["key"] == "no_command_reference")
    assert row["status"] == "FAIL" and row["heldout_text"].startswith("T ")


def test_run_analysis_puts_the_guard_on_the_scorecard(setup):
    _, tokenizer, model, rows, _ = setup
    markdown, _ = run_analysis(model, tokenizer, rows, protocols=("teacher_forced",), split="all", n_boot=30,
                               progress=False, reference_model=model, figures=False)
    assert "No command: T, P and text as heads not trained to steer" in markdown
