"""Tests of analysis.statistics: the paired tests and effect sizes against hand-computed values, a seeded bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.statistics import cohens_dz, paired_stats, rank_biserial, sign_test_p, wilcoxon_p


def test_hand_computed_tests_and_effect_sizes():
    d = np.array([1.0, 2.0, 3.0, -1.0])
    assert cohens_dz(d) == pytest.approx(1.25 / np.std(d, ddof=1))
    # |d| ranks: 1 -> 1.5, 2 -> 3, 3 -> 4, |-1| -> 1.5; R+ = 8.5, R- = 1.5
    assert rank_biserial(d) == pytest.approx((8.5 - 1.5) / 10.0)
    assert sign_test_p(np.array([1, 1, 1, 1, 1, 0.0])) == pytest.approx(2 * 0.5**5)
    untied = np.array([1.0, 2.0, 3.0, -1.5])  # ranks 1, 3, 4 positive, 2 negative
    assert rank_biserial(untied) == pytest.approx((8 - 2) / 10)
    assert wilcoxon_p(untied) == pytest.approx(stats.wilcoxon(untied, method="exact").pvalue)
    # exact two-sided p of 5 positive differences: 2 / 2**5
    assert wilcoxon_p(np.array([0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(2 / 32)


def test_bootstrap_is_seeded():
    d = np.random.default_rng(0).normal(0.1, 1.0, 50)
    a, b = paired_stats(d, 1, n_boot=300, seed=5), paired_stats(d, 1, n_boot=300, seed=5)
    c = paired_stats(d, 1, n_boot=300, seed=6)
    assert a == b
    assert (a["delta_lo"], a["delta_hi"]) != (c["delta_lo"], c["delta_hi"])
