"""Figures and the results folder of the ``analysis`` package (synthetic, seeded data)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import plots
from analysis.effects import dose_response, effect_table
from analysis.report import write_report
from analysis.synthetic import synthetic_scores
from analysis.trajectories import binned_trajectories, example_group, select_trajectory


@pytest.fixture(scope="module")
def teacher_forced():
    return synthetic_scores(n_groups=12, levels=(1, 2), dose=True, shifts={"low": -0.1, "high": 0.1, "placebo": 0.0},
                            n_tokens=12, seed=11)


@pytest.fixture(scope="module")
def free_running():
    return synthetic_scores(n_groups=8, n_tokens=(8, 16), seeds=(0, 1), texts=True, phrasings=1, seed=12)


def assert_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.is_png(path)


def test_trajectory_figure_writes_png_and_refuses_overwrite(tmp_path, teacher_forced):
    traj = select_trajectory(teacher_forced, example_group(teacher_forced))
    path = tmp_path / "sub" / "trajectory.png"
    fig = plots.plot_trajectory(traj, path=path, title="example")
    assert_png(path)
    axes = fig.get_axes()
    assert len(axes) == 3
    assert axes[0].get_ylabel() and axes[-1].get_xlabel()
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels[0] == "Baseline" and any(label.startswith("Low") for label in labels)
    styles = {line.get_label(): line.get_linestyle() for line in axes[0].get_lines()}
    assert styles["Baseline"] == "-" and all(s == ":" for k, s in styles.items() if k != "Baseline")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        plots.plot_trajectory(traj, path=path)
    assert path.read_bytes() == before
    plots.plot_trajectory(traj, path=path, overwrite=True, title="again")
    assert_png(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["trajectory.png"]  # no temporary files left


def test_other_figures(tmp_path, teacher_forced):
    plots.plot_binned_trajectories(binned_trajectories(teacher_forced, n_bins=4), path=tmp_path / "binned.png")
    levels, _ = dose_response(teacher_forced, n_boot=50)
    plots.plot_dose_response(levels, path=tmp_path / "dose.png")
    table = effect_table(teacher_forced, by="command_id", n_boot=50, include_baseline=False)
    plots.plot_effects(table, "command_id", path=tmp_path / "forest.png")
    for name in ("binned.png", "dose.png", "forest.png"):
        assert_png(tmp_path / name)


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
