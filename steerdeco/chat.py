"""Turn (conversation, response) pairs into model inputs, and score responses teacher-forced.

The chat template is applied here, at training and evaluation time, never baked into the data. The
response is tokenised on its own (then the EOS token is appended), so every command variant of a
prompt shares exactly the same response token ids: the ranking loss compares them position by
position.

Alignment: the T and P that belong to response token ``j`` are the ones predicted at the position
before it (the values that would have sampled it), as in a generation trace.
"""

from __future__ import annotations

import torch

from .losses import IGNORE_INDEX


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` through the chat template, ending with the assistant header."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids)


def response_ids(tokenizer, response: str, add_eos: bool = True) -> list[int]:
    """Token ids of ``response`` alone (no special tokens), plus EOS."""
    if not isinstance(response, str) or not response:
        raise ValueError(f"response must be a non-empty string, got {response!r}")
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_example(
    tokenizer, messages: list[dict], response: str, max_response_tokens: int | None = None
) -> dict[str, list[int]]:
    """``{"input_ids", "labels", "response_start"}`` with labels ``-100`` on the prompt."""
    prompt = prompt_ids(tokenizer, messages)
    answer = response_ids(tokenizer, response)
    if max_response_tokens is not None:
        answer = answer[:max_response_tokens]
    return {
        "input_ids": prompt + answer,
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
        "response_start": len(prompt),
    }


def pad_batch(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``labels`` lists to ``[B, L]`` tensors with an attention mask.

    Right padding keeps response positions aligned across variants that share a response only if
    their prompts have equal length, so callers index responses through ``response_start`` instead.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    starts = []
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        offset = 0 if padding_side == "right" else length - n
        ids[i, offset : offset + n] = torch.tensor(example["input_ids"])
        labels[i, offset : offset + n] = torch.tensor(example["labels"])
        mask[i, offset : offset + n] = 1
        starts.append(offset + example.get("response_start", 0))
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "response_start": torch.tensor(starts)}


def pad_responses(
    rows: list[tuple[list[int], int]], lengths: list[int], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad ``(input_ids, response_start)`` rows and index their responses, ``lengths[i]`` tokens each.

    Returns ``input_ids``/``attention_mask [R, L]`` (``L`` = longest row), ``response_positions [R, N]``
    (the position whose prediction scores response token ``j``: ``response_start - 1 + j``; ``N`` =
    longest response), ``response_targets [R, N]`` (token ``j``; 0 past the end) and ``response_mask [R, N]``.
    """
    length = max(len(ids) for ids, _ in rows)
    width = max(lengths)
    count = len(rows)
    input_ids = torch.full((count, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((count, length), dtype=torch.long)
    positions = torch.zeros((count, width), dtype=torch.long)
    targets = torch.zeros((count, width), dtype=torch.long)
    for i, ((ids, start), n) in enumerate(zip(rows, lengths, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        positions[i, :n] = torch.arange(start - 1, start - 1 + n)
        targets[i, :n] = input_ids[i, start : start + n]
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_positions": positions,
        "response_targets": targets,
        "response_mask": mask,
    }


def response_parameters(
    temperature: torch.Tensor, top_p: torch.Tensor, labels: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-row T and P of the response tokens: row ``i``'s values at positions before each label.

    temperature/top_p/labels ``[B, L]``; returns one ``(T [n_i], P [n_i])`` pair per row.
    """
    valid = labels[:, 1:] != IGNORE_INDEX
    t, p = temperature[:, :-1], top_p[:, :-1]
    return [(t[i][valid[i]], p[i][valid[i]]) for i in range(labels.shape[0])]


@torch.no_grad()
def teacher_forced_parameters(
    model,
    tokenizer,
    conversations: list[list[dict]],
    responses: list[str],
    batch_size: int = 8,
    progress: bool = False,
    max_response_tokens: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Predicted T and P along each response, teacher-forced after its conversation.

    Returns one ``(T [n], P [n])`` pair (CPU tensors) per example, ``n`` = response tokens + EOS
    (at most ``max_response_tokens``, as :func:`encode_example` truncates).
    """
    if len(conversations) != len(responses):
        raise ValueError(f"{len(conversations)} conversations but {len(responses)} responses")
    from tqdm.auto import tqdm

    examples = [
        encode_example(tokenizer, c, r, max_response_tokens) for c, r in zip(conversations, responses, strict=True)
    ]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    results: list = [None] * len(examples)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="teacher-forced scoring", disable=not progress):
        index = order[start : start + batch_size]
        batch = pad_batch([examples[i] for i in index], tokenizer.pad_token_id, padding_side="right")
        positions = torch.arange(batch["input_ids"].shape[1])
        prompt_mask = (positions.unsqueeze(0) < batch["response_start"].unsqueeze(1)) & batch["attention_mask"].bool()
        out = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            prompt_mask=prompt_mask.to(model.device),  # heads that pool the prompt pool only these
        )
        for i, (t, p) in zip(index, response_parameters(out.temperature.cpu(), out.top_p.cpu(), batch["labels"]), strict=True):
            results[i] = (t.float(), p.float())
    return results
