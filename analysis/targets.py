"""The targets of issues 12 and 16 as data: each names the measure it reads and the bound it must meet (:data:`TARGETS`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .formatting import format_number, format_p
from .statistics import share_interval

SPLITS = ("train", "heldout")
TEXT_P = 0.01  # the text targets' significance level
PLACEBO_P = 0.05  # placebo text: "no significant change" at this family-wise level (Holm over its measures)


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
    """No significant change in any of the text measures, as one family: a change is significant when the
    Holm-adjusted p-value of the smallest one (``k * min p`` over ``k`` measures) is below :data:`PLACEBO_P`,
    so that a placebo which changes nothing fails at rate ``PLACEBO_P``, not ``k`` times that."""
    ps = [_text(measures, split, m, "placebo_p") for m in ("self_bleu", "distinct_2")]
    ps = [p for p in ps if _finite(p)]
    if not ps:
        return None
    adjusted = min(1.0, len(ps) * min(ps))
    return Cell(adjusted, adjusted >= PLACEBO_P, f"Holm p {format_p(adjusted)} (min p {format_p(min(ps))} of {len(ps)})")


def _ordering(measures: Mapping, split: str) -> Cell | None:
    value = _param(measures, split, "levels_strictly_ordered")
    if value is None:
        return None
    return Cell(bool(value), bool(value), "yes" if value else "no")


def _baseline(measures: Mapping, split: str) -> Cell | None:
    return _number(_get(measures, "parameter", "baseline", "temperature_mean"), lambda v: 0.6 <= v <= 1.2)


def _effect_ratio(direction: str) -> Callable[[Mapping, str], Cell | None]:
    return lambda m, s: _number(_get(m, "parameter", "effect_ratio", direction), lambda v: v >= 0.7)


def _lm_guard(measures: Mapping, split: str) -> Cell | None:
    g = _get(measures, "lm_guard")
    if not g:
        return None
    return Cell(g["relative_change"], g["passed"], f"{g['relative_change']:+.2%} [{g['ci_low']:+.2%}, {g['ci_high']:+.2%}], "
                f"{g['n_examples']} {g['source']} answers" + (" (backbone unchanged)" if g["backbone"] == "unchanged" else ""))


def _within_base(measures: Mapping, split: str) -> Cell | None:
    entries = _get(measures, "text", "no_command_within_base") or {}
    chosen = [(k, v) for k, v in entries.items() if k in ("self_bleu", "distinct_2")]
    if not chosen:
        return None
    ok = all(v["within"] for _, v in chosen)
    text = "; ".join(f"{k} {v['heads_mean']:.3f} {'in' if v['within'] else 'outside'} [{v['base_lo']:.3f}, {v['base_hi']:.3f}]"
                     for k, v in chosen)
    return Cell(ok, ok, text)


def _reference(measures: Mapping, split: str) -> Cell | None:
    """No-command T, P (|median log ratio| <= 0.05) and text (within the CI) against heads not trained to steer."""
    guard = _get(measures, "no_command_reference") or {}
    params = [(k, v) for k, v in (guard.get("parameters") or {}).items()]
    text = [(k, v) for k, v in (guard.get("text") or {}).items() if k in ("self_bleu", "distinct_2")]
    if not params and not text:
        return None
    ok = all(v["within"] for _, v in params + text)
    parts = [f"{'T' if k == 'temperature' else 'P'} {v['heads_median']:.2f} vs {v['reference_median']:.2f}" for k, v in params]
    parts += [f"{k} {v['heads_mean']:.3f} {'in' if v['within'] else 'outside'} [{v['reference_lo']:.3f}, "
              f"{v['reference_hi']:.3f}]" for k, v in text]
    return Cell(ok, ok, "; ".join(parts))


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


def _share_of_count(entry: Mapping | None, count_key: str, minimum: float) -> Cell | None:
    """A share that must reach ``minimum``, shown with the count it is out of and its 95% Wilson interval (a share
    of a few dozen rows is uncertain by more than the gap to many targets); None when nothing was counted."""
    if not entry or not entry.get(count_key):
        return None
    out = _share(entry["share"], minimum)
    if out is None:
        return None
    low, high = share_interval(out.value, int(entry[count_key]))
    return Cell(out.value, out.ok, f"{out.text} of {entry[count_key]} [{low:.0%}, {high:.0%}]")


def _named(name: str, cell: str, minimum: float) -> Callable[[Mapping, str], Cell | None]:
    return lambda measures, split: _share_of_count(_param(measures, split, name, cell), "n_rows", minimum)


def _named_zero(measures: Mapping, split: str) -> Cell | None:
    return _share_of_count(_param(measures, split, "no_randomness"), "n_rows", 0.9)


def _zero_identical(measures: Mapping, split: str) -> Cell | None:
    return _share_of_count(_text(measures, split, "no_randomness_identical"), "n_prompts", 0.9)


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
    Target("text_placebo", "12.4", "Text: placebo changes nothing (self-BLEU, distinct-2)", "Holm p >= 0.05", _placebo_text),
    Target("no_command_diversity", "12.5", "No-command text diversity within the base model's 95% CI", "yes", _within_base,
           splits=("heldout",)),
    Target("no_command_reference", "MEASURES", "No command: T, P and text as heads not trained to steer", "yes",
           _reference, splits=("heldout",)),
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
