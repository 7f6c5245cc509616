"""The report of some variant scores in one folder: every table (CSV + JSON), the figures (PNG) and ``report.md``.

Typical use (the CLI wires the model in front of it)::

    from analysis.collect import teacher_forced_scores, free_running_scores
    from analysis.report import write_report

    markdown, tables = write_report("results", teacher_forced=tf_scores, free_running=fr_scores)
    print(format_consistency_table(tables["teacher_forced.main"]))

Either protocol may be omitted. Per protocol, :func:`analyse` computes (keys ``<protocol>.<name>``):

============================  =============================================================
``main``                      Baseline / Low / High / Placebo on held-out prompts (``split == "eval"``)
``main_by_command_split``     the same per phrasing split (train vs heldout phrasings)
``by_command_id``             per phrasing
``by_placement``              per placement (before / after / system)
``by_level``                  per level, with ``signed_level``
``dose_response``             Spearman of signed level vs paired change / mean value
``by_prompt_split``           all prompts, per prompt split (train vs eval prompts)
``target_tracking``           absolute commands (rows with ``target_temperature``), when any
``text_effects``              distinct-n, self-BLEU, length (rows with ``text``)
``decomposition``             global shift vs token-level (teacher-forced rows)
``decomposition_instances``   the per-row decomposition behind it
============================  =============================================================

All tables except ``main`` are computed on held-out prompts too (``eval_only``), except
``by_prompt_split``. On top, the steering measures of ``MEASURES.md`` and the scorecard of the
issues' targets (:mod:`analysis.scorecard`; tables ``steering.*`` and ``text.*``, figures
``calibration_temperature.png`` / ``calibration_top_p.png`` when commands name values); the
report opens with the scorecard, two prompts' samples side by side and the paper's comparison
row. Files: ``tables/<protocol>_<name>.csv|.json``, ``figures/<protocol>_*.png``, ``report.md``,
``summary.json`` (run metadata, ``scorecard``: one entry per target, ``measures``: every number
behind it; NaN written as null). The folder is built under a temporary name next to ``out_dir``
and renamed into place at the end; an existing ``out_dir`` is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from steerdeco.io import atomic_write_text, atomic_write_with, staged_folder

from . import plots
from .decomposition import decomposition, decomposition_display
from .effects import breakdowns, consistency_table, dose_response, effect_table, target_tracking
from .formatting import format_consistency_table, format_p, format_stats_table, markdown_table
from .schema import prepare_scores, validate_scores
from .scorecard import (
    json_ready,
    measures_markdown,
    sample_table,
    scorecard,
    scorecard_markdown,
    steering_measures,
)
from .text_effects import text_effects, text_effects_display
from .trajectories import binned_trajectories, example_group, select_trajectory

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
PROTOCOLS = {"teacher_forced": "Teacher-forced", "free_running": "Free-running"}


def held_out(scores: pd.DataFrame, split: str = "eval") -> tuple[pd.DataFrame, bool]:
    """``(rows with split == split, True)``; ``(all rows, False)`` (logged) when there are none."""
    if "split" in scores.columns and (scores["split"] == split).any():
        return scores[scores["split"] == split], True
    logger.warning("no rows with split == %r; using every prompt", split)
    return scores, False


def _has_text(scores: pd.DataFrame) -> bool:
    return "text" in scores.columns and scores["text"].notna().any()


def analyse(
    scores: pd.DataFrame,
    protocol: str = "teacher_forced",
    eval_only: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Every table of one protocol's variant scores (keys: the names in the module docstring).

    Raises:
        ValueError: the main table cannot be computed (e.g. fewer than 2 groups with a baseline).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    validate_scores(scores)
    scores = prepare_scores(scores)
    subset, _ = held_out(scores) if eval_only else (scores, False)
    tables: dict[str, pd.DataFrame] = {"main": consistency_table(subset, n_boot=n_boot, seed=seed)}
    for name, by in (("main_by_command_split", "command_split"),):
        try:
            tables[name] = effect_table(subset, by=by, n_boot=n_boot, seed=seed, include_baseline=False)
        except ValueError as err:
            logger.warning("%s skipped: %s", name, err)
    tables.update(breakdowns(subset, columns=("command_id", "placement"), n_boot=n_boot, seed=seed))
    try:
        tables["by_level"], tables["dose_response"] = dose_response(subset, n_boot=n_boot, seed=seed)
    except ValueError as err:
        logger.warning("dose-response skipped: %s", err)
    if "split" in scores.columns and scores["split"].nunique() > 1:
        try:
            tables["by_prompt_split"] = effect_table(scores, by="split", n_boot=n_boot, seed=seed, include_baseline=False)
        except ValueError as err:
            logger.warning("by_prompt_split skipped: %s", err)
    tracking = target_tracking(subset)
    if not tracking.empty:
        tables["target_tracking"] = tracking
    if _has_text(subset):
        try:
            tables["text_effects"] = text_effects(subset, n_boot=n_boot, seed=seed)
        except ValueError as err:
            logger.warning("text effects skipped: %s", err)
    if protocol == "teacher_forced":
        try:
            tables["decomposition_instances"], tables["decomposition"] = decomposition(subset, n_boot=n_boot, seed=seed)
        except ValueError as err:
            logger.warning("decomposition skipped: %s", err)
    return tables


def make_figures(
    scores: pd.DataFrame, tables: Mapping[str, pd.DataFrame], folder: str | os.PathLike, prefix: str, overwrite: bool = False,
    eval_only: bool = True,
) -> dict[str, str]:
    """Draw the figures of one protocol into ``folder``; returns ``{name: file name}``."""
    folder = Path(folder)
    subset, _ = held_out(scores) if eval_only else (scores, False)
    made: dict[str, str] = {}

    def draw(name: str, fn, *args, **kwargs) -> None:
        file = f"{prefix}_{name}.png"
        try:
            fn(*args, path=folder / file, overwrite=overwrite, **kwargs)
        except (ValueError, KeyError) as err:
            logger.warning("figure %s skipped: %s", file, err)
            return
        made[name] = file

    group = example_group(subset)
    if group is not None:
        draw("trajectory_example", lambda path, overwrite: plots.plot_trajectory(
            select_trajectory(subset, group), path=path, overwrite=overwrite, title=f"Prompt group {group}"))
    draw("binned_trajectories", lambda path, overwrite: plots.plot_binned_trajectories(
        binned_trajectories(subset, n_bins=10), path=path, overwrite=overwrite))
    if "by_level" in tables and not tables["by_level"].empty:
        draw("dose_response", plots.plot_dose_response, tables["by_level"])
    for by in ("command_id", "placement"):
        key = f"by_{by}"
        if key in tables and not tables[key].empty:
            draw(f"effects_by_{by}", plots.plot_effects, tables[key], by)
    return made


def calibration_figures(tables: Mapping[str, pd.DataFrame], folder: str | os.PathLike) -> dict[str, str]:
    """Calibration plots of the named-value rows (``steering.named_*`` tables) into ``folder``; ``{name: file}``."""
    made = {}
    for name, metric in (("named_temperature", "temperature"), ("named_top_p", "top_p")):
        named = tables.get(f"steering.{name}")
        if named is None or named.empty:
            continue
        file = f"calibration_{metric}.png"
        try:
            plots.plot_calibration(named, metric, path=Path(folder) / file)
        except ValueError as err:
            logger.warning("figure %s skipped: %s", file, err)
            continue
        made[f"calibration_{metric}"] = file
    return made


def render_markdown(
    tables: Mapping[str, pd.DataFrame],
    figures: Mapping[str, Mapping[str, str]] | None = None,
    meta: Mapping | None = None,
    title: str = "steerdeco: do the predicted T and P obey randomness commands?",
) -> str:
    """The Markdown report of the ``<protocol>.<name>`` tables (figure links relative to the report)."""
    figures = figures or {}
    meta = dict(meta or {})
    lines = [f"# {title}", ""]
    lines += scorecard_markdown(meta, tables)
    lines += [
        "Paired analysis over prompt groups: every commanded variant is compared with the no-command variant of the "
        "same prompt (and seed), differences are averaged within a group, and groups are the units. "
        f"Intervals are 95% percentile bootstrap CIs over groups ({meta.get('n_boot', '?')} resamples, seed "
        f"{meta.get('seed', '?')}); consistency is the share of groups moving in the commanded direction "
        "(low: down, high: up); p-values are two-sided (paired sign test, Wilcoxon signed-rank).",
        "",
    ]
    for protocol, name in PROTOCOLS.items():
        keys = {k.split(".", 1)[1]: v for k, v in tables.items() if k.startswith(protocol + ".")}
        if not keys:
            continue
        info = meta.get(protocol, {})
        lines += [f"## {name}", ""]
        if info:
            lines += [
                f"{info.get('n_rows', '?')} rows, {info.get('n_groups', '?')} prompt groups "
                f"({info.get('n_eval_groups', '?')} held-out), seeds {info.get('seeds', '?')}. "
                + ("Tables use held-out prompts (`split == \"eval\"`) unless noted." if info.get("eval_only_used")
                   else "No held-out split found: tables use every prompt."),
                "",
            ]
        main = keys["main"]
        lines += ["### Consistency (held-out prompts, all phrasings)", "", format_consistency_table(main), ""]
        if "main_by_command_split" in keys:
            split_table = keys["main_by_command_split"]
            base = main[main["variant"] == "none"]
            for value in sorted(split_table["command_split"].dropna().astype(str).unique()):
                rows = split_table[split_table["command_split"].astype(str) == value].drop(columns="command_split")
                lines += [f"### Consistency, {value} phrasings", "",
                          format_consistency_table(pd.concat([base, rows], ignore_index=True)), ""]
        lines += ["### Tests and effect sizes (all phrasings)", "",
                  "Placebo rows measure specificity: their change should be near 0 (|Delta| small, CI containing 0, "
                  "large p).", "", format_stats_table(main), ""]
        if "by_level" in keys:
            lines += ["### Dose-response (by level)", "", format_consistency_table(keys["by_level"], by=["level"]), ""]
        if "dose_response" in keys:
            sp = keys["dose_response"].copy()
            sp["p"] = [format_p(p) for p in sp["p"]]
            lines += ["Spearman correlation of the signed level (low k: -k, none: 0, high k: +k) with the per-group "
                      "paired change (`delta`) or the per-group mean value (`mean`, none included):", "",
                      markdown_table(sp), ""]
        if "by_placement" in keys:
            lines += ["### By placement", "", format_consistency_table(keys["by_placement"], by=["placement"]), ""]
        if "by_command_id" in keys:
            lines += ["### By phrasing (command_id)", "", format_consistency_table(keys["by_command_id"], by=["command_id"]), ""]
        if "by_prompt_split" in keys:
            lines += ["### By prompt split (all prompts)", "", format_consistency_table(keys["by_prompt_split"], by=["split"]), ""]
        if "target_tracking" in keys:
            lines += ["### Absolute commands (target temperature)", "", markdown_table(keys["target_tracking"]), ""]
        sections = (
            ("text_effects", "Effects on the text", text_effects_display,
             "Per instance (one conversation, its samples over seeds): distinct-n = unique / total n-grams, "
             "self-BLEU (0..1) of each sample against the others, length in words and generated tokens; "
             "Delta is the paired change against the no-command text (95% CI, Wilcoxon p)."),
            ("decomposition", "Global shift vs token-level change", decomposition_display,
             "Share of the per-token squared difference (commanded minus no-command, same response) explained by "
             "a constant shift, and the per-token RMSE of predicting the commanded values by the no-command "
             "values unchanged, shifted by the row's own mean change, or by one global shift per variant."),
        )
        for key, title, display, intro in sections:
            if key in keys:
                lines += [f"### {title}", "", intro, "", markdown_table(display(keys[key])), ""]
        figs = figures.get(protocol, {})
        if figs:
            lines += ["### Figures", ""]
            for fig_name, file in figs.items():
                lines += [f"![{fig_name.replace('_', ' ')}](figures/{file})", ""]
    lines += measures_markdown(meta, tables, figures)
    lines += ["## Files", "", "Every table is in `tables/` as CSV and JSON (`<protocol>_<table>`), figures in `figures/`.", ""]
    return "\n".join(lines)


def _meta(scores: pd.DataFrame, eval_only: bool) -> dict:
    used = eval_only and "split" in scores.columns and bool((scores["split"] == "eval").any())
    eval_groups = scores.loc[scores["split"] == "eval", "group_id"].nunique() if "split" in scores.columns else 0
    return {
        "n_rows": int(len(scores)),
        "n_groups": int(scores["group_id"].nunique()),
        "n_eval_groups": int(eval_groups),
        "seeds": sorted(int(s) for s in scores["seed"].unique()),
        "eval_only_used": bool(used),
    }


def _write_table(folder: Path, stem: str, table: pd.DataFrame) -> None:
    atomic_write_with(folder / f"{stem}.csv", lambda tmp: table.to_csv(tmp, index=False), overwrite=False)
    atomic_write_with(folder / f"{stem}.json", lambda tmp: table.to_json(tmp, orient="records", indent=1), overwrite=False)


def analyse_protocols(
    given: dict[str, pd.DataFrame], n_boot: int = 2000, seed: int = 0, eval_only: bool = True,
    prompt_only: pd.DataFrame | None = None, seen: Mapping | None = None, extra_measures: Mapping | None = None,
) -> tuple[dict[str, pd.DataFrame], dict]:
    """:func:`analyse` every protocol's scores: ``({"<protocol>.<table>": DataFrame}, report metadata)``.

    The metadata also holds the steering ``measures``, the ``scorecard`` and the side-by-side
    ``samples`` (:mod:`analysis.scorecard`), computed on held-out prompts; ``prompt_only``: the
    prompt-only baseline's generated scores; ``seen``: named values of the train prompts
    (:func:`analysis.steering.seen_targets`); ``extra_measures``: measured apart from the scores (e.g.
    ``{"lm_guard": ...}``, :mod:`analysis.lm_guard`), added to the measures before the scorecard.
    """
    tables: dict[str, pd.DataFrame] = {}
    meta: dict = {"n_boot": n_boot, "seed": seed, "eval_only": eval_only}
    for protocol, scores in given.items():
        for name, table in analyse(scores, protocol, eval_only=eval_only, n_boot=n_boot, seed=seed).items():
            tables[f"{protocol}.{name}"] = table
        meta[protocol] = _meta(scores, eval_only)
    held = {p: prepare_scores(held_out(s)[0]) for p, s in given.items()}
    if prompt_only is not None:
        meta["prompt_only"] = _meta(prompt_only, eval_only)
        fixed = prepare_scores(prompt_only)["mean_temperature"].dropna()
        meta["prompt_only"]["temperature"] = float(fixed.iloc[0]) if len(fixed) else None
        prompt_only = held_out(prompt_only)[0]
    measures, measure_tables = steering_measures(held.get("teacher_forced"), held.get("free_running"), prompt_only,
                                                 seen=seen, n_boot=n_boot, seed=seed)
    tables.update(measure_tables)
    measures.update(extra_measures or {})
    meta["measures"] = json_ready(measures)
    meta["scorecard"] = json_ready(scorecard(measures))
    if "free_running" in held:
        meta["samples"] = sample_table(held["free_running"]).to_dict(orient="records")
    return tables, meta


def write_report(
    out_dir: str | os.PathLike,
    teacher_forced: pd.DataFrame | None = None,
    free_running: pd.DataFrame | None = None,
    overwrite: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    eval_only: bool = True,
    figures: bool = True,
    prompt_only: pd.DataFrame | None = None,
    seen: Mapping | None = None,
    extra_measures: Mapping | None = None,
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Analyse the given protocols and write ``out_dir`` (module docstring).

    ``prompt_only``, ``seen`` and ``extra_measures``: see :func:`analyse_protocols`.

    Returns:
        ``(markdown, tables)``: the report text and ``{"<protocol>.<name>": DataFrame}``.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ValueError: no scores given, or a main table cannot be computed.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"output folder {out_dir} exists; pass overwrite=True to replace it")
    given = {k: v for k, v in (("teacher_forced", teacher_forced), ("free_running", free_running)) if v is not None}
    if not given:
        raise ValueError("write_report needs teacher_forced and/or free_running variant scores")
    tables, meta = analyse_protocols(given, n_boot=n_boot, seed=seed, eval_only=eval_only, prompt_only=prompt_only,
                                     seen=seen, extra_measures=extra_measures)

    def recheck() -> None:
        if out_dir.exists() and not overwrite:  # appeared meanwhile
            raise FileExistsError(f"output folder {out_dir} exists; pass overwrite=True to replace it")

    with staged_folder(out_dir, recheck) as folder:
        markdown = write_report_files(folder, given, tables, meta, figures=figures, eval_only=eval_only)
    logger.info("wrote %s (%d tables)", out_dir, len(tables))
    return markdown, tables


def write_report_files(
    folder: Path,
    given: Mapping[str, pd.DataFrame],
    tables: Mapping[str, pd.DataFrame],
    meta: Mapping,
    figures: bool = True,
    eval_only: bool = True,
    appendix: str | None = None,
) -> str:
    """Write the figures, ``tables/``, ``report.md`` (with ``appendix`` at the end) and ``summary.json``
    of :func:`analyse_protocols`' ``tables`` and ``meta`` into ``folder``; returns the Markdown."""
    fig_files: dict[str, dict[str, str]] = {}
    if figures:
        for protocol, scores in given.items():
            own = {k.split(".", 1)[1]: v for k, v in tables.items() if k.startswith(protocol + ".")}
            fig_files[protocol] = make_figures(prepare_scores(scores), own, folder / "figures", protocol, eval_only=eval_only)
        calibration = calibration_figures(tables, folder / "figures")
        if calibration:
            fig_files["calibration"] = calibration
    for key, table in tables.items():
        _write_table(folder / "tables", key.replace(".", "_"), table)
    markdown = render_markdown(tables, fig_files, meta)
    if appendix:
        markdown = markdown.rstrip("\n") + "\n\n" + appendix
    atomic_write_text(folder / "report.md", markdown)
    summary = json_ready({**meta, "tables": sorted(tables), "figures": fig_files})
    atomic_write_text(folder / SUMMARY_FILE, json.dumps(summary, indent=1, allow_nan=False))
    return markdown


def read_summary(folder: Path) -> dict:
    """The ``summary.json`` that :func:`write_report_files` wrote into ``folder`` ({} when it has none)."""
    try:
        return json.loads((Path(folder) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
