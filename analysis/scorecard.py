"""The one-glance scorecard: every target of issues 12 and 16 against the measured values.

:func:`steering_measures` computes what the targets read (:func:`analysis.steering.parameter_measures`
on teacher-forced scores, :func:`analysis.text_effects.text_measures` on free-running scores and the
prompt-only baseline); :func:`scorecard` turns them into one row per target with the value under
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .consistency import format_number, format_p, markdown_table

logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
SPLIT_LABELS = {"train": "train wordings", "heldout": "held-out wordings"}
#: The AutoDeco paper's (arXiv 2510.26697) steering result, for the comparison row.
PAPER = {"baseline_t": 0.72, "delta_low": -0.11, "delta_high": 0.10, "consistency_low": 0.99, "consistency_high": 0.96}
SAMPLE_CHARS = 320  # a sample is cut to this many characters in the side-by-side table
TEXT_P = 0.01  # the text targets' significance level
PLACEBO_P = 0.05  # placebo text: "no significant change" at this level


@dataclass(frozen=True)
class Cell:
    """One measured value of a target: the number, whether it meets the target, and how to show it."""

    value: float | bool | None
    ok: bool | None
    text: str


@dataclass(frozen=True)
class Target:
    """One target: ``measure(measures, split)`` returns its :class:`Cell` for a command split (None: not measured)."""

    key: str
    issue: str
    name: str
    target: str
    measure: Callable[[Mapping, str], Cell | None]
    splits: tuple[str, ...] = SPLITS


# ------------------------------------------------------------------------------------------- helpers


def _get(tree: Mapping, *path):
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _finite(x) -> bool:
    return x is not None and not isinstance(x, bool) and isinstance(x, int | float | np.number) and math.isfinite(float(x))


def _number(x, check: Callable[[float], bool], digits: int = 2, percent: bool = False) -> Cell | None:
    if not _finite(x):
        return None
    x = float(x)
    return Cell(x, bool(check(x)), f"{x:.0%}" if percent else format_number(x, digits))


def _share(x, minimum: float) -> Cell | None:
    return _number(x, lambda v: v >= minimum, percent=True)


def _param(measures: Mapping, split: str, *path):
    return _get(measures, "parameter", "by_command_split", split, *path)


def _text(measures: Mapping, split: str, *path):
    return _get(measures, "text", "by_command_split", split, *path)


def _text_delta(measure: str, variant: str, sign: int) -> Callable[[Mapping, str], Cell | None]:
    """The level-3 paired change of a text measure: must have sign ``sign`` and p < :data:`TEXT_P`."""

    def measure_fn(measures: Mapping, split: str) -> Cell | None:
        d = _text(measures, split, measure, "delta", variant)
        if d is None or not _finite(d.get("delta")):
            return None
        ok = bool(np.sign(d["delta"]) == sign and _finite(d["p_wilcoxon"]) and d["p_wilcoxon"] < TEXT_P)
        return Cell(float(d["delta"]), ok, f"{d['delta']:+.3f} (p {format_p(d['p_wilcoxon'])})")

    return measure_fn


def _placebo_text(measures: Mapping, split: str) -> Cell | None:
    ps = [_text(measures, split, m, "placebo_p") for m in ("self_bleu", "distinct_2")]
    ps = [p for p in ps if _finite(p)]
    if not ps:
        return None
    return Cell(min(ps), min(ps) >= PLACEBO_P, f"min p {format_p(min(ps))}")


def _ordering(measures: Mapping, split: str) -> Cell | None:
    value = _param(measures, split, "levels_strictly_ordered")
    if value is None:
        return None
    return Cell(bool(value), bool(value), "yes" if value else "no")


def _baseline(measures: Mapping, split: str) -> Cell | None:
    return _number(_get(measures, "parameter", "baseline", "temperature_mean"), lambda v: 0.6 <= v <= 1.2)


def _effect_ratio(direction: str) -> Callable[[Mapping, str], Cell | None]:
    return lambda m, s: _number(_get(m, "parameter", "effect_ratio", direction), lambda v: v >= 0.7)


def _within_base(measures: Mapping, split: str) -> Cell | None:
    entries = _get(measures, "text", "no_command_within_base") or {}
    chosen = [(k, v) for k, v in entries.items() if k in ("self_bleu", "distinct_2")]
    if not chosen:
        return None
    ok = all(v["within"] for _, v in chosen)
    text = "; ".join(f"{k} {v['heads_mean']:.3f} in [{v['base_lo']:.3f}, {v['base_hi']:.3f}]" for k, v in chosen)
    return Cell(ok, ok, text)


def _beats_prompt_only(variant: str) -> Callable[[Mapping, str], Cell | None]:
    """Heads' self-BLEU change minus the prompt-only change: the commanded way, p < :data:`TEXT_P`."""
    sign = 1 if variant == "low" else -1

    def measure_fn(measures: Mapping, split: str) -> Cell | None:
        d = _get(measures, "text", "heads_minus_prompt_only", split, "self_bleu", variant)
        if d is None or not _finite(d.get("difference")):
            return None
        ok = bool(np.sign(d["difference"]) == sign and d["p_wilcoxon"] < TEXT_P)
        return Cell(float(d["difference"]), ok, f"{d['difference']:+.3f} (p {format_p(d['p_wilcoxon'])})")

    return measure_fn


