"""Write the analysis notebooks of this folder (without outputs) from the cell sources below.

    python notebooks/build_notebooks.py          # rewrite both notebooks
    python notebooks/build_notebooks.py --check  # exit 1 if a stored notebook differs from its source here

Edit the cells here, not in the .ipynb files, so that the stored notebooks stay output-free and
reviewable; ``tests/test_notebooks.py`` checks that they match and that they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

PARAMETERS_NOTE = """\
# Parameters (a papermill-style "parameters" cell).
# RESULTS: a results folder of `python -m analysis` (its *_scores.jsonl are loaded). None: the
#   STEERDECO_RESULTS environment variable, else ./results or ../results when they hold scores,
#   else the SETTING below.
# SETTING: without results, "tiny" (synthetic scores with planted effects, seconds) or
#   "tiny-model" (a random tiny model with jittered untrained heads: no real effects).
"""

CONSISTENCY = [
    ("markdown", """\
# Consistency statistics

Do the temperature *T* and top-p *P* that the heads predict move the way a randomness command asks?
Every commanded variant of a prompt is paired with the same prompt's no-command variant, the
differences are averaged within each prompt group, and the groups are the units: mean change
(Delta) with a 95% bootstrap CI, consistency (share of groups moving in the commanded direction),
sign and Wilcoxon tests, effect sizes. Tables use held-out prompts (`split == "eval"`) when the
scores have any. See `analysis/effects.py` and `analysis/statistics.py` for the definitions and `python -m analysis` for the
run that produces a results folder."""),
    ("parameters", PARAMETERS_NOTE + """\
RESULTS = None
SETTING = "tiny"
PROTOCOL = "teacher_forced"  # or "free_running"
N_BOOT = 1000
SEED = 0"""),
    ("code", """\
from analysis import plots
from analysis.notebook import notebook_scores, show_figure, show_table
from analysis.report import analyse, held_out

scores, source = notebook_scores(RESULTS, SETTING, PROTOCOL, seed=SEED)
subset, _ = held_out(scores)
tables = analyse(scores, PROTOCOL, n_boot=N_BOOT, seed=SEED)
print(source)
print(f"{len(scores)} rows, {scores['group_id'].nunique()} prompt groups, {subset['group_id'].nunique()} analysed "
      f"(held out), seeds {sorted(int(s) for s in scores['seed'].unique())}")"""),
    ("markdown", """\
## Consistency table

Baseline: the no-command variant (mean T and P). Low / High: commands asking for less / more
randomness, all levels, phrasings and placements pooled. Placebo: commands unrelated to randomness
(their change should be near 0). Cells: estimate [95% CI]."""),
    ("code", """show_table(tables["main"])"""),
    ("markdown", """\
## Tests and effect sizes

Two-sided paired sign test and Wilcoxon signed-rank test over groups; Cohen's d_z and the
matched-pairs rank-biserial correlation."""),
    ("code", """show_table(tables["main"], kind="stats")"""),
    ("markdown", """\
## Phrasing split

Held-out prompts under the phrasings used in training (`train`) and under phrasings never seen in
training (`heldout`): does obedience generalise to new wordings?"""),
    ("code", """show_table(tables.get("main_by_command_split"), by="command_split", name="phrasing split")"""),
    ("markdown", """\
## Placement

Command before the prompt, after it, or in a system message."""),
    ("code", """\
show_table(tables.get("by_placement"), by="placement", name="placement breakdown")
if "by_placement" in tables:
    show_figure(plots.plot_effects(tables["by_placement"], "placement"))"""),
    ("markdown", """\
## Dose-response

Per command level (1 slightly, 2 clearly, 3 extremely), and the Spearman correlation of the signed
level (low *k*: -*k*, none: 0, high *k*: +*k*) with the per-group change (`delta`) or the per-group
mean value (`mean`)."""),
    ("code", """\
