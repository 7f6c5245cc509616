"""Control data -> groups -> batches.

Control data has one row per (prompt, variant); the rows of a prompt share a ``group_id`` and a
``response``. Training needs every variant of a group in the same batch (the ranking loss compares
them), so :func:`encode_groups` turns the rows into one record per *group* and the trainer's
datasets hold groups: a batch of ``per_device_train_batch_size`` groups is every variant of each.

:class:`SteeringCollator` flattens a list of groups into rows and aligns their responses: column
``j`` of the ``[R, N]`` response tensors is response token ``j`` for every row, whatever the prompt
length, because all variants of a group have identical response token ids
(:func:`steerdeco.chat.encode_example` tokenises the response on its own).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from ..chat import encode_example, pad_responses
from ..rows import VARIANTS, check_columns, signed_level

logger = logging.getLogger(__name__)

NO_SPLIT = "none"


def _command_split(row: dict) -> str:
    value = row.get("command_split")
    return NO_SPLIT if value is None or row["variant"] == "none" else str(value)


def _target(row: dict, column: str = "target_temperature") -> float:
    value = row.get(column)
    return math.nan if value is None else float(value)


def _fit_context(group_id: str, members: list[dict], encoded: list[dict], max_positions: int, overlong: str,
                 source: str) -> list[dict] | None:
    """``encoded`` cut to ``max_positions`` (``truncate``), None (``skip``, or a prompt alone too long), or an error."""
    longest = max(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    example = encoded[longest]
    if len(example["input_ids"]) <= max_positions:
        return encoded
    if overlong == "error":
        row = members[longest]
        start = example["response_start"]
        raise ValueError(
            f"{source}: group {group_id!r} ({row['variant']} row) has {len(example['input_ids'])} tokens (prompt {start} "
            f"+ response {len(example['input_ids']) - start}) but the model's context is {max_positions} positions; "
            "set overlong_rows to 'truncate' or 'skip' (--overlong_rows), or shorten the prompt or max_response_tokens"
        )
    room = max_positions - max(e["response_start"] for e in encoded)
    if overlong == "skip" or room < 1:
        return None
    return [
        {key: value[: e["response_start"] + room] if key != "response_start" else value for key, value in e.items()}
        for e in encoded
    ]


def encode_groups(
    rows,
    tokenizer,
    max_response_tokens: int | None = None,
    max_groups: int | None = None,
    first_row: int = 0,
    max_positions: int | None = None,
    overlong: str = "error",
    source: str = "the control data",
) -> tuple[list[dict], list[dict]]:
    """Tokenise control rows and gather them by ``group_id``.

    Rows longer than ``max_positions`` (prompt + response; None: no limit) are handled as
    ``overlong`` says: ``error``, ``truncate`` (the group's shared response is cut so that every
    variant fits; a group whose prompt alone fills the context is skipped) or ``skip`` (the group is
    left out). The groups touched are counted in one log line.

    Returns ``(groups, examples)``: ``examples[i]`` is ``encode_example`` of one row (in group
    order); each group record holds its rows' ``input_ids``, ``response_start``, ``signed_level``,
    ``variant``, ``command_split``, ``target_temperature``/``target_top_p`` (NaN: none) and ``cache_row`` (index of
    the example, plus ``first_row``), and the shared ``response_length``.

    Raises:
        ValueError: missing columns, a row without a response, or variants of one group whose
            responses differ.
    """
    check_columns(rows)
    order: dict[str, list[dict]] = {}
    for row in rows:
        order.setdefault(str(row["group_id"]), []).append(row)
    groups, examples = [], []
    truncated = skipped = 0
    for group_id, members in order.items():
        if max_groups is not None and len(groups) >= max_groups:
            break
        for row in members:
            if not row.get("response"):
                raise ValueError(
                    f"group {group_id!r} has a row without a response: training needs data built with "
                    "--responses (given or generate)"
                )
        encoded = [encode_example(tokenizer, row["messages"], row["response"], max_response_tokens) for row in members]
        if max_positions is not None:
            fitted = _fit_context(group_id, members, encoded, max_positions, overlong, source)
            if fitted is None:
                skipped += 1
                continue
            truncated += fitted is not encoded
            encoded = fitted
        record = {
            "group_id": group_id,
            "input_ids": [],
            "response_start": [],
            "signed_level": [],
            "variant": [],
            "command_split": [],
            "target_temperature": [],
            "target_top_p": [],
            "cache_row": [],
        }
        response = None
        for row, example in zip(members, encoded, strict=True):
            ids = example["input_ids"][example["response_start"] :]
            if response is None:
                response = ids
            elif ids != response:
                raise ValueError(f"the variants of group {group_id!r} do not share one response")
            record["input_ids"].append(example["input_ids"])
            record["response_start"].append(example["response_start"])
            record["signed_level"].append(signed_level(row["variant"], row["level"]))
            record["variant"].append(row["variant"])
            record["command_split"].append(_command_split(row))
            record["target_temperature"].append(_target(row))
            record["target_top_p"].append(_target(row, "target_top_p"))
            record["cache_row"].append(first_row + len(examples))
            examples.append(example)
        record["response_length"] = len(response)
        groups.append(record)
    if truncated or skipped:
        logger.warning(
            "%s: overlong_rows=%s: %d groups cut to the model's context of %d positions, %d groups skipped",
            source, overlong, truncated, max_positions, skipped,
        )
    return groups, examples


def command_split_names(*group_lists: Sequence[dict]) -> list[str]:
    """Sorted command splits of the commanded rows (``train``, ``heldout``, ...)."""
    names = {s for groups in group_lists for group in groups for s in group["command_split"] if s != NO_SPLIT}
    return sorted(names)


class SteeringCollator:
    """Groups -> one flat batch of rows with aligned responses.

    Args:
        pad_token_id: padding id of ``input_ids`` (right padding, so positions stay 0..n-1).
        split_names: command splits, in the order of the ``command_split`` codes.
        cache: a :class:`~steerdeco.training.cache.BackboneCache`; when given, batches carry the
            cached backbone outputs instead of ``input_ids``.

    Output (``R`` rows, ``N`` = longest response, ``L`` = longest row):

    * always: ``response_mask [R, N]`` bool, ``groups [R]`` (index of the group in the batch),
      ``signed_level [R]`` (NaN: placebo), ``variant [R]`` (index in ``steerdeco.ranking.VARIANTS``),
      ``command_split [R]`` (index in ``split_names``, -1 for no-command rows),
      ``target_temperature``/``target_top_p [R]`` (NaN: none);
    * without a cache: ``input_ids``/``attention_mask [R, L]``, ``response_positions [R, N]`` (the
      position whose prediction scores response token ``j``: ``response_start - 1 + j``) and
      ``response_targets [R, N]`` (token ``j``);
    * with a cache: ``hidden``/``context [R, N, H]``, ``slot_values``/``slot_counts [R, N, M]``,
      ``target_value``/``target_slot [R, N]``; with cached prompt states also ``prompt_states [R, P, H]``,
      ``prompt_mask [R, P]`` and ``prompt_ids [R, P]`` (each row's tokens before its response).
    """

    def __init__(self, pad_token_id: int, split_names: Sequence[str], cache=None):
        self.pad_token_id = int(pad_token_id)
        self.split_codes = {name: i for i, name in enumerate(split_names)}
        self.cache = cache

    def __call__(self, groups: list[dict]) -> dict[str, torch.Tensor]:
        if not groups:
            raise ValueError("cannot collate an empty list of groups")
        lengths, group_index, levels, variants, splits, cache_rows, rows = [], [], [], [], [], [], []
        targets, top_p_targets = [], []
        for g, group in enumerate(groups):
            count = len(group["input_ids"])
            for r in range(count):
                rows.append((group["input_ids"][r], group["response_start"][r]))
                lengths.append(group["response_length"])
                group_index.append(g)
                levels.append(group["signed_level"][r])
                variants.append(VARIANTS.index(group["variant"][r]))
                split = group["command_split"][r]
                splits.append(-1 if split == NO_SPLIT else self.split_codes.get(split, -1))
                targets.append(group["target_temperature"][r])
                top_p_targets.append(group.get("target_top_p", [math.nan] * count)[r])
                cache_rows.append(group["cache_row"][r])
        width = max(lengths)
        response_mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
        batch = {
            "response_mask": response_mask,
            "groups": torch.tensor(group_index),
            "signed_level": torch.tensor(levels, dtype=torch.float32),
            "variant": torch.tensor(variants),
            "command_split": torch.tensor(splits),
            "target_temperature": torch.tensor(targets, dtype=torch.float32),
            "target_top_p": torch.tensor(top_p_targets, dtype=torch.float32),
        }
        if self.cache is not None:
            batch.update(self.cache.gather(cache_rows, width))
            batch["cache_rows"] = torch.tensor(cache_rows)
            if "prompt_states" in batch:  # the prompt's ids beside its cached states (heads that read named values)
                prompt_ids = torch.full(batch["prompt_mask"].shape, self.pad_token_id, dtype=torch.long)
                for i, (ids, start) in enumerate(rows):
                    prompt_ids[i, :start] = torch.tensor(ids[:start])
                batch["prompt_ids"] = prompt_ids
            return batch
        padded = pad_responses(rows, lengths, self.pad_token_id)
        batch.update({k: padded[k] for k in ("input_ids", "attention_mask", "response_positions", "response_targets")})
        return batch
