"""Tests of analysis.text_effects: distinct-n, self-BLEU and planted text diversity."""

from __future__ import annotations

import math

import pytest
from analysis_helpers import SMALL, cell

from analysis.synthetic import synthetic_scores
from analysis.text_effects import distinct_n, instance_text_metrics, self_bleu, text_effects, tokenize


def test_distinct_n_hand_computed():
    assert tokenize("Hi, there!") == ["hi", ",", "there", "!"]
    texts = ["a b a b", "A c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)  # {a, b, c} of a b a b a c
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab ba ab | ac (no n-gram across texts)
    assert distinct_n(texts, 3) == pytest.approx(2 / 2)  # aba bab
    assert math.isnan(distinct_n(["a"], 2))


def test_self_bleu():
    sentence = "the quick brown fox jumps over the lazy dog near the river bank"
    assert self_bleu([sentence] * 3) > 0.99
    different = ["alpha beta gamma delta epsilon zeta", "one two three four five six", "red green blue cyan magenta yellow"]
    assert self_bleu(different) < 0.05
    assert math.isnan(self_bleu([sentence]))


def test_text_effects_planted_diversity():
    # low commands draw words from a smaller vocabulary: fewer distinct words than the no-command text
    scores = synthetic_scores(n_groups=12, n_tokens=(15, 25), seeds=(0, 1, 2), texts=True, seed=8,
                              **{k: v for k, v in SMALL.items() if k != "n_tokens"})
    table = text_effects(scores, n_boot=200)
    low, high = cell(table, "low", "distinct_1"), cell(table, "high", "distinct_1")
    assert low["delta_hi"] < 0 and high["delta_lo"] > 0
    assert cell(table, "low", "self_bleu")["delta"] > 0
    assert set(table["metric"]) >= {"distinct_1", "distinct_2", "distinct_3", "self_bleu", "words", "tokens"}
    instances = instance_text_metrics(scores)
    assert (instances["n_samples"] == 3).all()
    with pytest.raises(ValueError, match="text"):
        instance_text_metrics(scores.drop(columns="text"))
