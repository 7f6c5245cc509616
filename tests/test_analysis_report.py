"""Tests of analysis.report: the report folder (tables, figures, report.md) of synthetic, seeded scores."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from analysis_helpers import assert_png

from analysis.report import write_report
from analysis.synthetic import synthetic_scores


@pytest.fixture(scope="module")
def teacher_forced():
    return synthetic_scores(n_groups=12, levels=(1, 2), dose=True, shifts={"low": -0.1, "high": 0.1, "placebo": 0.0},
                            n_tokens=12, seed=11)


@pytest.fixture(scope="module")
def free_running():
    return synthetic_scores(n_groups=8, n_tokens=(8, 16), seeds=(0, 1), texts=True, phrasings=1, seed=12)


def test_report_writes_folder_and_refuses_existing(tmp_path, teacher_forced, free_running):
    out = tmp_path / "results"
    markdown, tables = write_report(out, teacher_forced=teacher_forced, free_running=free_running, n_boot=50)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report == markdown
    for text in ("| Variant | n | Avg T | Delta T | Consistency (T) | Avg top-p | Delta top-p | Consistency (P) |",
                 "| Baseline |", "| Low |", "| High |", "| Placebo |", "train phrasings", "heldout phrasings",
                 "Dose-response", "By placement", "Effects on the text", "Global shift vs token-level",
                 "Teacher-forced", "Free-running", "p (Wilcoxon)"):
        assert text in report, text
    for key in ("teacher_forced.main", "teacher_forced.main_by_command_split", "teacher_forced.by_level",
                "teacher_forced.dose_response", "teacher_forced.by_placement", "teacher_forced.decomposition",
                "free_running.main", "free_running.text_effects"):
        assert key in tables, key
        stem = key.replace(".", "_")
        assert (out / "tables" / f"{stem}.csv").is_file()
        records = json.loads((out / "tables" / f"{stem}.json").read_text())
        assert len(records) == len(tables[key])
    assert "free_running.decomposition" not in tables  # free-running responses do not align
    main = pd.read_csv(out / "tables" / "teacher_forced_main.csv")
    assert list(main["variant"].unique()) == ["none", "low", "high", "placebo"]
    assert main["n_groups"].max() == 6  # held-out prompts only (split == "eval")
    links = [line for line in report.splitlines() if line.startswith("![")]
    assert links
    for line in links:
        assert_png(out / line[line.index("(") + 1 : -1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_boot"] == 50 and "teacher_forced.main" in summary["tables"]

    with pytest.raises(FileExistsError, match=r"results.*overwrite=True"):
        write_report(out, teacher_forced=teacher_forced, n_boot=20)
    assert (out / "report.md").read_text(encoding="utf-8") == markdown
    markdown2, tables2 = write_report(out, teacher_forced=teacher_forced, n_boot=20, overwrite=True, figures=False)
    assert "Free-running" not in (out / "report.md").read_text(encoding="utf-8")
    assert not (out / "figures").exists() and "free_running.main" not in tables2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no temporary or backup folders left


def test_report_needs_scores(tmp_path):
    with pytest.raises(ValueError, match="teacher_forced and/or free_running"):
        write_report(tmp_path / "r")
    assert not (tmp_path / "r").exists()
