"""The steering measures (analysis.steering, analysis.text_effects.text_measures) on hand-built score tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.steering import (
    level_table,
    named_value_rows,
    parameter_measures,
    row_ratios,
    seen_targets,
    seen_values,
    strictly_ordered,
)
from analysis.synthetic import synthetic_scores
from analysis.text_effects import compression_ratio, instance_text_metrics, text_measures


def row(group, variant, t, level=0, split="train", p=None, target=None, target_p=None, prompt_split="eval", seed=0,
        command_id=None, text=None):
    """One teacher-forced score row with a constant T (and P) along a 4-token response."""
    record = {
        "group_id": group, "prompt_id": group, "variant": variant, "level": level,
        "command_id": command_id or (None if variant == "none" else f"{variant}-{level}-{split}"),
        "command_split": None if variant == "none" else split, "placement": "before", "split": prompt_split,
        "seed": seed, "target_temperature": target, "target_top_p": target_p,
        "temperature": np.full(4, t, dtype=np.float32), "top_p": np.full(4, 0.9 if p is None else p, dtype=np.float32),
    }
    if text is not None:
        record["text"] = text
    return record


def graded_group(group, base=1.0, factors=(0.4, 0.6, 0.8, 1.25, 1.5, 2.0), split="train", placebo=1.0):
    """A prompt with no command at ``base`` and low 3..1, high 1..3 rows at ``base * factor``."""
    levels = [("low", 3), ("low", 2), ("low", 1), ("high", 1), ("high", 2), ("high", 3)]
    rows = [row(group, "none", base)]
    rows += [row(group, v, base * f, level=k, split=split) for (v, k), f in zip(levels, factors, strict=True)]
    rows.append(row(group, "placebo", base * placebo, split=split))
    return rows


def test_single_command_consistency_is_the_share_of_rows_and_ties_fail():
    rows = [row("g1", "none", 1.0)]
    rows += [row("g1", "low", t, level=1, command_id=f"low-{i}") for i, t in enumerate((0.5, 0.6, 0.7, 1.2))]
    rows += [row("g1", "high", t, level=1, command_id=f"high-{i}") for i, t in enumerate((1.5, 1.0, 1.3, 1.1))]  # 1.0 ties
    rows += [row("g2", "none", 0.8), row("g2", "low", 0.7, level=1), row("g2", "high", 0.9, level=1)]
    measures, _ = parameter_measures(pd.DataFrame(rows))
    single = measures["by_command_split"]["train"]["single_command_consistency"]
    assert single["low"] == pytest.approx(4 / 5)  # 3 of g1's 4 rows + g2's row
    assert single["high"] == pytest.approx(4 / 5)  # the tie at 1.0 fails
    assert single["all"] == pytest.approx(8 / 10)
    only_g1 = parameter_measures(pd.DataFrame([r for r in rows if r["group_id"] == "g1"]))[0]
    assert only_g1["by_command_split"]["train"]["single_command_consistency"]["low"] == 0.75


def test_level_ratios_ordering_dose_response_and_placebo():
    rows = []
    for g, base in enumerate((0.5, 1.0, 1.5)):
        rows += graded_group(f"g{g}", base=base, placebo=math.exp(0.02))
    measures, tables = parameter_measures(pd.DataFrame(rows))
    train = measures["by_command_split"]["train"]
    assert train["level_ratio"]["low"]["3"] == pytest.approx(0.4, rel=1e-5)
    assert train["level_ratio"]["high"]["3"] == pytest.approx(2.0, rel=1e-5)
    assert train["mean_log_ratio"]["-2"] == pytest.approx(math.log(0.6), rel=1e-5)
    assert train["levels_strictly_ordered"] is True
    assert train["dose_response_median_rho"] == pytest.approx(1.0)
    assert train["placebo_median_log_ratio"] == pytest.approx(0.02, abs=1e-5)
    assert train["full_ordering"] == 1.0
    assert train["consistency"]["temperature"] == {"low": 1.0, "high": 1.0}
    assert measures["baseline"]["temperature_mean"] == pytest.approx(1.0)
    assert set(tables["levels"]["signed_level"]) == {-3, -2, -1, 1, 2, 3}


def test_levels_out_of_order_or_missing_are_not_strictly_ordered():
    swapped = graded_group("g0", factors=(0.6, 0.4, 0.8, 1.25, 1.5, 2.0))  # low 3 above low 2
    assert parameter_measures(pd.DataFrame(swapped))[0]["by_command_split"]["train"]["levels_strictly_ordered"] is False
    assert strictly_ordered({-3: -1.0, -2: -0.5, -1: -0.1, 1: 0.1, 2: 0.5}) is False  # high 3 missing
    assert strictly_ordered({-3: -1.0, -2: -0.5, -1: -0.1, 1: 0.1, 2: 0.5, 3: 0.9}) is True


def test_full_ordering_and_direction_consistency_count_prompts():
    rows = []
    for g, (low, high) in enumerate(((0.5, 1.5), (0.6, 1.4), (0.7, 1.3), (1.1, 1.2))):  # the last one is not ordered
        rows += [row(f"g{g}", "none", 1.0, p=0.9), row(f"g{g}", "low", low, level=1, p=0.8),
                 row(f"g{g}", "high", high, level=1, p=0.9 if g == 0 else 0.95)]  # g0's top-p ties
    train = parameter_measures(pd.DataFrame(rows))[0]["by_command_split"]["train"]
    assert train["full_ordering"] == 0.75
    assert train["consistency"]["temperature"] == {"low": 0.75, "high": 1.0}
    assert train["consistency"]["top_p"] == {"low": 1.0, "high": 0.75}


def test_effect_ratio_compares_held_out_with_train_wordings_in_log_space():
    rows = []
    for g in range(3):
        group = f"g{g}"
        rows += [row(group, "none", 1.0),
                 row(group, "low", 0.25, level=3, split="train"), row(group, "high", 4.0, level=3, split="train"),
                 row(group, "low", 0.5, level=3, split="heldout"), row(group, "high", 1.0, level=3, split="heldout")]
    measures, _ = parameter_measures(pd.DataFrame(rows))
    assert measures["by_command_split"]["train"]["effect"]["low"] == pytest.approx(math.log(4))
    assert measures["effect_ratio"]["low"] == pytest.approx(0.5)
    assert measures["effect_ratio"]["high"] == pytest.approx(0.0)  # held-out high does not move T


def test_named_temperature_tolerance_and_seen_values_come_from_train_prompts():
    rows = [
        row("t0", "none", 1.0, prompt_split="train"), row("t0", "low", 0.3, level=2, target=0.3, prompt_split="train"),
        row("e0", "none", 1.0),
        row("e0", "low", 0.39, level=2, target=0.3),  # |0.09| <= 0.1: on target (seen)
        row("e0", "low", 0.55, level=2, target=0.4, command_id="x"),  # |0.15| > 0.1: off (unseen)
        row("e0", "high", 1.45, level=1, target=1.2),  # |0.25| <= 0.3: on (unseen)
        row("e0", "low", 0.1, level=3, target=0.0),  # the "no randomness" level: <= 0.15, not a named value
        row("e1", "none", 1.0), row("e1", "low", 0.2, level=3, target=0.0),  # not near-greedy
        row("e1", "named", 0.05, target=0.0),  # "temperature zero" named as a value: on (unseen), near-greedy
    ]
    scores = pd.DataFrame(rows)
    assert seen_values(scores) == [0.3]
    assert seen_values(scores[scores["split"] == "eval"]) is None  # no train prompts: unknown
    assert seen_targets([{"split": "train", "target_temperature": 0.5}, {"split": "eval", "target_temperature": 0.7}]) == {
        "target_temperature": [0.5], "target_top_p": []}
    measures, tables = parameter_measures(scores)
    named = measures["by_command_split"]["train"]["named_temperature"]
    assert named["seen"] == {"n_rows": 1, "n_prompts": 1, "share": 1.0}
    assert named["unseen"]["n_rows"] == 3 and named["unseen"]["share"] == pytest.approx(2 / 3)
    assert named["all"]["share"] == pytest.approx(3 / 4)
    assert measures["by_command_split"]["train"]["no_randomness"] == {"n_rows": 3, "share": pytest.approx(2 / 3)}
    assert list(tables["named_temperature"]["tolerance"]) == pytest.approx([0.1, 0.1, 0.3, 0.1])
    assert list(tables["named_temperature"]["variant"]) == ["low", "low", "high", "named"]
    explicit = parameter_measures(scores[scores["split"] == "eval"], seen={"target_temperature": [0.3, 0.4]})[0]
    assert explicit["by_command_split"]["train"]["named_temperature"]["seen"]["n_rows"] == 2


def test_named_values_are_reported_per_number_format_of_the_command():
    rows = [row("g0", "none", 1.0), row("g1", "none", 1.0)]
    rows += [dict(row(g, "named", t, target=0.3, command_id=f"n{i}"), command=c) for i, (g, t, c) in enumerate([
        ("g0", 0.32, "Use temperature 0.3."), ("g1", 0.6, "Use temperature 0.30."),
        ("g0", 0.9, "Use temperature zero point three."), ("g1", 0.35, "Set it to zero point three, please."),
        ("g0", 0.3, "Use temperature a third."),  # a value written in no known format
    ])]
    measures, tables = parameter_measures(pd.DataFrame(rows))
    assert list(tables["named_temperature"]["number_format"].fillna("-")) == ["plain", "padded", "words", "words", "-"]
    by_format = measures["by_command_split"]["train"]["named_temperature"]["by_number_format"]
    assert set(by_format) == {"plain", "padded", "words"}
    assert by_format["words"] == {"n_rows": 2, "n_prompts": 2, "share": 0.5}
    assert by_format["padded"]["share"] == 0.0 and by_format["plain"]["share"] == 1.0
    without_text = parameter_measures(pd.DataFrame([{k: v for k, v in r.items() if k != "command"} for r in rows]))
    assert "by_number_format" not in without_text[0]["by_command_split"]["train"]["named_temperature"]


def test_named_top_p_within_a_tenth_and_absent_column_is_not_reported():
    rows = [row("g0", "none", 1.0), row("g0", "low", 0.8, level=1, p=0.58, target_p=0.5),
            row("g0", "low", 0.8, level=1, p=0.35, target_p=0.5, command_id="b")]
    measures, tables = parameter_measures(pd.DataFrame(rows))
    assert measures["by_command_split"]["train"]["named_top_p"]["all"]["share"] == 0.5
    old = pd.DataFrame(rows).drop(columns=["target_top_p", "target_temperature"])
    assert named_value_rows(old, "target_top_p").empty
    assert parameter_measures(old)[0]["by_command_split"]["train"]["named_top_p"] == {}


def test_row_ratios_and_level_table_pair_each_row_with_its_own_prompt():
    rows = graded_group("a", base=0.5) + graded_group("b", base=2.0, factors=(0.5, 0.6, 0.8, 1.25, 1.5, 3.0))
    ratios = row_ratios(pd.DataFrame(rows))
    assert ratios.loc[(ratios["group_id"] == "b") & (ratios["signed_level"] == 3), "log_ratio"].item() == pytest.approx(
        math.log(3.0), rel=1e-5)
    levels = level_table(ratios)
    high3 = levels[(levels["variant"] == "high") & (levels["level"] == 3)]
    assert high3["median_ratio"].item() == pytest.approx(math.sqrt(6.0), rel=1e-5)  # median of log 2 and log 3


def test_wording_table_puts_the_wordings_that_moved_t_the_wrong_way_first_and_the_report_names_them():
    from analysis.scorecard import _wording_lines

    rows = []
    for g, base in (("a", 1.0), ("b", 0.8), ("c", 1.2)):
        rows.append(row(g, "none", base))
        for text, variant, level, factor in (("Be more random.", "high", 2, 1.5), ("Be less random.", "low", 2, 0.5),
                                             ("Let chance decide.", "high", 3, 0.5 if g != "c" else 1.5)):
            record = row(g, variant, base * factor, level=level, split="heldout")
            record["command"] = text
            rows.append(record)
        asked = row(g, "low", 0.02, level=3, split="heldout", target=0.0)  # a row with a target is not a relative wording
        asked["command"] = "No randomness."
        rows.append(asked)
    _, tables = parameter_measures(pd.DataFrame(rows))
    wordings = tables["wordings"]
    assert list(wordings["command"]) == ["Let chance decide.", "Be more random.", "Be less random."]
    first = wordings.iloc[0]
    assert first["commanded_way"] == pytest.approx(1 / 3) and first["n_rows"] == 3 and first["median_ratio"] == pytest.approx(0.5)
    lines = "\n".join(_wording_lines(wordings))
    assert "Held-out wordings: 1 of 3 wordings moved T the wrong way" in lines and "Let chance decide." in lines
    assert "Be more random." not in lines
    assert _wording_lines(tables["wordings"].iloc[0:0]) == []


# -- text level -------------------------------------------------------------------------------------
def test_compression_ratio_grows_with_repetition():
    varied = ["the cat sat on a mat", "a dog ran in the park", "birds sing at dawn today"]
    repeated = ["the cat sat on a mat"] * 3
    assert compression_ratio(repeated) > compression_ratio(varied)
    assert math.isnan(compression_ratio(["", "  "]))


def test_text_measures_find_planted_diversity_and_identical_no_randomness_samples():
    scores = synthetic_scores(n_groups=16, levels=(3,), seeds=(0, 1, 2), texts=True, n_tokens=(12, 20), eval_share=1.0,
                              shifts={"low": -0.45, "high": 0.45, "placebo": 0.0})
    zero = (scores["variant"] == "low") & (scores["command_id"] == "low_1")
    scores["target_temperature"] = np.where(zero, 0.0, np.nan)
    first = scores[zero & (scores["seed"] == 0)].set_index(["group_id", "placement"])["text"]
    scores.loc[zero, "text"] = [first[(g, p)] for g, p in zip(scores.loc[zero, "group_id"], scores.loc[zero, "placement"],
                                                              strict=True)]  # every seed writes the same text
    measures, tables = text_measures(scores, n_boot=200)
    train = measures["by_command_split"]["train"]
    assert train["self_bleu"]["ordered"] is True and train["distinct_2"]["ordered"] is True
    assert train["self_bleu"]["significant"] is True and train["distinct_2"]["significant"] is True
    assert train["self_bleu"]["delta"]["low"]["p_wilcoxon"] < 0.01
    assert train["self_bleu"]["placebo_p"] > 0.01
    assert measures["by_command_split"]["heldout"]["no_randomness_identical"] == {"n_prompts": 16, "share": 1.0}
    assert math.isnan(train["no_randomness_identical"]["share"])
    assert {"instances", "level_effects"} <= set(tables)


def test_heads_against_prompt_only_baseline():
    heads = synthetic_scores(n_groups=12, levels=(3,), seeds=(0, 1, 2), texts=True, n_tokens=(12, 20), eval_share=1.0,
                             shifts={"low": -0.45, "high": 0.45, "placebo": 0.0})
    flat = synthetic_scores(n_groups=12, levels=(3,), seeds=(0, 1, 2), texts=True, n_tokens=(12, 20), eval_share=1.0,
                            shifts={"low": 0.0, "high": 0.0, "placebo": 0.0}, seed=5)
    measures, tables = text_measures(heads, flat, n_boot=200)
    diff = measures["heads_minus_prompt_only"]["train"]["self_bleu"]
    assert diff["low"]["difference"] > 0 and diff["high"]["difference"] < 0
    assert diff["low"]["p_wilcoxon"] < 0.01
    within = measures["no_command_within_base"]
    assert set(within) == {"self_bleu", "distinct_2", "compression"}
    assert within["self_bleu"]["base_lo"] <= within["self_bleu"]["base_mean"] <= within["self_bleu"]["base_hi"]
    assert "prompt_only_level_effects" in tables
    assert instance_text_metrics(flat)["identical"].dtype == bool
