"""analysis.scorecard and the report: targets of issues 12/16 against measured values, report.md and summary.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.report import read_summary, write_report
from analysis.scorecard import console_summary, json_ready, sample_table, scorecard, scorecard_lines
from analysis.steering import parameter_measures
from analysis.synthetic import synthetic_scores
from analysis.targets import TARGETS


def by_key(rows):
    return {r["key"]: r for r in rows}


def test_a_target_passes_only_when_every_shown_value_meets_it():
    measures = {"parameter": {
        "baseline": {"temperature_mean": 0.7},
        "by_command_split": {
            "train": {"level_ratio": {"low": {"3": 0.45}, "high": {"3": 1.7}}, "levels_strictly_ordered": True,
                      "single_command_consistency": {"low": 0.95}},
            "heldout": {"level_ratio": {"low": {"3": 0.6}, "high": {"3": 1.6}}, "levels_strictly_ordered": False},
        },
        "effect_ratio": {"low": 0.8, "high": 0.5},
    }}
    rows = by_key(scorecard(measures))
    assert len(rows) == len(TARGETS)
    assert rows["baseline_t"]["status"] == "pass" and rows["baseline_t"]["heldout"] == 0.7
    assert rows["low3_ratio"]["status"] == "FAIL" and rows["low3_ratio"]["train_ok"] is True
    assert rows["high3_ratio"]["status"] == "pass"  # 1.6 meets >= 1.6
    assert rows["seven_levels"]["status"] == "FAIL" and rows["seven_levels"]["heldout_text"] == "no"
    assert rows["single_low"]["status"] == "pass" and rows["single_low"]["heldout_text"] == "—"
    assert rows["effect_ratio_low"]["status"] == "pass" and rows["effect_ratio_low"]["train"] is None
    assert rows["effect_ratio_high"]["status"] == "FAIL"
    assert rows["named_p"]["status"] == "n/a" and rows["text_bleu_low"]["status"] == "n/a"


def test_console_scorecard_counts_passes_and_keeps_every_target_on_one_aligned_line():
    measures = {"parameter": {"baseline": {"temperature_mean": 0.7}, "effect_ratio": {"low": 0.8, "high": 0.5}}}
    rows = scorecard(measures)
    rows[0] = {**rows[0], "name": "x" * 80, "heldout_text": "y" * 40}
    lines = scorecard_lines(rows, measure_chars=30, cell_chars=12)
    n_pass = sum(r["status"] == "pass" for r in rows)
    n_measured = sum(r["status"] != "n/a" for r in rows)
    assert lines[0].startswith(f"{n_pass} of {n_measured} measured targets pass")
    body = lines[3:]
    assert len(body) == len(rows)
    issue_width = max(len("issue"), *(len(r["issue"]) for r in rows))
    measure_at = 7 + issue_width + 1
    for line, row in zip(body, rows, strict=True):
        assert line.startswith(row["status"])
        assert line[measure_at - 1] == " " and line[measure_at] != " "  # the measure column starts at one place
    assert "x" * 29 + "…" in body[0] and "y" * 40 not in body[0]  # long cells are cut


def test_text_targets_need_the_commanded_sign_and_p_below_a_hundredth():
    def delta(d, p):
        return {"delta": d, "p_wilcoxon": p, "lo": d, "hi": d, "n_prompts": 30}

    split = {"self_bleu": {"delta": {"low": delta(0.1, 0.001), "high": delta(-0.1, 0.02), "placebo": delta(0.0, 0.5)},
                           "placebo_p": 0.5},
             "distinct_2": {"delta": {"low": delta(0.05, 0.001), "high": delta(0.1, 0.001)}, "placebo_p": 0.02},
             "no_randomness_identical": {"n_prompts": 10, "share": 0.9}}
    rows = by_key(scorecard({"text": {"by_command_split": {"heldout": split}}}))
    assert rows["text_bleu_low"]["status"] == "pass"
    assert rows["text_bleu_high"]["status"] == "FAIL"  # p 0.02
    assert rows["text_d2_low"]["status"] == "FAIL"  # wrong sign
    assert rows["text_d2_high"]["status"] == "pass"
    # placebo: the two measures are one family, Holm-adjusted (2 x 0.02 = 0.04 < 0.05)
    assert rows["text_placebo"]["status"] == "FAIL" and rows["text_placebo"]["heldout"] == pytest.approx(0.04)
    split["distinct_2"]["placebo_p"] = 0.03  # 2 x 0.03 = 0.06: one of two measures at 0.03 is what chance gives
    placebo = by_key(scorecard({"text": {"by_command_split": {"heldout": split}}}))["text_placebo"]
    assert placebo["status"] == "pass" and placebo["heldout_text"] == "Holm p 0.060 (min p 0.030 of 2)"
    assert rows["no_randomness_text"]["status"] == "pass" and rows["no_randomness_text"]["heldout_text"] == "90% of 10 [60%, 98%]"


def test_a_share_of_counted_rows_shows_its_interval_which_narrows_with_the_count():
    from analysis.statistics import share_interval

    few, many = share_interval(0.75, 12), share_interval(0.75, 1200)
    assert few[0] < 0.75 < few[1] and many[0] < 0.75 < many[1]
    assert few[1] - few[0] > 0.4 and many[1] - many[0] < 0.06
    named = {"seen": {"n_rows": 12, "share": 0.75}, "unseen": {"n_rows": 200, "share": 0.85}}
    rows = by_key(scorecard({"parameter": {"by_command_split": {"heldout": {"named_temperature": named}}}}))
    assert rows["named_t_seen"]["heldout_text"] == "75% of 12 [47%, 91%]"  # the interval reaches 80%: still a fail
    assert rows["named_t_seen"]["status"] == "FAIL" and rows["named_t_unseen"]["status"] == "pass"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A report of synthetic scores with named temperatures, free-running text and a prompt-only baseline."""
    tf = synthetic_scores(n_groups=12, levels=(1, 2, 3), dose=True)
    named = (tf["variant"] == "low") & (tf["level"] == 2)
    tf["target_temperature"] = np.where(named, 0.3, np.nan)
    tf["command"] = [None if v == "none" else f"{v} command {lv}" for v, lv in zip(tf["variant"], tf["level"], strict=True)]
    written_as = np.where(tf.index % 2 == 0, "Use temperature 0.3.", "Use temperature zero point three.")
    tf["command"] = np.where(named, written_as, tf["command"])
    fr = synthetic_scores(n_groups=12, levels=(3,), seeds=(0, 1, 2), texts=True, n_tokens=(10, 16))
    fr["command"] = [None if v == "none" else f"please, {v}" for v in fr["variant"]]
    po = synthetic_scores(n_groups=12, levels=(3,), seeds=(0, 1, 2), texts=True, n_tokens=(10, 16), seed=3,
                          shifts={"low": 0.0, "high": 0.0, "placebo": 0.0})
    po["temperature"] = [np.full(a.size, 1.0, dtype=np.float32) for a in po["temperature"]]  # one fixed temperature
    out = tmp_path_factory.mktemp("scorecard") / "results"
    markdown, tables = write_report(out, teacher_forced=tf, free_running=fr, prompt_only=po, n_boot=50)
    return out, markdown, tables, tf


