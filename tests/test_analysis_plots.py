"""Tests of analysis.plots: the PNG figures of the analysis tables (synthetic, seeded data)."""

from __future__ import annotations

import pytest
from analysis_helpers import assert_png

from analysis import plots
from analysis.effects import dose_response, effect_table
from analysis.synthetic import synthetic_scores
from analysis.trajectories import binned_trajectories, example_group, select_trajectory


@pytest.fixture(scope="module")
def teacher_forced():
    return synthetic_scores(n_groups=12, levels=(1, 2), dose=True, shifts={"low": -0.1, "high": 0.1, "placebo": 0.0},
                            n_tokens=12, seed=11)


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


