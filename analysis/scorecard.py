"""The one-glance scorecard: every target of issues 12 and 16 against the measured values.

:func:`steering_measures` computes what the targets read (:func:`analysis.steering.parameter_measures`
on teacher-forced scores, :func:`analysis.text_effects.text_measures` on free-running scores and the
prompt-only baseline); :func:`scorecard` turns them into one row per target (:data:`analysis.targets.TARGETS`) with the value under
train wordings, the value under held-out wordings and pass / fail. A target passes when every value
it has meets it (split-independent targets, such as the no-command T, have the same value in both
columns; the effect-size ratio has only a held-out value). A target with no value is ``n/a`` (not
measured in this run, e.g. no command names a top-p value).

:func:`scorecard_markdown` renders the table, two prompts' samples side by side, and the AutoDeco
paper's comparison row; :func:`json_ready` makes the nested results writable as strict JSON.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .formatting import format_number, format_p, markdown_table
from .targets import SPLITS, TARGETS

logger = logging.getLogger(__name__)

SPLIT_LABELS = {"train": "train wordings", "heldout": "held-out wordings"}
#: The AutoDeco paper's (arXiv 2510.26697) steering result, for the comparison row.
PAPER = {"baseline_t": 0.72, "delta_low": -0.11, "delta_high": 0.10, "consistency_low": 0.99, "consistency_high": 0.96}
SAMPLE_CHARS = 320  # a sample is cut to this many characters in the side-by-side table


# -------------------------------------------------------------------------------------------- public


def steering_measures(
    teacher_forced: pd.DataFrame | None = None,
    free_running: pd.DataFrame | None = None,
    prompt_only: pd.DataFrame | None = None,
    seen: Mapping | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """``({"parameter": ..., "text": ...}, tables)`` of the given held-out scores (a part is skipped, logged, when it fails)."""
    from .steering import parameter_measures
    from .text_effects import text_measures

    measures: dict = {}
    tables: dict[str, pd.DataFrame] = {}
    if teacher_forced is not None:
        try:
            measures["parameter"], own = parameter_measures(teacher_forced, seen=seen)
            tables.update({f"steering.{k}": v for k, v in own.items()})
        except ValueError as err:
            logger.warning("parameter-level steering measures skipped: %s", err)
    if free_running is not None and "text" in free_running.columns:
        try:
            measures["text"], own = text_measures(free_running, prompt_only, n_boot=n_boot, seed=seed)
            tables.update({f"text.{k}": v for k, v in own.items()})
        except ValueError as err:
            logger.warning("text-level steering measures skipped: %s", err)
    return measures, tables


def scorecard(measures: Mapping) -> list[dict]:
    """One dict per target: ``key, issue, name, target``, per split ``<split>`` (value), ``<split>_ok``,
    ``<split>_text``, and ``status``: ``pass`` / ``FAIL`` / ``n/a``."""
    rows = []
    for target in TARGETS:
        row: dict = {"key": target.key, "issue": target.issue, "name": target.name, "target": target.target}
        oks = []
        for split in SPLITS:
            cell = target.measure(measures, split) if split in target.splits else None
            row[split] = None if cell is None else cell.value
            row[f"{split}_ok"] = None if cell is None else cell.ok
            row[f"{split}_text"] = "—" if cell is None else cell.text
            if cell is not None and cell.ok is not None:
                oks.append(cell.ok)
        row["status"] = "n/a" if not oks else ("pass" if all(oks) else "FAIL")
        rows.append(row)
    return rows


def scorecard_table(rows: list[dict]) -> pd.DataFrame:
    """The scorecard as display strings: ``Issue, Target, Goal, Train wordings, Held-out wordings, Result``."""
    return pd.DataFrame(
        [{"Issue": r["issue"], "Measure": r["name"], "Target": r["target"], "Train wordings": r["train_text"],
          "Held-out wordings": r["heldout_text"], "Result": r["status"]} for r in rows]
    )


def scorecard_count(rows: list[dict]) -> str:
    """``"N of M measured targets pass (K not measured in this run)"``."""
    n_pass = sum(r["status"] == "pass" for r in rows)
    n_measured = sum(r["status"] != "n/a" for r in rows)
    return f"{n_pass} of {n_measured} measured targets pass ({len(rows) - n_measured} not measured in this run)"


def scorecard_lines(rows: list[dict], measure_chars: int = 50, cell_chars: int = 24) -> list[str]:
    """The scorecard as fixed-width console lines: a count sentence, a header, then one line per target
    (result, issue, measure, train and held-out wordings); long cells are cut with an ellipsis."""
    lines = [scorecard_count(rows), ""]
    issue_chars = max([len("issue")] + [len(str(r["issue"])) for r in rows])
    layout = f"{{:<6}} {{:<{issue_chars}}} {{:<{measure_chars}}} {{:<{cell_chars}}} {{}}"
    lines.append(layout.format("result", "issue", "measure", "train wordings", "held-out wordings"))
    for r in rows:
        cells = [_clip(r["name"], measure_chars), _clip(r["train_text"], cell_chars), _clip(r["heldout_text"], cell_chars)]
        lines.append(layout.format(r["status"], r["issue"], *cells).rstrip())
    return lines


def console_summary(meta: Mapping) -> list[str]:
    """What a run prints of its ``summary.json`` (``meta``): the scorecard as :func:`scorecard_lines`, then the
    first prompt's samples side by side, one line each; empty when the run measured neither."""
    lines: list[str] = []
    if meta.get("scorecard"):
        lines += ["Steering targets of issues 12 and 16 (held-out prompts; teacher-forced unless the measure says text)", ""]
        lines += scorecard_lines(meta["scorecard"]) + [""]
    if meta.get("samples"):
        sample = meta["samples"][0]
        lines += ["Samples (free-running, first seed; the command in brackets):"]
        lines += [f"  {column.lower():<11} {text}" for column, text in sample.items()] + [""]
    return lines