show_table(tables.get("by_level"), by="level", name="dose-response")
show_table(tables.get("dose_response"), kind="plain", name="Spearman dose-response")
if "by_level" in tables:
    show_figure(plots.plot_dose_response(tables["by_level"]))"""),
    ("markdown", """\
## Placebo

Specificity: placebo commands should leave T and P where they are (|Delta| small, CI containing 0,
large p)."""),
    ("code", """\
main = tables["main"]
show_table(main[main["variant"] == "placebo"], kind="stats", name="placebo rows")"""),
]

TRAJECTORIES = [
    ("markdown", """\
# Trajectory plots

The per-token temperature *T* and top-p *P* along a response. Top: one prompt under no command
(solid) and under a low and a high command (dotted), with the per-token change of T against the
baseline (as in the paper's Figure 4). Below: the position-binned mean over held-out prompts with
95% bands, by relative position in the response and by absolute token position."""),
    ("parameters", PARAMETERS_NOTE + """\
RESULTS = None
SETTING = "tiny"
PROTOCOL = "teacher_forced"  # teacher-forced rows share one response, so positions align across variants
GROUP = None  # a group_id to show; None: the first held-out group with every variant
N_BINS = 10
BIN_WIDTH = 4  # tokens per bin for the absolute-position plot
SEED = 0"""),
    ("code", """\
from analysis import plots
from analysis.formatting import markdown_table
from analysis.notebook import notebook_scores, show_figure, show_markdown
from analysis.report import held_out
from analysis.trajectories import binned_trajectories, example_group, select_trajectory

scores, source = notebook_scores(RESULTS, SETTING, PROTOCOL, seed=SEED)
subset, _ = held_out(scores)
print(source)
print(f"{len(scores)} rows, {subset['group_id'].nunique()} held-out prompt groups")"""),
    ("markdown", """\
## One prompt

The highest level of each direction, first phrasing and placement in sorted order (change them
with `select_trajectory(..., level=, command_id=, placement=)`)."""),
    ("code", """\
group = GROUP if GROUP is not None else example_group(subset)
if group is None:
    raise ValueError("no group has a no-command, a low and a high variant; set GROUP")
trajectory = select_trajectory(scores, group)
show_figure(plots.plot_trajectory(trajectory, title=f"Prompt group {group}"))
print(trajectory.groupby("label", sort=False)[["temperature", "top_p"]].mean().round(3))"""),
    ("markdown", """\
## Position-binned means

Each response is cut into `N_BINS` equal parts; a group's rows of one variant are averaged first,
then the mean and a 95% t band are taken over groups."""),
    ("code", """\
binned = binned_trajectories(subset, n_bins=N_BINS)
show_figure(plots.plot_binned_trajectories(binned))
wide = binned.pivot_table(index=["metric", "bin"], columns="variant", values="mean").reset_index()
show_markdown(markdown_table(wide))"""),
    ("markdown", """\
By absolute position: bins of `BIN_WIDTH` tokens from the start of the response (positions beyond
`N_BINS * BIN_WIDTH` are left out)."""),
    ("code", """\
show_figure(plots.plot_binned_trajectories(binned_trajectories(subset, n_bins=N_BINS, bin_width=BIN_WIDTH),
                                           title=f"Mean by token position ({BIN_WIDTH}-token bins)"))"""),
]

NOTEBOOKS = {"consistency_statistics.ipynb": CONSISTENCY, "trajectory_plots.ipynb": TRAJECTORIES}


def make_notebook(cells) -> nbformat.NotebookNode:
    """A v4 notebook without outputs; ``parameters`` cells are code cells tagged ``parameters``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for index, (kind, source) in enumerate(cells):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
        cell["id"] = f"cell-{index:02d}"  # stable ids: rebuilding gives identical files
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells) -> str:
    return nbformat.writes(make_notebook(cells)) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the stored notebooks are up to date")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        text = render(cells)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python notebooks/build_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
