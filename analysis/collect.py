"""Measure a model's per-token T and P on control-data rows, as *variant scores* for the statistics.

Two protocols:

* :func:`teacher_forced_scores`: every variant of a group scores the group's shared response, so the
  per-token values of different variants align position by position;
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


def teacher_forced_scores(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, progress: bool = True) -> pd.DataFrame:
    """Per-token T and P of each row's shared ``response`` under the row's own conversation."""
    from steerdeco.chat import teacher_forced_parameters

    rows = list(rows)
    without = [r.get("group_id") for r in rows if not r.get("response")]
    if without:
        raise ValueError(f"{len(without)} rows have no response (first group {without[0]!r}): teacher forcing needs "
                         "data built with --responses given or --responses generate")
    params = teacher_forced_parameters(
        model, tokenizer, [r["messages"] for r in rows], [r["response"] for r in rows], batch_size, progress
    )
    records = []
    for row, (t, p) in zip(rows, params, strict=True):
        records.append({**_meta(row), "seed": 0, "temperature": t.numpy(), "top_p": p.numpy()})
    return pd.DataFrame.from_records(records)


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
