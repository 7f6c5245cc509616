"""Tests of analysis.formatting: numbers, CIs, p-values and the consistency table as Markdown."""

from __future__ import annotations

import pandas as pd
from analysis_helpers import cell

from analysis.effects import consistency_table
from analysis.formatting import (
    format_ci,
    format_consistency_table,
    format_p,
    format_stats_table,
    markdown_table,
)


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
