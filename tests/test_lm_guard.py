"""The LM-loss guard (analysis.lm_guard) on tiny random models: base vs itself, perturbed weights, a LoRA adapter."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from analysis.lm_guard import compare, guard_examples, guard_markdown, lm_guard, response_losses
from analysis.scorecard import scorecard
from steerdeco import AutoDecoModel
from steerdeco.control.prompts import Prompt
from steerdeco.testing import tiny_model_and_tokenizer

QA = [
    ("Solve 12 times 7.", "12 times 7 is 84. The answer is 84."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Explain why the sky is blue in two sentences.", "Temperature and top-p control how random the sampling is."),
    ("Write a short poem about the sea at night.", "Once upon a time, a small robot learned to paint the stars."),
    ("List three facts about volcanoes.", "They erupt, they form islands, they are hot."),
    ("Give a deterministic answer.", "The quick brown fox jumps over the lazy dog."),
]


@pytest.fixture(scope="module")
def tiny():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # microsecond ops: extra threads only contend
    model, tokenizer = tiny_model_and_tokenizer(seed=0)
    yield model, tokenizer
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def examples():
    return [Prompt(f"q{i}", "test", "c", ({"role": "user", "content": q},), a) for i, (q, a) in enumerate(QA)]


def perturbed(model, scale: float = 0.5, seed: int = 1):
    """A copy of ``model`` with Gaussian noise on its (tied) embedding / lm_head weights."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = other.get_output_embeddings().weight
        weight.add_(scale * torch.randn(weight.shape, generator=generator))
    return other


def test_the_base_model_against_itself_changes_nothing_and_passes(tiny, examples):
    model, tokenizer = tiny
    result = lm_guard(model, tokenizer, examples, base_model=model, n_boot=200)
    assert result.relative_change == 0.0 and result.passed
    assert result.ci_low == result.ci_high == 0.0 and result.p_value is None
    assert result.base_loss == result.model_loss > 0 and result.backbone == "separate"
    assert result.n_examples == len(QA) and result.n_tokens > len(QA)


def test_heads_alone_leave_the_lm_loss_identical_by_construction(tiny, examples):
    model, tokenizer = tiny
    result = lm_guard(AutoDecoModel(model), tokenizer, examples)
    plain = lm_guard(model, tokenizer, examples, base_model=model)
    assert result.backbone == "unchanged" and result.relative_change == 0.0 and result.passed
    assert result.base_loss == plain.base_loss


def test_perturbed_lm_head_weights_raise_the_loss_and_fail_the_bound(tiny, examples):
    model, tokenizer = tiny
    result = lm_guard(perturbed(model), tokenizer, examples, base_model=model, n_boot=500)
    assert result.relative_change > result.bound and not result.passed
    assert result.model_loss > result.base_loss
    assert result.ci_low <= result.relative_change <= result.ci_high and result.ci_low > 0
    assert result.p_value is not None and result.p_value < 0.05


def test_a_lora_adapter_is_compared_with_itself_switched_off(tiny, examples):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "o_proj", "down_proj"]))
    untouched = lm_guard(AutoDecoModel(peft_model), tokenizer, examples)
    assert untouched.backbone == "lora" and untouched.relative_change == pytest.approx(0.0, abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(5.0 * torch.randn(parameter.shape, generator=generator))
    trained = lm_guard(AutoDecoModel(peft_model), tokenizer, examples, n_boot=200)
    plain = lm_guard(model, tokenizer, examples, base_model=model)
    assert trained.base_loss == pytest.approx(plain.base_loss, rel=1e-5)  # the adapter switched off is the base model
    assert trained.model_loss != pytest.approx(trained.base_loss, rel=1e-3)
    assert trained.passed == (abs(trained.relative_change) <= trained.bound)


def test_per_token_losses_do_not_depend_on_the_batch(tiny, examples):
    model, tokenizer = tiny
    one = response_losses(model, tokenizer, examples, batch_size=1)
    many = response_losses(model, tokenizer, examples, batch_size=4)
    assert [len(a) for a in one] == [len(a) for a in many]
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    capped = response_losses(model, tokenizer, examples, max_response_tokens=3)
    assert all(len(a) == 3 for a in capped)


def test_compare_refuses_unpaired_losses():
    with pytest.raises(ValueError, match="pairs examples"):
        compare([np.ones(3)], [np.ones(3), np.ones(2)])
    with pytest.raises(ValueError, match="same, non-zero number"):
        compare([np.ones(3)], [np.ones(2)])


def test_guard_examples_are_a_seeded_subset_with_completions(tmp_path):
    path = tmp_path / "answers.jsonl"
    lines = [{"id": f"a{i}", "prompt": f"question {i}", "completion": f"answer {i}"} for i in range(10)]
    lines.append({"id": "bare", "prompt": "no answer here"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    first = guard_examples(str(path), 4, seed=3)
    assert [p.id for p in first] == [p.id for p in guard_examples(str(path), 4, seed=3)]
    assert len(first) == 4 and all(p.completion for p in first)
    assert [p.id for p in first] == sorted(p.id for p in first)  # kept in source order
    assert [p.id for p in guard_examples(str(path), 4, seed=4)] != [p.id for p in first]
    kept = guard_examples(str(path), 20, seed=3, exclude_ids={"a0", "a1"})
    assert [p.id for p in kept] == [f"a{i}" for i in range(2, 10)]  # every example with a completion, less the excluded
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "no answer"}) + "\n")
    with pytest.raises(ValueError, match="no prompt has a 'completion'"):
        guard_examples(str(bare), 4)


def test_the_scorecard_row_and_report_section_follow_the_result(tiny, examples):
    model, tokenizer = tiny
    failing = lm_guard(perturbed(model), tokenizer, examples, base_model=model, n_boot=100).to_dict()
    row = next(r for r in scorecard({"lm_guard": failing}) if r["key"] == "lm_guard")
    assert row["issue"] == "12.5" and row["status"] == "FAIL" and row["heldout"] == failing["relative_change"]
    assert next(r for r in scorecard({}) if r["key"] == "lm_guard")["status"] == "n/a"
    text = "\n".join(guard_markdown(failing))
    assert "LM guard" in text and "FAIL" in text and guard_markdown(None) == []
