"""steerdeco.training.evaluation: the ordering summary and report."""

import pytest

from steerdeco import AutoDecoModel
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.training import evaluate_ordering, summarize_ordering


def test_summarize_ordering_counts_groups_per_command_split():
    def row(group, variant, split, t, p=0.9):
        return {"group_id": group, "variant": variant, "command_split": split, "temperature": t, "top_p": p}

    records = [
        # group a: train phrasings ordered (levels averaged: low 0.3, high 1.3); heldout high below none
        row("a", "none", None, 1.0), row("a", "low", "train", 0.2), row("a", "low", "train", 0.4),
        row("a", "high", "train", 1.2), row("a", "high", "train", 1.4),
        row("a", "low", "heldout", 0.5), row("a", "high", "heldout", 0.9),
        # group b: train low above none
        row("b", "none", None, 1.0), row("b", "low", "train", 1.1), row("b", "high", "train", 1.5),
        # group c: only a placebo: nothing to compare
        row("c", "none", None, 1.0), row("c", "placebo", "train", 1.0),
    ]
    summary = summarize_ordering(records)["by_command_split"]
    assert summary["train"]["temperature_ordered"] == pytest.approx(0.5)  # a yes, b no, c not comparable
    assert summary["heldout"]["temperature_ordered"] == 0.0
    assert summary["train"]["units"] == 3
    assert summary["train"]["temperature"]["none"] == pytest.approx(1.0)
    assert summary["train"]["temperature"]["low"] == pytest.approx((0.3 + 1.1) / 2)
    assert summary["train"]["top_p_ordered"] == 0.0  # equal top-p is not ordered


def test_evaluate_ordering_is_usable_outside_the_trainer(eval_rows):
    base, tokenizer = tiny_model_and_tokenizer()
    model = AutoDecoModel(base)
    report = evaluate_ordering(model, tokenizer, eval_rows, batch_size=5)
    assert len(report["rows"]) == len(eval_rows)
    assert all(r["temperature"] == pytest.approx(1.0) for r in report["rows"])  # fresh heads: T = 1 everywhere
    assert report["by_command_split"]["train"]["temperature_ordered"] == 0.0
    assert report["by_command_split"]["train"]["units"] == 2
