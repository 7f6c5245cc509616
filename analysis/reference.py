"""The no-command guard of MEASURES.md: without a command, do the heads behave as heads not trained to steer?

Steering training must leave a prompt without a command as it was. "As it was" is the decoding the
same pipeline gives without the steering terms: *reference heads*, trained on the same data with
AutoDeco's terms alone (every weight of ``steerdeco.training.objective.STEERING_WEIGHT_FIELDS`` at 0, as
in the header of ``configs/demo.yaml``; the demo trains them next to its heads). On the analysed prompts'
no-command rows, :func:`reference_guard` compares:

* teacher-forced response-mean T and P: the median over prompts of ``log(heads / reference)``, with
  the bootstrap CI of its mean; within noise when ``|median| <=`` :data:`TOLERANCE` (the placebo's
  tolerance of issue 12.2);
* free-running text (the same seeds and prompts as the heads' free-running scores): the heads'
  no-command mean self-BLEU, distinct-2 and compression within the reference's 95% CI, as for the
  base model in :mod:`analysis.text_effects`.

The result goes into the measures as ``no_command_reference`` (``extra_measures`` of
:func:`analysis.report.analyse_protocols`) and into the scorecard (:mod:`analysis.targets`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .statistics import paired_stats

logger = logging.getLogger(__name__)

TOLERANCE = 0.05  # |median log ratio|, as the placebo target of issue 12.2


def _response_means(scores: pd.DataFrame, column: str) -> pd.Series:
    none = scores[scores["variant"] == "none"]
    return none.groupby("group_id")[column].apply(lambda arrays: float(np.mean([np.mean(a) for a in arrays])))


def parameter_comparison(heads: pd.DataFrame, reference: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """``{"temperature"|"top_p": {...}}``: per-prompt log ratio of the no-command response-mean values."""
    out = {}
    for column in ("temperature", "top_p"):
        h, r = _response_means(heads, column), _response_means(reference, column)
        common = h.index.intersection(r.index)
        if len(common) < 2:
            continue
        log_ratio = np.log(h[common].to_numpy(float) / r[common].to_numpy(float))
        st = paired_stats(log_ratio, 0, n_boot, seed)
        median = float(np.median(log_ratio))
        out[column] = {"heads_median": float(h[common].median()), "reference_median": float(r[common].median()),
                       "median_log_ratio": median, "mean_log_ratio": st["delta"], "ci_low": st["delta_lo"],
                       "ci_high": st["delta_hi"], "n_prompts": int(len(common)), "within": bool(abs(median) <= TOLERANCE)}
    return out


def reference_guard(
    reference_model,
    tokenizer,
    rows: Sequence[Mapping],
    scores: Mapping[str, pd.DataFrame],
    *,
    seeds: Iterable[int] = (0, 1, 2),
    max_new_tokens: int = 48,
    batch_size: int = 8,
    backbone_cache=None,
    max_response_tokens: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Score the no-command rows of ``rows`` with ``reference_model`` and compare them with the heads' ``scores``.

    Args:
        reference_model: an :class:`~steerdeco.AutoDecoModel` with the reference heads (same backbone).
        rows: the analysed control rows; only their no-command rows are scored.
        scores: the heads' variant scores by protocol (``teacher_forced``, ``free_running``), as
            :func:`analysis.scoring.score_rows` returns them; the reference scores the protocols given.
        seeds, max_new_tokens, batch_size, backbone_cache, max_response_tokens: as for the heads' scores.

    Returns:
        ``{"parameters": parameter_comparison(...), "text": {measure: {...}}, "n_text_prompts": int}``;
        a protocol the heads were not scored with is left out.
    """
    from .collect import free_running_scores, teacher_forced_scores
    from .options import normalise_seeds
    from .text_effects import instance_text_metrics, no_command_within

    out: dict = {}
    none_rows = [dict(r) for r in rows if r.get("variant") == "none"]
    if "teacher_forced" in scores and none_rows:
        reference = teacher_forced_scores(reference_model, tokenizer, none_rows, batch_size=batch_size, progress=progress,
                                          backbone_cache=backbone_cache, max_response_tokens=max_response_tokens)
        out["parameters"] = parameter_comparison(scores["teacher_forced"], reference, n_boot, seed)
    heads_text = scores.get("free_running")
    if heads_text is not None:
        groups = set(heads_text.loc[heads_text["variant"] == "none", "group_id"])
        text_rows = [r for r in none_rows if r["group_id"] in groups]
        if text_rows:
            padding_side = tokenizer.padding_side
            tokenizer.padding_side = "left"
            try:
                reference = free_running_scores(reference_model, tokenizer, text_rows, seeds=normalise_seeds(list(seeds)),
                                                 max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
            finally:
                tokenizer.padding_side = padding_side
            within = no_command_within(instance_text_metrics(heads_text), instance_text_metrics(reference), n_boot, seed)
            out["text"] = {measure: {"heads_mean": v["heads_mean"], "reference_mean": v["base_mean"],
                                     "reference_lo": v["base_lo"], "reference_hi": v["base_hi"], "within": v["within"]}
                           for measure, v in within.items()}
            out["n_text_prompts"] = len(text_rows)
    logger.info("no-command guard against the reference heads: %s", out)
    return out
