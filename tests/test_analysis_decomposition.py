"""Tests of analysis.decomposition: constant shift vs token-level change, on hand-made rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import SMALL, row

from analysis.decomposition import decompose_shift, decomposition, split_sum_of_squares
from analysis.synthetic import synthetic_scores


def test_decomposition_pure_shift_and_token_level():
    rng = np.random.default_rng(0)
    rows = []
    for g in ("a", "b", "c"):
        base = rng.uniform(0.5, 1.2, 10)
        rows.append(row(g, "none", base))
        rows.append(row(g, "low", base - 0.2, level=1))  # pure constant shift
        rows.append(row(g, "high", base + 0.1 * np.tile([1.0, -1.0], 5), level=1))  # zero-mean token-level change
        rows.append(row(g, "placebo", base + 0.1 + 0.3 * np.tile([1.0, -1.0], 5)))  # mixed: 0.01 / (0.01 + 0.09)
    scores = pd.DataFrame(rows)
    inst = decompose_shift(scores)
    low, high, placebo = (inst[inst["variant"] == v] for v in ("low", "high", "placebo"))
    np.testing.assert_allclose(low["share_shift"], 1.0, atol=1e-9)
    np.testing.assert_allclose(low["mean_shift"], -0.2, atol=1e-9)
    np.testing.assert_allclose(low["rmse_meanshift"], 0.0, atol=1e-9)
    np.testing.assert_allclose(low["rmse_unchanged"], 0.2, atol=1e-9)
    np.testing.assert_allclose(high["share_shift"], 0.0, atol=1e-9)
    np.testing.assert_allclose(high["rmse_meanshift"], 0.1, atol=1e-9)
    np.testing.assert_allclose(placebo["share_shift"], 0.01 / 0.10, atol=1e-9)
    _, summary = decomposition(scores, metrics=("temperature",), n_boot=50)
    s = summary.set_index("variant")
    assert s.loc["low", "pooled_share_shift"] == pytest.approx(1.0)
    assert s.loc["high", "share_shift"] == pytest.approx(0.0, abs=1e-9)
    assert s.loc["low", "rmse_meanshift_global"] == pytest.approx(0.0, abs=1e-9)


def test_sum_of_squares_identity():
    d = np.random.default_rng(1).normal(0.3, 0.2, 37)
    parts = split_sum_of_squares(d)
    assert parts["ss_total"] == pytest.approx(parts["ss_shift"] + parts["ss_residual"])
    assert parts["ss_shift"] == pytest.approx(37 * d.mean() ** 2)
    assert math.isnan(split_sum_of_squares(np.zeros(4))["share_shift"])


def test_decomposition_refuses_free_running():
    scores = synthetic_scores(n_groups=4, n_tokens=(5, 20), seed=7, **{k: v for k, v in SMALL.items() if k != "n_tokens"})
    with pytest.raises(ValueError, match="teacher-forced"):
        decompose_shift(scores)
    same_length = pd.DataFrame([row("a", "none", [1.0, 1.0], text="one"), row("a", "low", [0.8, 0.8], text="two")])
    with pytest.raises(ValueError, match="free-running"):
        decompose_shift(same_length)
