"""Score control rows with a model: teacher-forced, free-running and the prompt-only baseline, per protocol (:mod:`analysis.collect` does the work)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import pandas as pd

from steerdeco.errors import AnalysisError

from .data import as_row_list, check_responses, select_rows
from .options import ScoringOptions, normalise_seeds

logger = logging.getLogger(__name__)


def score_rows(
    model, tokenizer, rows: Sequence[Mapping], options: ScoringOptions | None = None, timings: dict | None = None
) -> dict[str, pd.DataFrame]:
    """``{protocol: variant scores}`` of ``model`` (an AutoDecoModel) on control-data ``rows``, as ``options`` say (None: the defaults of :class:`~analysis.options.ScoringOptions`).

    Generation pads on the left; the tokenizer's ``padding_side`` is restored afterwards. The
    prompt-only baseline's scores come under the key ``prompt_only``
    (:func:`analysis.collect.prompt_only_scores`). ``timings``: filled with seconds per protocol.
    """
    from .collect import free_running_scores, prompt_only_scores, select_variant_rows, teacher_forced_scores

    options = options if options is not None else ScoringOptions()

    rows = as_row_list(rows)
    if "teacher_forced" in options.protocols:
        check_responses(rows)
    model.eval()
    scores: dict[str, pd.DataFrame] = {}
    for protocol in options.protocols:
        start = time.perf_counter()
        if protocol == "teacher_forced":
            scores[protocol] = teacher_forced_scores(model, tokenizer, rows, batch_size=options.batch_size, progress=options.progress,
                                                     backbone_cache=options.backbone_cache,
                                                     max_response_tokens=options.max_response_tokens)
        else:
            subset = rows
            if options.free_running_groups is not None:
                if isinstance(options.free_running_groups, bool) or not isinstance(options.free_running_groups, int) or options.free_running_groups < 2:
                    raise AnalysisError(f"--free-running-groups must be an integer >= 2, got {options.free_running_groups!r}")
                subset = select_rows(rows, "all", options.free_running_groups, options.seed)
            try:
                subset = select_variant_rows(subset, options.free_running_variants)
            except ValueError as error:
                raise AnalysisError(f"--free-running-variants: {error}") from None
            if not subset:
                raise AnalysisError(f"--free-running-variants {options.free_running_variants!r} selects none of the rows; name "
                                    "variants the data has (e.g. none,low3,high3,placebo,zero) or all")
            padding_side = tokenizer.padding_side
            tokenizer.padding_side = "left"
            try:
                scores[protocol] = free_running_scores(model, tokenizer, subset, seeds=normalise_seeds(list(options.seeds)),
                                                       max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, progress=options.progress)
                if options.prompt_only_temperature is not None:
                    # the base model reads every wording alike: the train wordings' rows make the baseline
                    baseline_rows = [r for r in subset if r.get("command_split") != "heldout"]
                    scores["prompt_only"] = prompt_only_scores(
                        model, tokenizer, baseline_rows, seeds=normalise_seeds(list(options.seeds)), temperature=options.prompt_only_temperature,
                        max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, progress=options.progress)
            finally:
                tokenizer.padding_side = padding_side
        elapsed = time.perf_counter() - start
        logger.info("%s: %d score rows in %.1f s", protocol, len(scores[protocol]), elapsed)
        if timings is not None:
            timings[protocol] = elapsed
    return scores