def _lm_guard(measures: Mapping, split: str) -> Cell | None:
    g = _get(measures, "lm_guard")
    if not g:
        return None
    return Cell(g["relative_change"], g["passed"], f"{g['relative_change']:+.2%} [{g['ci_low']:+.2%}, {g['ci_high']:+.2%}], "
                f"{g['n_examples']} {g['source']} answers" + (" (backbone unchanged)" if g["backbone"] == "unchanged" else ""))


def _named(name: str, cell: str, minimum: float) -> Callable[[Mapping, str], Cell | None]:
    def measure_fn(measures: Mapping, split: str) -> Cell | None:
        entry = _param(measures, split, name, cell)
        if not entry or not entry.get("n_rows"):
            return None
        out = _share(entry["share"], minimum)
        return None if out is None else Cell(out.value, out.ok, f"{out.text} of {entry['n_rows']}")

    return measure_fn


def _share_of_count(entry: Mapping | None, count_key: str) -> Cell | None:
    """A share with target >= 90%, shown with the count it is out of; None when nothing was counted."""
    if not entry or not entry.get(count_key):
        return None
    out = _share(entry["share"], 0.9)
    return None if out is None else Cell(out.value, out.ok, f"{out.text} of {entry[count_key]}")


def _named_zero(measures: Mapping, split: str) -> Cell | None:
    return _share_of_count(_param(measures, split, "no_randomness"), "n_rows")


def _zero_identical(measures: Mapping, split: str) -> Cell | None:
    return _share_of_count(_text(measures, split, "no_randomness_identical"), "n_prompts")


