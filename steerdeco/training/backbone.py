"""The frozen or LoRA-wrapped base model read at the response positions: hidden state, context, logits.

:func:`backbone_outputs` is what the heads see of the backbone, computed live by
:class:`~steerdeco.training.model.SteeringModel` and stored once per row by the backbone cache
(:mod:`steerdeco.training.cache`), so both paths train on the same inputs.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import NamedTuple

import torch

from ..heads import running_context
from ..hooks import decoder, on_context_states, on_decoder_output, on_lm_head, output_embeddings
from ..losses import LogitSlots, compress_logits, exact_slots


class BackboneOutputs(NamedTuple):
    """What :func:`backbone_outputs` reads off the base model (see there)."""

    hidden: torch.Tensor
    context: torch.Tensor
    slots: LogitSlots
    logits: torch.Tensor
    prompt_states: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None


def backbone_outputs(
    base_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_positions: torch.Tensor,
    response_targets: torch.Tensor,
    response_mask: torch.Tensor,
    top_k: int,
    num_bins: int,
    prompt_layer: int | None = None,
) -> BackboneOutputs:
    """Run the base model and read it at the response positions.

    For transformers' causal LMs (a forward that takes ``logits_to_keep``) only the decoder runs, and
    the logits of the response positions are computed here as one ``[K, H] x [H, V]`` product of their
    gathered hidden states with the lm_head: the prompt positions need the last hidden state (for the
    running context) but no logits, and an lm_head applied to ``[B, L, H]`` with frozen weights makes
    torch use a batched product that copies the whole output-embedding matrix (several times slower
    on CPU). Other models run whole and their logits are read at the response positions.

    Args:
        input_ids, attention_mask: ``[R, L]`` right-padded rows.
        response_positions: ``[R, N]`` position whose prediction scores response token ``j``.
        response_targets: ``[R, N]`` response token ``j``.
        response_mask: ``[R, N]`` real response tokens.
        top_k, num_bins: logit compression (``top_k=0``: exact slots).
        prompt_layer: also return the prompt's states for heads with ``prompt_attention``: those of
            decoder layer ``prompt_layer`` (1 = the first), or with 0 the last hidden state; None: do not.

    Returns:
        ``hidden [K, H], context [K, H], slots, logits [K, V]`` for the ``K`` masked positions in
        row-major order; ``context`` is :func:`~steerdeco.heads.running_context` of the row up to each
        position; the slots are built from detached logits, the other tensors keep their graph. With
        ``prompt_layer``: ``prompt_states [R, P, H]`` and ``prompt_mask [R, P]``, the positions before
        each row's response (``P``: the longest prompt).
    """
    hiddens: list[torch.Tensor] = []
    states: list[torch.Tensor] = []
    logits_out: list[torch.Tensor] = []
    length = input_ids.shape[1]
    gathered_logits = accepts_logits_to_keep(base_model)
    with contextlib.ExitStack() as hooks:
        hooks.enter_context(on_decoder_output(base_model, lambda hidden, _mask: hiddens.append(hidden)))
        if prompt_layer is not None:
            hooks.enter_context(on_context_states(base_model, prompt_layer, lambda h, _mask: states.append(h)))
        if gathered_logits:  # the decoder alone; the lm_head runs below on the response positions
            decoder(base_model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        else:
            hooks.enter_context(on_lm_head(base_model, lambda _hidden, logits: logits_out.append(logits)))
            base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = hiddens[-1]
    context, _ = running_context(hidden, attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(response_positions)
    rows, positions = rows[response_mask], response_positions[response_mask]
    hidden, context = hidden[rows, positions], context[rows, positions]
    if gathered_logits:
        logits = output_embeddings(base_model)(hidden)
    else:
        logits = logits_out[-1][rows, positions - (length - logits_out[-1].shape[1])]
    targets = response_targets[response_mask]
    detached = logits.detach()
    slots = exact_slots(detached, targets) if top_k == 0 else compress_logits(detached, targets, top_k, num_bins)
    if prompt_layer is None:
        return BackboneOutputs(hidden, context, slots, logits)
    prompt_length = response_positions[:, 0] + 1  # position start - 1 predicts the first response token
    width = int(prompt_length.max())
    prompt_mask = torch.arange(width, device=input_ids.device).unsqueeze(0) < prompt_length.unsqueeze(1)
    prompt_mask = prompt_mask & attention_mask[:, :width].bool()
    return BackboneOutputs(hidden, context, slots, logits, states[-1][:, :width], prompt_mask)


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model``'s forward (under a peft wrapper: the wrapped model's) takes ``logits_to_keep``."""
    getter = getattr(model, "get_base_model", None)
    inner = getter() if callable(getter) else model
    return "logits_to_keep" in inspect.signature(type(inner).forward).parameters
