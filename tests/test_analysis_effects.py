"""Tests of analysis.effects: paired differences, effect and consistency tables, breakdowns, dose-response, on planted data."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import SMALL, cell, row

from analysis.effects import (
    breakdowns,
    consistency_table,
    dose_response,
    effect_table,
    paired_differences,
    target_tracking,
)
from analysis.schema import add_means
from analysis.statistics import paired_stats, sign_test_p, wilcoxon_p
from analysis.synthetic import synthetic_scores


def test_planted_shift_is_recovered(planted):
    table = consistency_table(planted, n_boot=1000, seed=0)
    low, high = cell(table, "low"), cell(table, "high")
    assert low["n_groups"] == 60
    assert low["consistency"] == 1.0 and high["consistency"] == 1.0
    assert low["delta_lo"] <= -0.3 <= low["delta_hi"]
    assert high["delta_lo"] <= 0.3 <= high["delta_hi"]
    assert abs(low["delta"] + 0.3) < 0.03 and abs(high["delta"] - 0.3) < 0.03
    for r in (low, high):
        assert r["p_sign"] < 0.001 and r["p_wilcoxon"] < 0.001
    assert low["d_z"] < -2 and high["d_z"] > 2
    assert low["rank_biserial"] == -1.0 and high["rank_biserial"] == 1.0
    assert math.isclose(low["mean_value"] - low["mean_baseline"], low["delta"], abs_tol=1e-9)
    base = cell(table, "none")
    assert base["n_groups"] == 60 and np.isnan(base["delta"])
    # placebo with no planted shift: CI around 0, no direction
    placebo = cell(table, "placebo")
    assert placebo["delta_lo"] <= 0.0 <= placebo["delta_hi"]
    assert np.isnan(placebo["consistency"])
    assert placebo["abs_delta"] < 1.5 * 0.05 * math.sqrt(2 / math.pi)  # E|N(0, sd)| = sd * sqrt(2/pi)


def test_no_shift_gives_chance_consistency():
    scores = synthetic_scores(n_groups=200, shifts={"low": 0.0, "high": 0.0}, noise=0.05, seed=3, **SMALL)
    table = consistency_table(scores, n_boot=500, seed=0)
    for variant in ("low", "high"):
        r = cell(table, variant)
        assert 0.35 <= r["consistency"] <= 0.65
        assert r["consistency_lo"] <= 0.5 <= r["consistency_hi"]
        assert r["p_sign"] > 0.05 and r["p_wilcoxon"] > 0.05
        assert r["delta_lo"] <= 0.0 <= r["delta_hi"]


def test_dose_response_spearman():
    scores = synthetic_scores(n_groups=30, shifts={"low": -0.1, "high": 0.1}, levels=(1, 2, 3), dose=True, noise=0.02,
                              seed=2, **SMALL)
    levels, spearman = dose_response(scores, n_boot=200)
    rho = spearman.set_index(["metric", "on"]).loc[("temperature", "delta"), "rho"]
    assert rho > 0.8
    assert spearman.set_index(["metric", "on"]).loc[("temperature", "mean"), "rho"] > 0.3
    t = levels[levels["metric"] == "temperature"].sort_values("signed_level")
    assert list(t["signed_level"]) == [-3, -2, -1, 1, 2, 3]
    assert np.all(np.diff(t["delta"].to_numpy()) > 0)
    np.testing.assert_allclose(t["delta"], 0.1 * t["signed_level"], atol=0.02)


def test_pairing_uses_same_seed_and_averages_within_group():
    rows = [
        row("a", "none", [1.0], seed=0), row("a", "none", [2.0], seed=1),
        row("a", "low", [1.9], seed=1, level=1, command_id="l0"),  # paired with seed 1: -0.1 (not 1.9 - 1.5)
        row("b", "none", [1.0]), row("b", "low", [0.9], level=1, command_id="l0"),
        row("b", "low", [0.7], level=2, command_id="l1"),  # group b: mean of -0.1 and -0.3
    ]
    pairs = paired_differences(pd.DataFrame(rows))
    deltas = pairs.set_index("group_id")["delta"]
    assert deltas["a"] == pytest.approx(-0.1)
    assert deltas["b"] == pytest.approx(-0.2)
    assert pairs.set_index("group_id").loc["b", "n_rows"] == 2


def test_rows_without_baseline_are_dropped(caplog):
    rows = [row(g, v, [1.0 if v == "none" else 0.8]) for g in ("a", "b") for v in ("none", "low")]
    rows.append(row("c", "low", [0.5]))  # group without a no-command row
    with caplog.at_level(logging.WARNING):
        pairs = paired_differences(pd.DataFrame(rows))
    assert set(pairs["group_id"]) == {"a", "b"}
    assert "no no-command row" in caplog.text


def test_all_zero_differences():
    d = np.zeros(10)
    assert wilcoxon_p(d) == 1.0 and sign_test_p(d) == 1.0
    s = paired_stats(d, direction=-1, n_boot=50)
    assert s["p_wilcoxon"] == 1.0 and s["p_sign"] == 1.0
    assert s["consistency"] == 0.0 and s["delta"] == 0.0
    assert np.isnan(s["d_z"]) and np.isnan(s["rank_biserial"])
    # identical commanded and no-command values: the table works and says "no effect"
    rows = [row(g, v, [0.8, 0.9]) for g in "abc" for v in ("none", "low")]
    table = consistency_table(pd.DataFrame(rows), n_boot=50)
    assert cell(table, "low")["p_wilcoxon"] == 1.0


def test_fewer_than_two_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 groups"):
        paired_stats([0.1], direction=1)
    one = pd.DataFrame([row("a", "none", [1.0]), row("a", "high", [1.2], level=1)])
    with pytest.raises(ValueError, match="only 1 group"):
        consistency_table(one, n_boot=10)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        consistency_table(pd.DataFrame())
    with pytest.raises(ValueError, match="lack columns"):
        consistency_table(pd.DataFrame({"group_id": ["a"], "variant": ["none"]}))
    with pytest.raises(ValueError, match="unknown variant"):
        consistency_table(pd.DataFrame([row("a", "louder", [1.0])]))
    with pytest.raises(TypeError):
        consistency_table([1, 2])


def test_empty_response_rows_are_dropped():
    rows = [row(g, v, [1.0 if v == "none" else 0.7]) for g in "abc" for v in ("none", "low")]
    rows.append(row("d", "none", [1.0]))
    rows.append(row("d", "low", []))  # empty response: no mean
    scores = add_means(pd.DataFrame(rows))
    assert np.isnan(scores["mean_temperature"].iloc[-1]) and scores["n_tokens"].iloc[-1] == 0
    table = consistency_table(scores, n_boot=50)
    assert cell(table, "low")["n_groups"] == 3


def test_breakdowns(planted):
    tables = breakdowns(planted, n_boot=100)
    assert set(tables) == {"by_command_id", "by_command_split", "by_placement", "by_level"}
    assert set(tables["by_command_split"]["command_split"]) == {"train"}  # one phrasing: train only
    two = synthetic_scores(n_groups=10, phrasings=2, placements=("before", "system"), n_tokens=6, seed=4)
    by_split = effect_table(two, by="command_split", n_boot=100, include_baseline=False)
    assert set(by_split["command_split"]) == {"train", "heldout"}
    assert cell(by_split, "low", command_split="heldout")["delta"] < 0
    by_place = effect_table(two, by=["placement"], n_boot=100, include_baseline=False)
    assert set(by_place["placement"]) == {"before", "system"}


def test_small_breakdown_cells_are_skipped(caplog):
    scores = synthetic_scores(n_groups=6, seed=5, **SMALL)
    scores.loc[(scores["variant"] == "high") & (scores["group_id"] != "g0000"), "command_id"] = "high_common"
    with caplog.at_level(logging.DEBUG, logger="analysis.effects"):
        table = effect_table(scores, by="command_id", n_boot=50, include_baseline=False)
    assert "high_0" not in set(table["command_id"])  # only one group
    assert "high_common" in set(table["command_id"])
    assert "cell left out" in caplog.text  # each cell at DEBUG, one summary line at INFO
    assert "are left out" in caplog.text


def test_target_tracking():
    rows = [row("a", "none", [1.0]), row("a", "low", [0.3], target_temperature=0.2),
            row("b", "low", [0.25], target_temperature=0.2), row("b", "high", [1.5], target_temperature=None)]
    out = target_tracking(pd.DataFrame(rows))
    assert list(out["target_temperature"]) == [0.2]
    assert out["n_rows"].iloc[0] == 2
    assert out["mae"].iloc[0] == pytest.approx((0.1 + 0.05) / 2)
    assert target_tracking(pd.DataFrame([row("a", "none", [1.0])])).empty