def test_report_opens_with_the_scorecard_then_samples_and_the_paper_row(written):
    out, markdown, _, _ = written
    assert (out / "report.md").read_text(encoding="utf-8") == markdown
    lines = markdown.splitlines()
    assert lines[0].startswith("# ") and lines[2] == "## Scorecard (issues 12 and 16)"
    assert markdown.index("## Scorecard") < markdown.index("## Samples side by side") < markdown.index(
        "## Comparison with the AutoDeco paper") < markdown.index("## Teacher-forced")
    assert "| AutoDeco paper (arXiv 2510.26697) | 0.72 | -0.11 | +0.10 | 99% | 96% |" in markdown
    assert "[please, low] " in markdown and "### Heads vs prompt-only baseline" in markdown
    assert "![calibration temperature](figures/calibration_temperature.png)" in markdown
    by_format = markdown[markdown.index("Named temperature, per number format"):]
    assert "| plain |" in by_format and "| words |" in by_format and "| padded |" not in by_format
    assert plots.is_png(out / "figures" / "calibration_temperature.png")
    assert (out / "tables" / "steering_levels.csv").is_file() and (out / "tables" / "text_level_effects.csv").is_file()


def test_summary_json_holds_the_scorecard_and_the_measures_as_strict_json(written):
    out, _, _, tf = written

    def no_nan(name):
        raise AssertionError(f"summary.json holds {name}")

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=no_nan)
    assert [r["key"] for r in summary["scorecard"]] == [t.key for t in TARGETS]
    expected, _ = parameter_measures(tf[tf["split"] == "eval"])
    got = summary["measures"]["parameter"]["by_command_split"]["heldout"]
    assert got["level_ratio"]["low"]["3"] == pytest.approx(expected["by_command_split"]["heldout"]["level_ratio"]["low"]["3"])
    assert by_key(summary["scorecard"])["low3_ratio"]["heldout"] == pytest.approx(got["level_ratio"]["low"]["3"])
    assert summary["measures"]["text"]["by_command_split"]["train"]["self_bleu"]["ordered"] in (True, False)
    assert summary["prompt_only"]["temperature"] == 1.0
    assert len(summary["samples"]) == 2


def test_a_run_prints_its_summary_scorecard_and_first_samples(written, tmp_path):
    out, _, _, _ = written
    summary = read_summary(out)
    lines = console_summary(summary)
    n_pass = sum(r["status"] == "pass" for r in summary["scorecard"])
    assert any(line.startswith(f"{n_pass} of ") for line in lines)
    assert sum(line.startswith(("pass ", "FAIL ", "n/a ")) for line in lines) == len(TARGETS)
    first = summary["samples"][0]
    assert f"  prompt      {first['Prompt']}" in lines
    assert any(line.startswith("  high-3") and first["High-3"] in line for line in lines)
    assert read_summary(tmp_path) == {} and console_summary({}) == []  # a folder without a summary prints nothing


def test_json_ready_and_sample_table_edge_cases():
    assert json_ready({"a": float("nan"), 1: (np.float32(0.5), np.bool_(True))}) == {"a": None, "1": [0.5, True]}
    assert sample_table(pd.DataFrame()).empty
