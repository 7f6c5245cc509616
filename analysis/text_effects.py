"""Does a command change the generated text, not only the predicted numbers?

For free-running variant scores (schema in :mod:`analysis.schema`, with a ``text`` column),
per variant: distinct-1/2/3, self-BLEU, length in words and in generated tokens.

Units: an *instance* is one conversation, i.e. one ``(group_id, variant, level, command_id,
placement)``; its samples are its texts over the seeds. Text metrics are computed per instance
(so every instance pools the same number of samples and distinct-n stays comparable), averaged
within the group per variant, then compared with the group's no-command instance exactly like the
T/P effects (:func:`analysis.effects.effect_table`: bootstrap CI of the mean paired difference,
sign and Wilcoxon tests, d_z; no "consistency" since text metrics have no commanded sign).

* ``distinct_n``: unique n-grams / total n-grams over the instance's samples (n-grams do not
  cross sample boundaries); tokens are lowercased words and punctuation (:func:`tokenize`);
* ``self_bleu``: mean over samples of the sentence BLEU (sacrebleu, 13a tokenizer, effective
  order) of the sample against the instance's other samples, scaled to 0..1; needs >= 2 samples
  (NaN otherwise, e.g. a single seed);
* ``compression``: :func:`compression_ratio` of the samples joined by newlines: bytes / zlib bytes;
  higher means more repetition within and across samples, and unlike distinct-n it hardly depends
  on the length;
* ``words``: mean tokens per sample by :func:`tokenize`; ``tokens``: mean generated tokens (the
  length of the ``temperature`` array);
* ``identical``: every sample of the instance is the same text (>= 2 samples).

:func:`text_measures` is what the steering targets read: per command split, the level-3 (low /
high) and placebo instances against the no-command instance for self-BLEU, distinct-2 and
compression (:data:`KEY_MEASURES`; Wilcoxon p, bootstrap CI of the mean paired difference, and the
ordering checks), the share of "no randomness" instances (a command naming temperature 0) whose
samples are identical, and, given a prompt-only baseline (:func:`analysis.collect.prompt_only_scores`:
the base model without heads, one fixed temperature, the same commands), the same numbers for it,
the paired difference of the heads' effect and the prompt-only effect, and whether the heads'
no-command diversity lies within the prompt-only no-command confidence interval.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .effects import effect_table, paired_differences
from .schema import DIRECTIONS, validate_scores
from .statistics import paired_stats

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"\w+|[^\w\s]")
INSTANCE_KEYS = ("group_id", "variant", "level", "command_id", "placement")
TEXT_MEASURES = ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "compression", "words", "tokens")
#: The measures of the steering targets, and the sign a *more random* command should move each.
KEY_MEASURES = {"self_bleu": -1, "distinct_2": 1, "compression": -1}


def tokenize(text: str) -> list[str]:
    """Lowercased word and punctuation tokens: ``"Hi, there!"`` -> ``["hi", ",", "there", "!"]``."""
    return _TOKEN.findall(str(text).lower()) if text is not None else []


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Contiguous n-grams of one token list."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over ``texts`` (within each text); NaN when there are none."""
    grams = [g for text in texts for g in ngrams(tokenize(text), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0..1) of each text against all the others; NaN with < 2 non-empty texts.

    High when the samples repeat each other (low diversity), near 0 for unrelated texts.
    """
    from sacrebleu.metrics import BLEU

    texts = [str(t) for t in texts if t is not None and str(t).strip()]
    if len(texts) < 2:
        return math.nan
    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(hyp, texts[:i] + texts[i + 1 :]).score / 100.0 for i, hyp in enumerate(texts)]
    return float(np.mean(scores))


def compression_ratio(texts: Sequence[str]) -> float:
    """UTF-8 bytes of the texts joined by newlines / their zlib-compressed bytes; NaN when empty.

    About 1 for short unrelated text, larger the more the samples repeat themselves or each other.
    """
    raw = "\n".join(str(t) for t in texts if t is not None).encode("utf-8")
    if not raw.strip():
        return math.nan
    return len(raw) / len(zlib.compress(raw, 9))


def text_metrics(texts: Sequence[str]) -> dict[str, float]:
    """``n_samples, distinct_1..3, self_bleu, compression, words, identical`` of one set of samples."""
    texts = [t for t in texts if t is not None and not (isinstance(t, float) and math.isnan(t))]
    return {
        "n_samples": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "self_bleu": self_bleu(texts),
        "compression": compression_ratio(texts),
        "words": float(np.mean([len(tokenize(t)) for t in texts])) if texts else math.nan,
        "identical": len(texts) >= 2 and len({str(t) for t in texts}) == 1,
    }


def instance_text_metrics(scores: pd.DataFrame) -> pd.DataFrame:
    """Text metrics per instance (module docstring).

    Returns:
        DataFrame ``group_id, variant, level, command_id, placement, command_split, split,
        n_samples`` + :data:`TEXT_MEASURES`, with ``seed = 0`` so the paired statistics of
        :mod:`analysis.effects` apply directly.

    Raises:
        ValueError: no ``text`` column or no non-empty text.
    """
    validate_scores(scores, required=("group_id", "variant", "text"))
    frame = scores[scores["text"].notna()]
    if frame.empty:
        raise ValueError("text effects need free-running rows with a 'text' column; every text is missing")
    keys = [k for k in INSTANCE_KEYS if k in frame.columns]
    frame = frame.copy()
    for k in keys:  # None placement / command_id of the no-command rows must still group
        frame[k] = frame[k].astype(object).where(frame[k].notna(), "")
    records = []
    for key, instance in frame.groupby(keys, sort=True):
        record = dict(zip(keys, key, strict=True))
        for extra in ("command_split", "split", "target_temperature", "target_top_p", "command"):
            if extra in instance.columns:
                record[extra] = instance[extra].iloc[0]
        record.update(text_metrics(instance["text"].tolist()))
        if "temperature" in instance.columns:
            record["tokens"] = float(np.mean([np.asarray(a).size for a in instance["temperature"]]))
        else:
            record["tokens"] = math.nan
        record["seed"] = 0
        records.append(record)
    out = pd.DataFrame.from_records(records)
    for k in ("command_id", "placement"):
        if k in out.columns:
            out[k] = out[k].replace("", None)
    n_single = int((out["n_samples"] < 2).sum())
    if n_single:
        logger.warning("%d instances have fewer than 2 samples (seeds): self-BLEU is NaN for them", n_single)
    return out


def text_effects(
    scores: pd.DataFrame, measures: Sequence[str] = TEXT_MEASURES, n_boot: int = 2000, seed: int = 0, by: Sequence[str] | str = ()
) -> pd.DataFrame:
    """Text metrics per variant and their paired change against the no-command text.

    Returns:
        :func:`analysis.effects.effect_table` over the instance metrics: one row per
        ``(metric, variant, *by)`` where ``metric`` is a text measure (``distinct_1`` ...),
        ``mean_value`` its mean over groups, ``delta`` ... the paired change vs ``none``.
        Measures that are NaN everywhere (self-BLEU with one seed) are left out (logged).
    """
    instances = instance_text_metrics(scores)
    usable = [m for m in measures if m in instances.columns and instances[m].notna().any()]
    skipped = sorted(set(measures) - set(usable))
    if skipped:
        logger.warning("text measures %s have no values (one sample per instance?); left out", skipped)
    if not usable:
        raise ValueError(f"no text measure could be computed from {len(instances)} instances")
    return effect_table(instances, by=by, metrics=usable, n_boot=n_boot, seed=seed)


def text_effects_display(tidy: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Strings table of :func:`text_effects`: one row per measure; per variant its mean value and,
    for commanded variants, ``Delta [CI] (p=Wilcoxon)`` against the no-command text."""
    from steerdeco.rows import VARIANTS

    from .formatting import format_ci, format_number
    from .schema import LABELS

    variants = [v for v in VARIANTS if v in set(tidy["variant"])]
    rows = []
    for measure, cell in tidy.groupby("metric", sort=False):
        record = {"Measure": measure}
        by_variant = {row["variant"]: row for _, row in cell.iterrows()}
        for variant in variants:
            label = LABELS.get(variant, variant)
            row = by_variant.get(variant)
            record[label] = "—" if row is None else format_number(row["mean_value"], digits)
            if variant != "none":
                record[f"Delta {label}"] = "—" if row is None else (
                    f"{format_ci(row['delta'], row['delta_lo'], row['delta_hi'], digits)} {_p_note(row['p_wilcoxon'])}"
                )
        rows.append(record)
    return pd.DataFrame(rows)


def _p_note(p) -> str:
    from .formatting import format_p

    text = format_p(p)
    return f"(p{text})" if text.startswith("<") else f"(p={text})"


# ------------------------------------------------------------------------------- steering targets


def _expected_sign(measure: str, variant: str) -> int:
    """Sign a commanded variant should move ``measure`` (0: placebo, should not move it)."""
    return KEY_MEASURES[measure] * DIRECTIONS.get(variant, 0)


def level_instances(instances: pd.DataFrame, level: int = 3) -> pd.DataFrame:
    """The no-command, placebo and level-``level`` low / high instances."""
    levels = pd.to_numeric(instances["level"], errors="coerce")
    keep = instances["variant"].isin(["none", "placebo"]) | (instances["variant"].isin(["low", "high"]) & (levels == level))
    return instances[keep]


def _split_instances(instances: pd.DataFrame, split: str) -> pd.DataFrame:
    return instances[(instances["variant"] == "none") | (instances["command_split"].astype(str) == split)]


def _zero_identical(instances: pd.DataFrame) -> dict:
    """Instances naming temperature 0: ``{n_prompts, share}`` whose samples are identical across seeds."""
    if "target_temperature" not in instances.columns:
        return {"n_prompts": 0, "share": math.nan}
    target = pd.to_numeric(instances["target_temperature"], errors="coerce").to_numpy(float)
    zero = instances[np.isfinite(target) & (target == 0.0)]
    per_prompt = zero.groupby("group_id")["identical"].mean()  # a prompt with several such commands: their mean
    return {"n_prompts": int(len(per_prompt)), "share": float(per_prompt.mean()) if len(per_prompt) else math.nan}


def _split_text_summary(instances: pd.DataFrame, level: int, n_boot: int, seed: int) -> tuple[dict, pd.DataFrame]:
    """One command split's key measures: per-variant means, paired deltas and the ordering checks."""
    chosen = level_instances(instances, level)
    out: dict = {"n_prompts": int(chosen.loc[chosen["variant"] == "none", "group_id"].nunique())}
    usable = [m for m in KEY_MEASURES if chosen[m].notna().any()]
    tidy = effect_table(chosen, metrics=usable, variants=("low", "high", "placebo"), n_boot=n_boot, seed=seed,
                        min_groups=2) if usable and (chosen["variant"] != "none").any() else pd.DataFrame()
    for measure in usable:
        cell = tidy[tidy["metric"] == measure] if not tidy.empty else tidy
        entry: dict = {"mean": {}, "delta": {}}
        for row in cell.itertuples():
            entry["mean"][row.variant] = float(row.mean_value)
            if row.variant != "none":
                entry["delta"][row.variant] = {"n_prompts": int(row.n_groups), "delta": float(row.delta),
                                               "lo": float(row.delta_lo), "hi": float(row.delta_hi),
                                               "p_wilcoxon": float(row.p_wilcoxon)}
        means = entry["mean"]
        up = KEY_MEASURES[measure]  # +1: a more random text has more of it
        if all(v in means for v in ("low", "none", "high")):
            seq = [means["low"], means["none"], means["high"]]
            entry["ordered"] = bool(seq[0] < seq[1] < seq[2]) if up > 0 else bool(seq[0] > seq[1] > seq[2])
        else:
            entry["ordered"] = None
        moved = []
        for variant in ("low", "high"):
            d = entry["delta"].get(variant)
            if d is None:
                moved.append(None)
                continue
            moved.append(bool(np.sign(d["delta"]) == _expected_sign(measure, variant)) and d["p_wilcoxon"] < 0.01)
        entry["significant"] = None if None in moved else all(moved)
        placebo = entry["delta"].get("placebo")
        entry["placebo_p"] = None if placebo is None else placebo["p_wilcoxon"]
        out[measure] = entry
    out["no_randomness_identical"] = _zero_identical(instances)
    return out, tidy


def _heads_minus_prompt_only(heads: pd.DataFrame, base: pd.DataFrame, level: int, n_boot: int, seed: int) -> dict:
    """Per split, measure and level-``level`` direction: the heads' paired change minus the prompt-only one."""
    out: dict = {}
    for split in sorted(set(heads["command_split"].dropna().astype(str)) & set(base["command_split"].dropna().astype(str))):
        out[split] = {}
        for measure in KEY_MEASURES:
            out[split][measure] = {}
            pairs = []
            for frame in (heads, base):
                chosen = _split_instances(level_instances(frame, level), split)
                pairs.append(paired_differences(chosen, measure, variants=("low", "high")))
            merged = pairs[0].merge(pairs[1], on=["group_id", "variant"], suffixes=("_heads", "_prompt"))
            for variant in ("low", "high"):
                cell = merged[merged["variant"] == variant]
                if len(cell) < 2:
                    continue
                d = (cell["delta_heads"] - cell["delta_prompt"]).to_numpy(float)
                st = paired_stats(d, _expected_sign(measure, variant), n_boot, seed)
                out[split][measure][variant] = {
                    "n_prompts": int(len(cell)), "heads_delta": float(cell["delta_heads"].mean()),
                    "prompt_only_delta": float(cell["delta_prompt"].mean()), "difference": st["delta"],
                    "lo": st["delta_lo"], "hi": st["delta_hi"], "p_wilcoxon": st["p_wilcoxon"],
                    "heads_stronger_share": st["consistency"],
                }
    return out


def no_command_within(heads: pd.DataFrame, base: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Heads' no-command mean of each key measure against the 95% CI of ``base``'s no-command mean (the
    prompt-only baseline, or reference heads: :mod:`analysis.reference`)."""
    out = {}
    for measure in KEY_MEASURES:
        h = heads.loc[heads["variant"] == "none", measure].dropna().to_numpy(float)
        b = base.loc[base["variant"] == "none", measure].dropna().to_numpy(float)
        if h.size == 0 or b.size < 2:
            continue
        st = paired_stats(b, 0, n_boot, seed)  # the bootstrap CI of the mean of b
        heads_mean = float(h.mean())
        out[measure] = {"heads_mean": heads_mean, "base_mean": st["delta"], "base_lo": st["delta_lo"],
                        "base_hi": st["delta_hi"], "within": bool(st["delta_lo"] <= heads_mean <= st["delta_hi"])}
    return out


def text_measures(
    scores: pd.DataFrame, prompt_only: pd.DataFrame | None = None, level: int = 3, n_boot: int = 2000, seed: int = 0
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The text-level steering measures (module docstring), per command split.

    Args:
        scores: free-running variant scores with ``text`` (held-out prompts; >= 2 seeds for self-BLEU).
        prompt_only: the same rows generated by the base model without heads
            (:func:`analysis.collect.prompt_only_scores`), or None.
        level: the command level compared with no command (low-``level`` / high-``level``).

    Returns:
        ``(measures, tables)``: ``measures = {"level", "seeds", "by_command_split": {split: {measure:
        {"mean": {variant: value}, "delta": {variant: {delta, lo, hi, p_wilcoxon, n_prompts}}, "ordered",
        "significant", "placebo_p"}, "no_randomness_identical": {n_prompts, share}}}}`` plus, with
        ``prompt_only``, ``"prompt_only"`` (the same for it), ``"heads_minus_prompt_only"`` and
        ``"no_command_within_base"``; tables ``instances`` and ``level_effects`` (and their
        ``prompt_only_`` versions).

    Raises:
        ValueError: no text (see :func:`instance_text_metrics`).
    """
    instances = instance_text_metrics(scores)
    measures: dict = {"level": int(level), "seeds": sorted(int(s) for s in scores["seed"].unique())}
    tables: dict[str, pd.DataFrame] = {"instances": instances}
    sources = {"heads": instances}
    if prompt_only is not None:
        sources["prompt_only"] = instance_text_metrics(prompt_only)
        tables["prompt_only_instances"] = sources["prompt_only"]
    for name, frame in sources.items():
        by_split: dict = {}
        effects = []
        for split in sorted(frame["command_split"].dropna().astype(str).unique()):
            summary, tidy = _split_text_summary(_split_instances(frame, split), level, n_boot, seed)
            by_split[split] = summary
            if not tidy.empty:
                effects.append(tidy.assign(command_split=split))
        key = "by_command_split" if name == "heads" else "prompt_only"
        measures[key] = by_split
        if effects:
            tables["level_effects" if name == "heads" else "prompt_only_level_effects"] = pd.concat(effects, ignore_index=True)
    if prompt_only is not None:
        measures["heads_minus_prompt_only"] = _heads_minus_prompt_only(instances, sources["prompt_only"], level, n_boot, seed)
        measures["no_command_within_base"] = no_command_within(instances, sources["prompt_only"], n_boot, seed)
    return measures, tables