def sample_table(free_running: pd.DataFrame, n_prompts: int = 2, level: int = 3) -> pd.DataFrame:
    """Seed-0 (lowest seed) samples of ``n_prompts`` prompts side by side: low-``level`` / none / high-``level``.

    Held-out wordings are preferred; each commanded cell starts with the command in brackets.
    """
    columns = ["Prompt", f"Low-{level}", "No command", f"High-{level}"]
    if free_running is None or "text" not in free_running.columns or free_running.empty:
        return pd.DataFrame(columns=columns)
    first = free_running[free_running["seed"] == free_running["seed"].min()]
    levels = pd.to_numeric(first["level"], errors="coerce")
    rows = []
    for group_id, cell in first.groupby("group_id", sort=True):
        lv = levels[cell.index]
        picks = {"none": cell[cell["variant"] == "none"]}
        for variant in ("low", "high"):
            chosen = cell[(cell["variant"] == variant) & (lv == level)]
            held = chosen[chosen["command_split"].astype(str) == "heldout"]
            picks[variant] = held if len(held) else chosen
        if any(frame.empty for frame in picks.values()):
            continue
        prompt = picks["none"].iloc[0].get("prompt_text") if "prompt_text" in cell.columns else None
        record = {"Prompt": _clip(prompt, 160) if isinstance(prompt, str) and prompt else str(group_id)}
        for variant, column in (("low", columns[1]), ("none", columns[2]), ("high", columns[3])):
            row = picks[variant].iloc[0]
            text = _clip(row["text"])
            command = row.get("command") if variant != "none" else None
            record[column] = f"[{_clip(command, 80)}] {text}" if isinstance(command, str) and command else text
        rows.append(record)
        if len(rows) >= n_prompts:
            break
    return pd.DataFrame(rows, columns=columns)


