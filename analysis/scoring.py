"""Score control rows with a model: teacher-forced, free-running and the prompt-only baseline, per protocol (:mod:`analysis.collect` does the work)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from steerdeco.errors import AnalysisError

from .collect import DEFAULT_FREE_RUNNING_VARIANTS
from .data import as_row_list, check_responses, select_rows
from .options import PROTOCOLS, normalise_protocols, normalise_seeds

logger = logging.getLogger(__name__)


def score_rows(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    protocols: Iterable[str] = PROTOCOLS,
    seeds: Iterable[int] = (0, 1, 2),
    max_new_tokens: int = 48,
    batch_size: int = 8,
    progress: bool = True,
    free_running_groups: int | None = None,
    seed: int = 0,
    free_running_variants: str | Sequence[str] = DEFAULT_FREE_RUNNING_VARIANTS,
    prompt_only_temperature: float | None = None,
    backbone_cache=None,
    max_response_tokens: int | None = None,
    timings: dict | None = None,
) -> dict[str, pd.DataFrame]:
    """``{protocol: variant scores}`` of ``model`` (an AutoDecoModel) on control-data ``rows``.

    ``free_running_groups``: generate for a seeded random subset (``seed``) of at most that many
    groups only (generation costs far more than teacher forcing); ``free_running_variants``: and
    only their rows that this selection names (:func:`analysis.collect.select_variant_rows`).
    ``prompt_only_temperature``: also generate those rows with the base model without heads at
    this temperature (key ``prompt_only``, :func:`analysis.collect.prompt_only_scores`). Generation
    pads on the left; the tokenizer's ``padding_side`` is restored afterwards. ``backbone_cache``,
    ``max_response_tokens``: teacher-forced scoring from the training's backbone cache (see
    :func:`analysis.collect.teacher_forced_scores`). ``timings``: filled with seconds per protocol.
    """
    from .collect import free_running_scores, prompt_only_scores, select_variant_rows, teacher_forced_scores

    protocols = normalise_protocols(list(protocols))
    rows = as_row_list(rows)
    if "teacher_forced" in protocols:
        check_responses(rows)
    model.eval()
    scores: dict[str, pd.DataFrame] = {}
    for protocol in protocols:
        start = time.perf_counter()
        if protocol == "teacher_forced":
            scores[protocol] = teacher_forced_scores(model, tokenizer, rows, batch_size=batch_size, progress=progress,
                                                     backbone_cache=backbone_cache,
                                                     max_response_tokens=max_response_tokens)
        else:
            subset = rows
            if free_running_groups is not None:
                if isinstance(free_running_groups, bool) or not isinstance(free_running_groups, int) or free_running_groups < 2:
                    raise AnalysisError(f"--free-running-groups must be an integer >= 2, got {free_running_groups!r}")
                subset = select_rows(rows, "all", free_running_groups, seed)
            try:
                subset = select_variant_rows(subset, free_running_variants)
            except ValueError as error:
                raise AnalysisError(f"--free-running-variants: {error}") from None
            if not subset:
                raise AnalysisError(f"--free-running-variants {free_running_variants!r} selects none of the rows; name "
                                    "variants the data has (e.g. none,low3,high3,placebo,zero) or all")
            padding_side = tokenizer.padding_side
            tokenizer.padding_side = "left"
            try:
                scores[protocol] = free_running_scores(model, tokenizer, subset, seeds=normalise_seeds(list(seeds)),
                                                       max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
                if prompt_only_temperature is not None:
                    # the base model reads every wording alike: the train wordings' rows make the baseline
                    baseline_rows = [r for r in subset if r.get("command_split") != "heldout"]
                    scores["prompt_only"] = prompt_only_scores(
                        model, tokenizer, baseline_rows, seeds=normalise_seeds(list(seeds)), temperature=prompt_only_temperature,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
            finally:
                tokenizer.padding_side = padding_side
        elapsed = time.perf_counter() - start
        logger.info("%s: %d score rows in %.1f s", protocol, len(scores[protocol]), elapsed)
        if timings is not None:
            timings[protocol] = elapsed
    return scores
