"""steerdeco.training.collator: control rows -> groups -> batches that keep whole groups."""

import math

import pytest
import torch
from training_setup import VARIANTS_PER_GROUP

from steerdeco.rows import VARIANTS
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.training.collator import SteeringCollator, command_split_names, encode_groups


def test_groups_keep_every_variant_and_share_the_response(train_rows):
    _, tokenizer = tiny_model_and_tokenizer()
    groups, examples = encode_groups(train_rows, tokenizer, max_response_tokens=12)
    assert len(groups) == 4 and len(examples) == len(train_rows)
    for group in groups:
        assert len(group["input_ids"]) == VARIANTS_PER_GROUP
        responses = {tuple(ids[start:]) for ids, start in zip(group["input_ids"], group["response_start"], strict=True)}
        assert len(responses) == 1 and len(next(iter(responses))) == group["response_length"] == 12
        assert sorted(v for v in group["signed_level"] if not math.isnan(v)) == [-3, -2, -1, -1, 0, 1, 1, 2]


def test_encode_groups_rejects_rows_without_a_shared_response(train_rows):
    _, tokenizer = tiny_model_and_tokenizer()
    records = [dict(r) for r in train_rows]
    records[1]["response"] = "something else entirely"
    with pytest.raises(ValueError, match="do not share one response"):
        encode_groups(records, tokenizer)
    records[1]["response"] = None
    with pytest.raises(ValueError, match="without a response"):
        encode_groups(records, tokenizer)
    with pytest.raises(ValueError, match="lacks the columns"):
        encode_groups(train_rows.remove_columns("variant"), tokenizer)


def test_collator_aligns_the_responses_of_a_group(train_rows):
    _, tokenizer = tiny_model_and_tokenizer()
    groups, _ = encode_groups(train_rows, tokenizer)
    collator = SteeringCollator(tokenizer.pad_token_id, command_split_names(groups))
    batch = collator(groups[:2])
    rows_per_group = torch.bincount(batch["groups"])
    assert rows_per_group.tolist() == [VARIANTS_PER_GROUP, VARIANTS_PER_GROUP]
    for g in range(2):
        rows = batch["groups"] == g
        # column j is response token j for every variant, and the predicting position precedes it
        targets, mask = batch["response_targets"][rows], batch["response_mask"][rows]
        assert (targets == targets[0]).all() and (mask == mask[0]).all()
        positions = batch["response_positions"][rows]
        for r in range(int(rows.sum())):
            n = int(mask[r].sum())
            ids = batch["input_ids"][rows][r]
            torch.testing.assert_close(ids[positions[r, :n] + 1], targets[r, :n])
    none_rows = batch["variant"] == VARIANTS.index("none")
    assert (batch["command_split"][none_rows] == -1).all()
    assert batch["signed_level"][batch["variant"] == VARIANTS.index("placebo")].isnan().all()
