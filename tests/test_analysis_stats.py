"""Statistics of the ``analysis`` package on seeded synthetic data with planted (known) answers."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.decomposition import decompose_shift, decomposition, split_sum_of_squares
from analysis.effects import (
    breakdowns,
    consistency_table,
    dose_response,
    effect_table,
    paired_differences,
    target_tracking,
)
from analysis.formatting import (
    format_ci,
    format_consistency_table,
    format_p,
    format_stats_table,
    markdown_table,
)
from analysis.schema import add_means
from analysis.statistics import cohens_dz, paired_stats, rank_biserial, sign_test_p, wilcoxon_p
from analysis.synthetic import synthetic_scores
from analysis.text_effects import distinct_n, instance_text_metrics, self_bleu, text_effects, tokenize
from analysis.trajectories import binned_trajectories, example_group, select_trajectory

SMALL = {"phrasings": 1, "placements": ("after",), "n_tokens": 8}


def row(group, variant, t, p=None, seed=0, level=0, command_id=None, command_split=None, placement=None, split="eval",
        **extra):
    t = np.asarray(t, dtype=float)
    return {
        "group_id": group, "prompt_id": group, "variant": variant, "level": level, "command_id": command_id,
        "command_split": command_split, "placement": placement, "split": split, "seed": seed,
        "temperature": t, "top_p": np.asarray(p if p is not None else np.full(t.size, 0.9), dtype=float), **extra,
    }


def cell(table, variant, metric="temperature", **keys):
    mask = (table["variant"] == variant) & (table["metric"] == metric)
    for k, v in keys.items():
        mask &= table[k] == v
    assert mask.sum() == 1, (variant, metric, keys)
    return table[mask].iloc[0]


# ----------------------------------------------------------------------------------------- consistency


@pytest.fixture(scope="module")
def planted():
    """Low shifts T by -0.3, high by +0.3, placebo by 0 (noise sd 0.05), 60 groups."""
    return synthetic_scores(n_groups=60, shifts={"low": -0.3, "high": 0.3, "placebo": 0.0}, noise=0.05, seed=1, **SMALL)


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


def test_bootstrap_is_seeded():
    d = np.random.default_rng(0).normal(0.1, 1.0, 50)
    a, b = paired_stats(d, 1, n_boot=300, seed=5), paired_stats(d, 1, n_boot=300, seed=5)
    c = paired_stats(d, 1, n_boot=300, seed=6)
    assert a == b
    assert (a["delta_lo"], a["delta_hi"]) != (c["delta_lo"], c["delta_hi"])


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


def test_formatting():
    assert format_ci(0.621, 0.55, 0.701) == "0.62 [0.55, 0.70]"
    assert format_ci(float("nan"), 0, 1) == "—"
    assert format_p(0.0001) == "<0.001" and format_p(0.0341) == "0.034" and format_p(0.5) == "0.50"
    md = markdown_table(pd.DataFrame({"a|b": [1.23456, float("nan")], "c": ["x", None]}), digits=2)
    lines = md.splitlines()
    assert lines[0] == "| a\\|b | c |" and lines[1] == "| --- | --- |"
    assert lines[2] == "| 1.23 | x |" and lines[3] == "| — | — |"


def test_consistency_markdown(planted):
    table = consistency_table(planted, n_boot=100)
    md = format_consistency_table(table)
    for header in ("Variant", "Avg T", "Delta T", "Consistency (T)", "Avg top-p", "Delta top-p", "Consistency (P)"):
        assert header in md.splitlines()[0]
    body = [line.split(" | ")[0].strip("| ") for line in md.splitlines()[2:]]
    assert body == ["Baseline", "Low", "High", "Placebo"]
    low_line = md.splitlines()[3]
    r = cell(table, "low")
    assert format_ci(r["delta"], r["delta_lo"], r["delta_hi"]) in low_line
    assert "p (Wilcoxon)" in format_stats_table(table)


def test_target_tracking():
    rows = [row("a", "none", [1.0]), row("a", "low", [0.3], target_temperature=0.2),
            row("b", "low", [0.25], target_temperature=0.2), row("b", "high", [1.5], target_temperature=None)]
    out = target_tracking(pd.DataFrame(rows))
    assert list(out["target_temperature"]) == [0.2]
    assert out["n_rows"].iloc[0] == 2
    assert out["mae"].iloc[0] == pytest.approx((0.1 + 0.05) / 2)
    assert target_tracking(pd.DataFrame([row("a", "none", [1.0])])).empty


def test_import_has_no_heavy_side_effects():
    code = "import sys, analysis; assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -------------------------------------------------------------------------------------- decomposition


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


# ------------------------------------------------------------------------------------------ text effects


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


# ------------------------------------------------------------------------------------------ trajectories


def test_select_trajectory(planted):
    group = example_group(planted)
    traj = select_trajectory(planted, group)
    assert list(dict.fromkeys(traj["variant"])) == ["none", "low", "high"]
    assert (traj.groupby("variant").size() == 8).all()
    with pytest.raises(ValueError, match="not in"):
        select_trajectory(planted, "nope")


def test_binned_trajectories_hand_computed():
    ramp = np.arange(10, dtype=float)
    rows = [row(g, "none", ramp, p=ramp / 10) for g in ("a", "b")]
    out = binned_trajectories(pd.DataFrame(rows), n_bins=5, variants=("none",))
    t = out[out["metric"] == "temperature"]
    np.testing.assert_allclose(t["mean"], [0.5, 2.5, 4.5, 6.5, 8.5])
    np.testing.assert_allclose(t["lo"], t["mean"])  # identical groups: zero-width band
    np.testing.assert_allclose(t["bin_center"], [0.1, 0.3, 0.5, 0.7, 0.9])
    absolute = binned_trajectories(pd.DataFrame(rows), n_bins=2, bin_width=3, variants=("none",), band="bootstrap", n_boot=20)
    np.testing.assert_allclose(absolute[absolute["metric"] == "temperature"]["mean"], [1.0, 4.0])