def _clip(text, limit: int = SAMPLE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def paper_comparison(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The paper's steering row next to this run's (teacher-forced, held-out prompts; all and per wording split)."""
    columns = ["Source", "Baseline T", "Delta T low", "Delta T high", "Consistency low", "Consistency high"]
    rows = [{"Source": "AutoDeco paper (arXiv 2510.26697)", "Baseline T": format_number(PAPER["baseline_t"]),
             "Delta T low": f"{PAPER['delta_low']:+.2f}", "Delta T high": f"{PAPER['delta_high']:+.2f}",
             "Consistency low": f"{PAPER['consistency_low']:.0%}", "Consistency high": f"{PAPER['consistency_high']:.0%}"}]
    main = tables.get("teacher_forced.main")
    if main is None:
        return pd.DataFrame(rows, columns=columns)
    t = main[main["metric"] == "temperature"]
    base = t.loc[t["variant"] == "none", "mean_value"]
    base_text = format_number(float(base.iloc[0])) if len(base) else "—"
    cells = [("this run, all wordings", t)]
    by_split = tables.get("teacher_forced.main_by_command_split")
    if by_split is not None:
        split_t = by_split[by_split["metric"] == "temperature"]
        for split in SPLITS:
            cells.append((f"this run, {SPLIT_LABELS[split]}", split_t[split_t["command_split"].astype(str) == split]))
    for label, cell in cells:
        record = {"Source": label, "Baseline T": base_text}
        for variant in ("low", "high"):
            row = cell[cell["variant"] == variant]
            record[f"Delta T {variant}"] = f"{float(row['delta'].iloc[0]):+.2f}" if len(row) else "—"
            record[f"Consistency {variant}"] = f"{float(row['consistency'].iloc[0]):.0%}" if len(row) else "—"
        rows.append(record)
    return pd.DataFrame(rows, columns=columns)


def scorecard_markdown(meta: Mapping, tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """The report's opening sections: scorecard, samples side by side, paper comparison (Markdown lines)."""
    rows = meta.get("scorecard")
    lines: list[str] = []
    if rows:
        lines += ["## Scorecard (issues 12 and 16)", "",
                  f"{scorecard_count(rows)}. "
                  "Held-out prompts; teacher-forced unless the measure says text; definitions in MEASURES.md. A target "
                  "passes when every value shown meets it; a share of counted rows shows its 95% Wilson interval in "
                  "brackets (the verdict reads the share itself).", "", markdown_table(scorecard_table(rows)), ""]
    samples = meta.get("samples")
    if samples:
        lines += ["## Samples side by side", "",
                  "Free-running, first seed; the command (held-out wording where there is one) in brackets.", "",
                  markdown_table(pd.DataFrame(samples)), ""]
    if "teacher_forced.main" in tables:
        lines += ["## Comparison with the AutoDeco paper", "",
                  "Mean paired change of the response-mean T against no command, and consistency, on held-out prompts.",
                  "", markdown_table(paper_comparison(tables)), ""]
    return lines


def json_ready(value):
    """``value`` with NaN / inf -> None, numpy scalars -> Python, tuples -> lists, keys -> str (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _named_value_table(named: pd.DataFrame) -> pd.DataFrame:
    """Per command split and named value: rows, mean predicted value, share on target, seen in training."""
    out = (named.assign(on=named["on_target"].astype(float))
           .groupby(["command_split", "target"], dropna=False)
           .agg(rows=("value", "size"), mean_predicted=("value", "mean"), on_target=("on", "mean"),
                seen=("seen", "first"))
           .reset_index())
    out["seen"] = out["seen"].map({True: "yes", False: "no"}).fillna("—")
    return out


def _number_format_table(named: pd.DataFrame) -> pd.DataFrame | None:
    """Per command split and number format (0.3, 0.30, .3, zero point three, 30%): rows, share on target, median
    error; None where no row's format is known."""
    known = named[named["number_format"].notna()] if "number_format" in named.columns else named.iloc[:0]
    if known.empty:
        return None
    return (known.assign(on=known["on_target"].astype(float))
            .groupby(["command_split", "number_format"], dropna=False)
            .agg(rows=("value", "size"), on_target=("on", "mean"), median_error=("error", "median"))
            .reset_index())


WORST_WORDINGS = 12  # rows of the least-obeyed wordings in the report, per phrasing split


def _wording_lines(wordings: pd.DataFrame | None) -> list[str]:
    """The least-obeyed relative wordings of each phrasing split (those that moved T the wrong way at least once)."""
    if wordings is None or wordings.empty:
        return []
    lines = ["### Wordings that moved T the wrong way (teacher-forced)", "",
             "Relative commands, wording by wording: `commanded_way` is the share of its rows (prompts) whose T moved "
             f"the commanded way, `median_ratio` the median T ratio against no command; the {WORST_WORDINGS} least "
             "obeyed of each phrasing split (every wording: table `steering_wordings`).", ""]
    for split in SPLITS:
        cell = wordings[(wordings["command_split"].astype(str) == split) & (wordings["commanded_way"] < 1)]
        total = int((wordings["command_split"].astype(str) == split).sum())
        if total:
            lines += [f"{SPLIT_LABELS[split].capitalize()}: {len(cell)} of {total} wordings moved T the wrong way at least once"
                      + (":" if len(cell) else "."), ""]
        if not cell.empty:
            lines += [markdown_table(cell.head(WORST_WORDINGS).drop(columns="command_split")), ""]
    return lines


def measures_markdown(meta: Mapping, tables: Mapping[str, pd.DataFrame], figures: Mapping | None = None) -> list[str]:
    """The detail behind the scorecard (Markdown lines): levels, named values, text at level 3, prompt-only baseline."""
    from .lm_guard import guard_markdown
    from .text_effects import text_effects_display

    measures = meta.get("measures") or {}
    lines: list[str] = []
    param = measures.get("parameter")
    if param:
        lines += ["## Steering measures (detail)", ""]
        base = param.get("baseline", {})
        lines += [f"No-command response-mean T over {base.get('n_prompts', '?')} held-out prompts: mean "
                  f"{format_number(base.get('temperature_mean'))}, median {format_number(base.get('temperature_median'))}; "
                  f"top-p mean {format_number(base.get('top_p_mean'))}.", ""]
        levels = tables.get("steering.levels")
        if levels is not None and not levels.empty:
            lines += ["### T ratio by level (teacher-forced)", "",
                      "Per prompt the rows of a level are averaged in log space; `median_ratio` is the median over prompts "
                      "of the T ratio against no command, `mean_log_ratio` the mean log ratio.", "",
                      markdown_table(levels), ""]
        lines += _wording_lines(tables.get("steering.wordings"))
        named_lines = []
        for name, label in (("named_temperature", "temperature"), ("named_top_p", "top-p")):
            named = tables.get(f"steering.{name}")
            if named is not None and not named.empty:
                named_lines += [f"Named {label}, per value:", "", markdown_table(_named_value_table(named)), ""]
                formats = _number_format_table(named)
                if formats is not None:
                    named_lines += [f"Named {label}, per number format (plain 0.3, padded 0.30, bare .3, words zero point "
                                    "three, percent 30%):", "", markdown_table(formats), ""]
        if named_lines:
            seen = param.get("seen_values") or {}
            lines += ["### Named values (teacher-forced)", "",
                      "On target: |T - X| <= max(0.1, 0.25 X) for a named temperature X, |P - X| <= 0.1 for a named top-p. "
                      "A value is seen when a train prompt's row names it"
                      + (f" (seen temperatures: {seen.get('target_temperature')})." if seen.get("target_temperature") is not None
                         else "."), "", *named_lines]
            for fig_name, file in (figures or {}).get("calibration", {}).items():
                lines += [f"![{fig_name.replace('_', ' ')}](figures/{file})", ""]
    text = measures.get("text")
    if text:
        lines += [f"### Text at level {text.get('level', 3)} (free-running, seeds {text.get('seeds')})", "",
                  "Per instance across its seeds: self-BLEU (0..1), distinct-2, compression (bytes / zlib bytes; "
                  "higher = more repetitive); Delta against the same prompt's no-command instance, 95% bootstrap CI, "
                  "Wilcoxon p.", ""]
        for key, label in (("text.level_effects", "heads"), ("text.prompt_only_level_effects", "prompt-only baseline")):
            effects = tables.get(key)
            if effects is None or effects.empty:
                continue
            for split in SPLITS:
                cell = effects[effects["command_split"].astype(str) == split]
                if not cell.empty:
                    lines += [f"{label.capitalize()}, {SPLIT_LABELS[split]}:", "",
                              markdown_table(text_effects_display(cell.drop(columns="command_split"))), ""]
        diff = text.get("heads_minus_prompt_only")
        if diff:
            records = [{"Wordings": SPLIT_LABELS.get(split, split), "Measure": measure, "Variant": f"{variant}-3",
                        "Heads Delta": format_number(v["heads_delta"], 3),
                        "Prompt-only Delta": format_number(v["prompt_only_delta"], 3),
                        "Heads - prompt-only": f"{format_number(v['difference'], 3)} [{format_number(v['lo'], 3)}, "
                                               f"{format_number(v['hi'], 3)}]",
                        "p (Wilcoxon)": format_p(v["p_wilcoxon"])}
                       for split, by_measure in diff.items() for measure, by_variant in by_measure.items()
                       for variant, v in by_variant.items()]
            info = meta.get("prompt_only") or {}
            lines += ["### Heads vs prompt-only baseline", "",
                      "The prompt-only baseline is the base model without heads, sampling at one fixed temperature "
                      f"({info.get('temperature', '?')}) with the same command in the prompt: how users steer today. "
                      "Per prompt, the heads' change against no command minus the baseline's change.", "",
                      markdown_table(pd.DataFrame(records)), ""]
    lines += guard_markdown(measures.get("lm_guard"))
    return lines
