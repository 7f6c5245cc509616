"""Does a command change the generated text, not only the predicted numbers?

For free-running variant scores (schema in :mod:`analysis.consistency`, with a ``text`` column),
per variant: distinct-1/2/3, self-BLEU, length in words and in generated tokens.

Units: an *instance* is one conversation, i.e. one ``(group_id, variant, level, command_id,
placement)``; its samples are its texts over the seeds. Text metrics are computed per instance
(so every instance pools the same number of samples and distinct-n stays comparable), averaged
within the group per variant, then compared with the group's no-command instance exactly like the
T/P effects (:func:`analysis.consistency.effect_table`: bootstrap CI of the mean paired difference,
sign and Wilcoxon tests, d_z; no "consistency" since text metrics have no commanded sign).

* ``distinct_n``: unique n-grams / total n-grams over the instance's samples (n-grams do not
  cross sample boundaries); tokens are lowercased words and punctuation (:func:`tokenize`);
* ``self_bleu``: mean over samples of the sentence BLEU (sacrebleu, 13a tokenizer, effective
  order) of the sample against the instance's other samples, scaled to 0..1; needs >= 2 samples
  (NaN otherwise, e.g. a single seed);
* ``words``: mean tokens per sample by :func:`tokenize`; ``tokens``: mean generated tokens (the
  length of the ``temperature`` array).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .consistency import effect_table, validate_scores

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"\w+|[^\w\s]")
INSTANCE_KEYS = ("group_id", "variant", "level", "command_id", "placement")
TEXT_MEASURES = ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "words", "tokens")


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


def text_metrics(texts: Sequence[str]) -> dict[str, float]:
    """``n_samples, distinct_1, distinct_2, distinct_3, self_bleu, words`` of one set of samples."""
    texts = [t for t in texts if t is not None and not (isinstance(t, float) and math.isnan(t))]
    return {
        "n_samples": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "self_bleu": self_bleu(texts),
        "words": float(np.mean([len(tokenize(t)) for t in texts])) if texts else math.nan,
    }


def instance_text_metrics(scores: pd.DataFrame) -> pd.DataFrame:
    """Text metrics per instance (module docstring).

    Returns:
        DataFrame ``group_id, variant, level, command_id, placement, command_split, split,
        n_samples`` + :data:`TEXT_MEASURES`, with ``seed = 0`` so the paired statistics of
        :mod:`analysis.consistency` apply directly.

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
        for extra in ("command_split", "split"):
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
        :func:`analysis.consistency.effect_table` over the instance metrics: one row per
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
    from .consistency import LABELS, VARIANTS, format_ci, format_number

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
    from .consistency import format_p

    text = format_p(p)
    return f"(p{text})" if text.startswith("<") else f"(p={text})"
