"""Measure a model's per-token T and P on control-data rows, as *variant scores* for the statistics.

Two protocols:

* :func:`teacher_forced_scores`: every variant of a group scores the group's shared response, so the
  per-token values of different variants align position by position. Given the training's backbone
  cache (:mod:`steerdeco.training.cache`), rows found in it are scored from the cached hidden states
  and logit slots without running the backbone; the other rows run through it and are read the same
  way (same logit compression, same hidden-state dtype), so the heads get the same inputs either way;
* :func:`free_running_scores`: every variant generates its own response with dynamic decoding, for
  several seeds, and the trace gives the per-token values and the text.

Both return a pandas DataFrame with one row per (variant row, seed) and the columns the
``analysis`` statistics expect: ``group_id, prompt_id, variant, level, command_id, command_split,
placement, split, seed, temperature, top_p`` (1-D numpy arrays) and, free-running, ``text``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

logger = logging.getLogger(__name__)

META_COLUMNS = ("group_id", "prompt_id", "variant", "level", "command_id", "command_split", "placement", "split")


def _meta(row: dict) -> dict:
    missing = [c for c in META_COLUMNS + ("messages",) if c not in row]
    if missing:
        raise ValueError(f"control-data row {row.get('group_id', '?')!r} lacks columns {missing}; rebuild the data "
                         "with python -m steerdeco.build_control_data")
    meta = {c: row[c] for c in META_COLUMNS}
    meta["target_temperature"] = row.get("target_temperature")
    return meta


def teacher_forced_scores(
    model,
    tokenizer,
    rows: Sequence[dict],
    batch_size: int = 8,
    progress: bool = True,
    backbone_cache=None,
    max_response_tokens: int | None = None,
) -> pd.DataFrame:
    """Per-token T and P of each row's shared ``response`` under the row's own conversation.

    Args:
        backbone_cache: a :class:`~steerdeco.training.cache.BackboneCache` of the same base model, or
            None. With one, the top-p features come from its compressed logit slots (as in training),
            for every row; without, from the exact logits.
        max_response_tokens: truncate each response to this many tokens (EOS included), as the training
            that built the cache did (rows are found in the cache by their token ids).
    """
    from steerdeco.chat import teacher_forced_parameters

    rows = list(rows)
    without = [r.get("group_id") for r in rows if not r.get("response")]
    if without:
        raise ValueError(f"{len(without)} rows have no response (first group {without[0]!r}): teacher forcing needs "
                         "data built with --responses given or --responses generate")
    if backbone_cache is not None:
        params = cached_teacher_forced_parameters(model, tokenizer, rows, backbone_cache, batch_size, progress,
                                                  max_response_tokens)
    else:
        params = teacher_forced_parameters(model, tokenizer, [r["messages"] for r in rows], [r["response"] for r in rows],
                                           batch_size, progress, max_response_tokens)
    records = []
    for row, (t, p) in zip(rows, params, strict=True):
        records.append({**_meta(row), "seed": 0, "temperature": t.numpy(), "top_p": p.numpy()})
    return pd.DataFrame.from_records(records)


@torch.no_grad()
def cached_teacher_forced_parameters(
    model,
    tokenizer,
    rows: Sequence[dict],
    cache,
    batch_size: int = 8,
    progress: bool = True,
    max_response_tokens: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(T [n], P [n])`` per row from the backbone cache; rows not in it run through ``model.base_model``.

    The rows that run through the backbone are read by the code that builds the cache
    (:func:`~steerdeco.training.cache.build_backbone_cache`, with the cache's compression and dtype), so a
    row gets the same heads inputs whichever way it comes.
    """
    from steerdeco.chat import encode_example
    from steerdeco.training.cache import build_backbone_cache, row_key

    heads = model.heads
    use_context = bool(model.heads_config.context_features)
    examples = [encode_example(tokenizer, r["messages"], r["response"], max_response_tokens) for r in rows]
    found = cache.lookup([row_key(e) for e in examples])
    if use_context and cache.context is None:
        found = [None] * len(rows)  # this cache has no running context: every row runs through the backbone
    missing = [i for i, row in enumerate(found) if row is None]
    sources = [(cache, row) for row in found]
    if missing:
        dtype = str(cache.hidden.dtype).removeprefix("torch.")
        live = build_backbone_cache(
            model.base_model, [examples[i] for i in missing], tokenizer.pad_token_id, cache.top_k, cache.num_bins,
            batch_size, progress, store_context=use_context, hidden_dtype=dtype,
        )  # fmt: skip
        for j, i in enumerate(missing):
            sources[i] = (live, j)
    logger.info("teacher-forced scores: %d of %d rows from the backbone cache, %d through the backbone",
                len(rows) - len(missing), len(rows), len(missing))
    device = next(heads.parameters()).device
    results = []
    for start in range(0, len(rows), max(batch_size, 64)):  # the heads alone: large batches are cheap
        chunk = sources[start : start + max(batch_size, 64)]
        pieces = [source.rows([row]) for source, row in chunk]
        hidden = torch.cat([p[0] for p in pieces]).to(device)
        context = torch.cat([p[1] for p in pieces]).to(device) if use_context else None
        values = torch.cat([p[2].values for p in pieces]).to(device)
        counts = torch.cat([p[2].counts for p in pieces]).to(device)
        temperature, top_p = heads(hidden, values, counts, context=context)
        lengths = [p[0].shape[0] for p in pieces]
        results += list(zip(temperature.float().cpu().split(lengths), top_p.float().cpu().split(lengths), strict=True))
    return results


def free_running_scores(
    model,
    tokenizer,
    rows: Sequence[dict],
    seeds: Iterable[int] = (0, 1),
    max_new_tokens: int = 48,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Each row generates its own response with dynamic decoding, once per seed.

    Rows are batched in order; each batch is seeded with ``seed * 1_000_003 + batch index`` so the
    result does not depend on anything else that ran before.
    """
    from tqdm.auto import tqdm

    rows = list(rows)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("free_running_scores needs at least one seed")
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs a left-padding tokenizer (tokenizer.padding_side = 'left')")
    metas = [_meta(r) for r in rows]
    records = []
    batches = [(seed, start) for seed in seeds for start in range(0, len(rows), batch_size)]
    for index, (seed, start) in enumerate(tqdm(batches, desc="free-running generation", disable=not progress)):
        chunk = rows[start : start + batch_size]
        batch = tokenizer.apply_chat_template(
            [r["messages"] for r in chunk], add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
        ).to(model.device)
        torch.manual_seed(seed * 1_000_003 + index)
        trace = model.generate_with_trace(**batch, do_sample=True, max_new_tokens=max_new_tokens)
        for meta, generated in zip(metas[start : start + batch_size], trace.rows(), strict=True):
            records.append(
                {
                    **meta,
                    "seed": seed,
                    "temperature": np.asarray(generated["temperature"], dtype=np.float32),
                    "top_p": np.asarray(generated["top_p"], dtype=np.float32),
                    "text": tokenizer.decode(generated["token_ids"], skip_special_tokens=True),
                }
            )
    return pd.DataFrame.from_records(records)
