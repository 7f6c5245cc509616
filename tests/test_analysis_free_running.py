"""analysis.collect, free-running side: which rows generate text, and the prompt-only baseline on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.collect import parse_variant_selection, prompt_only_scores, select_variant_rows
from steerdeco import AutoDecoModel
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.training.synthetic import synthetic_control_records


@pytest.fixture(scope="module")
def tiny_heads():
    base, tokenizer = tiny_model_and_tokenizer(seed=0)
    tokenizer.padding_side = "left"
    rows = [r for r in synthetic_control_records(num_prompts=3, num_eval_prompts=2) if r["split"] == "eval"]
    return AutoDecoModel(base), tokenizer, rows


def test_variant_selection_is_normalised_and_bad_items_are_named():
    assert parse_variant_selection("none, low-3,high:3,placebo,zero") == ("none", "low3", "high3", "placebo", "zero")
    assert parse_variant_selection(["low", "all"]) == ("all",)
    with pytest.raises(ValueError, match="unknown variant selector 'placebo2'"):
        parse_variant_selection("placebo2")
    with pytest.raises(ValueError, match="names no rows"):
        parse_variant_selection(" , ")


def test_selected_rows_follow_variant_level_and_named_zero():
    rows = synthetic_control_records(num_prompts=2, num_eval_prompts=1)
    picked = select_variant_rows(rows, "none,high1,zero")
    kinds = {(r["variant"], r["level"], r["target_temperature"]) for r in picked}
    assert kinds == {("none", 0, None), ("high", 1, None), ("low", 3, 0.0)}
    assert len(picked) == 2 * (1 + 2 + 1)  # per prompt: none, two high level-1 phrasings, the temperature-0 command
    assert select_variant_rows(rows, "all") == rows


def test_prompt_only_baseline_samples_the_plain_backbone_at_a_fixed_temperature(tiny_heads):
    model, tokenizer, rows = tiny_heads
    scores = prompt_only_scores(model, tokenizer, rows, seeds=(0, 1), temperature=1.5, max_new_tokens=5, batch_size=4,
                                progress=False)
    assert len(scores) == 2 * len(rows) and set(scores["seed"]) == {0, 1}
    assert {"text", "command", "target_temperature", "target_top_p", "command_split"} <= set(scores.columns)
    for t, p, text in zip(scores["temperature"], scores["top_p"], scores["text"], strict=True):
        assert 1 <= t.size <= 5 and np.all(t == np.float32(1.5)) and np.all(p == 1.0) and isinstance(text, str)
    again = prompt_only_scores(model, tokenizer, rows, seeds=(0, 1), temperature=1.5, max_new_tokens=5, batch_size=4,
                               progress=False)
    assert list(again["text"]) == list(scores["text"])  # seeded per batch
    plain = prompt_only_scores(model.base_model, tokenizer, rows, seeds=(0, 1), temperature=1.5, max_new_tokens=5,
                               batch_size=4, progress=False)
    assert list(plain["text"]) == list(scores["text"])  # the heads play no part
    with torch.no_grad():
        for parameter in model.heads.parameters():
            parameter.add_(1.0)
    moved = prompt_only_scores(model, tokenizer, rows, seeds=(0, 1), temperature=1.5, max_new_tokens=5, batch_size=4,
                               progress=False)
    assert list(moved["text"]) == list(scores["text"])


def test_prompt_only_baseline_refuses_a_bad_temperature_and_right_padding(tiny_heads):
    model, tokenizer, rows = tiny_heads
    with pytest.raises(ValueError, match="positive temperature, got 0"):
        prompt_only_scores(model, tokenizer, rows, temperature=0, progress=False)
    tokenizer.padding_side = "right"
    try:
        with pytest.raises(ValueError, match="left-padding tokenizer"):
            prompt_only_scores(model, tokenizer, rows, progress=False)
    finally:
        tokenizer.padding_side = "left"