TARGETS: tuple[Target, ...] = (
    Target("baseline_t", "12.1", "No-command response-mean T", "in [0.6, 1.2]", _baseline),
    Target("low3_ratio", "12.2", "Level-3 low: median T ratio", "<= 0.5",
           lambda m, s: _number(_param(m, s, "level_ratio", "low", "3"), lambda v: v <= 0.5)),
    Target("high3_ratio", "12.2", "Level-3 high: median T ratio", ">= 1.6",
           lambda m, s: _number(_param(m, s, "level_ratio", "high", "3"), lambda v: v >= 1.6)),
    Target("seven_levels", "12.2", "Seven levels strictly ordered (mean log T ratio)", "yes", _ordering),
    Target("dose_response", "12.2", "Dose-response: median per-prompt Spearman(level, log T)", ">= 0.9",
           lambda m, s: _number(_param(m, s, "dose_response_median_rho"), lambda v: v >= 0.9)),
    Target("placebo_t", "12.2", "Placebo: |median log T ratio|", "<= 0.05",
           lambda m, s: _number(_param(m, s, "placebo_median_log_ratio"), lambda v: abs(v) <= 0.05, digits=3)),
    Target("consistency_t_low", "12.3", "Consistency T, low", ">= 95%",
           lambda m, s: _share(_param(m, s, "consistency", "temperature", "low"), 0.95)),
    Target("consistency_t_high", "12.3", "Consistency T, high", ">= 95%",
           lambda m, s: _share(_param(m, s, "consistency", "temperature", "high"), 0.95)),
    Target("consistency_p_low", "12.2/12.3", "Consistency top-p, low", ">= 95%",
           lambda m, s: _share(_param(m, s, "consistency", "top_p", "low"), 0.95)),
    Target("consistency_p_high", "12.2/12.3", "Consistency top-p, high", ">= 95%",
           lambda m, s: _share(_param(m, s, "consistency", "top_p", "high"), 0.95)),
    Target("full_ordering", "12.3", "Full ordering low < none < high (prompts)", ">= 90%",
           lambda m, s: _share(_param(m, s, "full_ordering"), 0.9)),
    Target("single_low", "12.3", "Single-command consistency, low", ">= 90%",
           lambda m, s: _share(_param(m, s, "single_command_consistency", "low"), 0.9)),
    Target("single_high", "12.3", "Single-command consistency, high", ">= 90%",
           lambda m, s: _share(_param(m, s, "single_command_consistency", "high"), 0.9)),
    Target("effect_ratio_low", "12.3", "Effect held-out / train wordings (log ratio), low", ">= 0.7",
           _effect_ratio("low"), splits=("heldout",)),
    Target("effect_ratio_high", "12.3", "Effect held-out / train wordings (log ratio), high", ">= 0.7",
           _effect_ratio("high"), splits=("heldout",)),
    Target("text_bleu_low", "12.4", "Text: self-BLEU low-3 > none", "Delta > 0, p < 0.01", _text_delta("self_bleu", "low", 1)),
    Target("text_bleu_high", "12.4", "Text: self-BLEU high-3 < none", "Delta < 0, p < 0.01", _text_delta("self_bleu", "high", -1)),
    Target("text_d2_low", "12.4", "Text: distinct-2 low-3 < none", "Delta < 0, p < 0.01", _text_delta("distinct_2", "low", -1)),
    Target("text_d2_high", "12.4", "Text: distinct-2 high-3 > none", "Delta > 0, p < 0.01", _text_delta("distinct_2", "high", 1)),
    Target("text_placebo", "12.4", "Text: placebo changes nothing (self-BLEU, distinct-2)", "p >= 0.05", _placebo_text),
    Target("no_command_diversity", "12.5", "No-command text diversity within the base model's 95% CI", "yes", _within_base,
           splits=("heldout",)),
    Target("lm_guard", "12.5", "LM loss on human-written text vs the base model", "within 2%", _lm_guard, splits=("heldout",)),
    Target("beats_prompt_only_low", "MEASURES", "Heads beat prompt-only: self-BLEU change, low-3", "Delta > 0, p < 0.01",
           _beats_prompt_only("low")),
    Target("beats_prompt_only_high", "MEASURES", "Heads beat prompt-only: self-BLEU change, high-3", "Delta < 0, p < 0.01",
           _beats_prompt_only("high")),
    Target("named_t_seen", "16.1", "Named T on target, values seen in training", ">= 80%",
           _named("named_temperature", "seen", 0.8)),
    Target("named_t_unseen", "16.1", "Named T on target, values not seen in training", ">= 80%",
           _named("named_temperature", "unseen", 0.8)),
    Target("named_p", "16.2", "Named top-p within 0.1", ">= 80%", _named("named_top_p", "all", 0.8)),
    Target("no_randomness_t", "16.3", "\"No randomness\": T <= 0.15", ">= 90%",
           _named_zero),
    Target("no_randomness_text", "16.3", "\"No randomness\": samples identical across seeds", ">= 90%", _zero_identical),
)


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
        n_pass = sum(r["status"] == "pass" for r in rows)
        n_measured = sum(r["status"] != "n/a" for r in rows)
        lines += ["## Scorecard (issues 12 and 16)", "",
                  f"{n_pass} of {n_measured} measured targets pass ({len(rows) - n_measured} not measured in this run). "
                  "Held-out prompts; teacher-forced unless the measure says text; definitions in MEASURES.md. A target "
                  "passes when every value shown meets it.", "", markdown_table(scorecard_table(rows)), ""]
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
        named_lines = []
        for name, label in (("named_temperature", "temperature"), ("named_top_p", "top-p")):
            named = tables.get(f"steering.{name}")
            if named is not None and not named.empty:
                named_lines += [f"Named {label}, per value:", "", markdown_table(_named_value_table(named)), ""]
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
