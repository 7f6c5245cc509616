"""Tests of steerdeco.chat: padding rows and indexing their responses."""

import torch

from steerdeco.chat import pad_responses


def test_response_rows_are_right_padded_and_indexed_by_their_response_start():
    batch = pad_responses([([5, 6, 7, 8], 2), ([9, 10, 11], 1)], [2, 2], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["response_positions"].tolist() == [[1, 2], [0, 1]]
    assert batch["response_targets"].tolist() == [[7, 8], [10, 11]]
    assert batch["response_mask"].dtype == torch.bool and batch["response_mask"].all()
