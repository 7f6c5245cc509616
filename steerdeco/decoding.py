"""Dynamic decoding: sample each token with the temperature and top-p the heads predict for it.

:class:`DynamicTemperatureTopP` is a ``LogitsProcessor``; :func:`dynamic_decoding` is a context manager
that hooks the base model's lm_head so every forward pass of ``generate`` (prefill and each cached
step) runs the heads on the last position's hidden state and raw logits. ``AutoDecoModel.generate``
uses both, so a plain ``model.generate(**inputs, do_sample=True)`` on the wrapped model just works:
batched, left padding, KV cache.

Convention for the user's own ``temperature`` and ``top_p`` (as in AutoDeco's vLLM path, they
*multiply* the predicted values)::

    T_used = temperature * T_predicted         (clamped below at MIN_TEMPERATURE)
    P_used = min(1, top_p * P_predicted)

Both default to 1.0, so without them the heads decide alone. A token whose used T is below
``greedy_below`` (default :data:`GREEDY_BELOW_TEMPERATURE`) is decoded greedily: only its argmax stays,
so "no randomness" gives the same text under every seed (``greedy_below=0`` turns this off). The base model's own default
``generation_config.temperature`` / ``top_p`` are not applied on top (the heads replace them);
``top_k`` (the user's, else the model's, else transformers' default of 50) is applied between the
two, in transformers' order (temperature, top-k, top-p); repetition penalties and other processors
act as usual, before this one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, TopKLogitsWarper

from .heads import MIN_TEMPERATURE, running_context
from .hooks import (
    contiguous_lm_head_input,
    on_context_states,
    on_decoder_input_ids,
    on_decoder_output,
    on_lm_head,
)

# a used T below this decodes the token greedily: the T up to which issue 16.3 counts a reply as "no randomness"
GREEDY_BELOW_TEMPERATURE = 0.15


def top_p_filter(scores: torch.Tensor, top_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """transformers' ``TopPLogitsWarper`` rule with a top-p per row. scores ``[B, V]``, top_p ``[B]``."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_to_remove = cumulative_probs <= (1 - top_p.to(cumulative_probs.dtype)).unsqueeze(-1)
    sorted_to_remove[..., -min_tokens_to_keep:] = False
    to_remove = sorted_to_remove.scatter(1, sorted_indices, sorted_to_remove)
    return scores.masked_fill(to_remove, -math.inf)


def top_k_top_p_filter(scores: torch.Tensor, top_k: int, top_p: torch.Tensor, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """``top_p_filter(TopKLogitsWarper(top_k)(scores), top_p)`` without sorting the whole vocabulary.

    Top-p only ever keeps tokens that top-k kept, so the rule runs on the best scores alone (a
    ``topk`` instead of a sort of ``V``). Top-k keeps every score equal to the k-th one; where such
    ties make it keep more than ``k`` tokens (common with bfloat16 logits), the rule runs on as many
    best scores as the row with the most ties keeps, the others' extra scores masked out.
    scores ``[B, V]``, top_p ``[B]``.
    """
    k = max(top_k, min_tokens_to_keep)
    vocab = scores.shape[-1]
    if k >= vocab:
        return top_p_filter(scores, top_p, min_tokens_to_keep)
    values, indices = scores.topk(k, dim=-1)  # descending
    kth = values[:, -1:]
    width = int((scores >= kth).sum(-1).max())  # what top-k keeps in the row with the most ties at its k-th value
    if width >= vocab:
        return top_p_filter(TopKLogitsWarper(top_k, min_tokens_to_keep=min_tokens_to_keep)(None, scores), top_p, min_tokens_to_keep)
    if width > k:
        values, indices = scores.topk(width, dim=-1)
        values = values.masked_fill(values < kth, -math.inf)  # below the row's own k-th value: top-k removed it
    ascending = values.flip(-1)
    cumulative_probs = ascending.softmax(dim=-1).cumsum(dim=-1)
    to_remove = cumulative_probs <= (1 - top_p.to(cumulative_probs.dtype)).unsqueeze(-1)
    to_remove[..., -min_tokens_to_keep:] = False
    kept = ascending.masked_fill(to_remove, -math.inf).flip(-1)
    return torch.full_like(scores, -math.inf).scatter_(-1, indices, kept)


@dataclass
class _StepRecord:
    """Per-forward predictions collected by the lm_head hook."""

    temperature: list[torch.Tensor] = field(default_factory=list)
    top_p: list[torch.Tensor] = field(default_factory=list)
    context_state: tuple[torch.Tensor, torch.Tensor] | None = None  # running (sum, count), context_features only
    context: torch.Tensor | None = None  # running context at the newest position [B, H]
    context_positions: int = 0  # positions already added to context_state

    def latest(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.temperature:
            raise RuntimeError(
                "DynamicTemperatureTopP was called before any forward pass of the hooked model: use it "
                "inside steerdeco.decoding.dynamic_decoding (AutoDecoModel.generate does this)"
            )
        return self.temperature[-1], self.top_p[-1]


class DynamicTemperatureTopP(LogitsProcessor):
    """Rescale by the predicted temperature, then apply the predicted top-p, row by row.

    Args:
        record: where the lm_head hook of :func:`dynamic_decoding` leaves each step's predictions.
        temperature_scale: the user's ``temperature``; multiplies the predicted T.
        top_p_scale: the user's ``top_p``; multiplies the predicted P (capped at 1).
        top_k: keep only the ``top_k`` best tokens after rescaling (0 or None: no limit).
        min_tokens_to_keep: as in ``TopPLogitsWarper``.
        greedy_below: rows whose used T is below this keep only their best token (0: never).
    """

    def __init__(
        self,
        record: _StepRecord,
        temperature_scale: float = 1.0,
        top_p_scale: float = 1.0,
        top_k: int | None = None,
        min_tokens_to_keep: int = 1,
        greedy_below: float = GREEDY_BELOW_TEMPERATURE,
    ):
        if isinstance(greedy_below, bool) or not isinstance(greedy_below, int | float) or not math.isfinite(greedy_below) or greedy_below < 0:
            raise ValueError(f"`greedy_below` is a temperature (a number >= 0; 0: never greedy), got {greedy_below!r}")
        for name, value in (("temperature", temperature_scale), ("top_p", top_p_scale)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` multiplies the predicted value and must be a finite number > 0, got {value!r}")
        if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"`min_tokens_to_keep` must be a positive integer, got {min_tokens_to_keep!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"`top_k` must be a non-negative integer or None, got {top_k!r}")
        self.record = record
        self.top_k = int(top_k) if top_k else None
        self.temperature_scale = float(temperature_scale)
        self.top_p_scale = float(top_p_scale)
        self.min_tokens_to_keep = min_tokens_to_keep
        self.greedy_below = float(greedy_below)

    def effective(self, temperature: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The T and P actually used, from the predicted ones."""
        used_t = temperature if self.temperature_scale == 1.0 else temperature * self.temperature_scale
        used_p = top_p if self.top_p_scale == 1.0 else top_p * self.top_p_scale
        return used_t.clamp_min(MIN_TEMPERATURE), used_p.clamp(max=1.0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        temperature, top_p = self.record.latest()
        if temperature.shape[0] != scores.shape[0]:
            raise RuntimeError(f"predicted T for {temperature.shape[0]} rows but scores have {scores.shape[0]}")
        temperature, top_p = self.effective(temperature, top_p)
        scaled = scores / temperature.to(scores.dtype).unsqueeze(-1)
        if self.top_k is not None:
            filtered = top_k_top_p_filter(scaled, self.top_k, top_p, self.min_tokens_to_keep)
        else:
            filtered = top_p_filter(scaled, top_p, self.min_tokens_to_keep)
        greedy = temperature < self.greedy_below
        if bool(greedy.any()):
            best = scores.argmax(-1, keepdim=True)
            only_best = torch.full_like(filtered, -math.inf).scatter_(-1, best, scores.gather(-1, best))
            filtered = torch.where(greedy.unsqueeze(-1), only_best, filtered)
        return filtered


@contextlib.contextmanager
def dynamic_decoding(heads_model) -> Iterator[_StepRecord]:
    """Run the heads after every lm_head forward of ``heads_model.base_model``; yield the record.

    Heads with ``context_features`` also get the running context: a hook on the decoder adds every
    new position's last hidden state (prompt positions at prefill, then one token a step; padding
    left out through the attention mask) to a running sum kept in the record. Heads with
    ``prompt_attention`` pool the prompt's states once, at the prefill, and keep that context for the
    whole reply. The hooks are removed when the block exits, also on error.
    """

    record = _StepRecord()
    pool = heads_model.heads.prompt_pool is not None
    use_context = heads_model.heads_config.context_features and not pool
    reads_ids = pool and heads_model.heads.reads_prompt_ids  # named values, negation scopes

    prefill_ids: list[torch.Tensor | None] = []

    def keep_prefill_ids(input_ids: torch.Tensor | None) -> None:
        if not prefill_ids:
            prefill_ids.append(input_ids)

    def pool_prompt(states: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        # the first forward is the prefill: every prompt position; the context then stays for the whole reply
        if record.context is not None:
            return
        if attention_mask is None:
            mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        else:
            mask = attention_mask[:, : states.shape[1]]
        ids = None
        if reads_ids:
            ids = prefill_ids[0] if prefill_ids else None
            if ids is None:
                raise ValueError("heads with named_values or negation_scope read the prompt's token ids: generate from "
                                 "input_ids, not inputs_embeds")
        with torch.no_grad():
            record.context = heads_model.heads.pool_prompt(states, mask, ids)

    def track_context(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        # positions so far: the mask covers them all; without one, a forward either continues from a KV
        # cache (fewer positions than seen) or recomputes the whole sequence (use_cache=False)
        computed, seen = hidden.shape[1], record.context_positions
        if attention_mask is not None:
            total = attention_mask.shape[1]
        else:
            total = computed if computed > seen else seen + computed
        new = min(computed, total - seen)
        if new <= 0:
            return
        mask = None if attention_mask is None else attention_mask[:, -new:]
        with torch.no_grad():
            context, record.context_state = running_context(hidden[:, -new:], mask, record.context_state)
        record.context, record.context_positions = context[:, -1], total

    def callback(hidden: torch.Tensor, logits: torch.Tensor) -> None:
        with torch.no_grad():
            temperature, top_p = heads_model.heads(hidden[:, -1], logits[:, -1], context=record.context)
        record.temperature.append(temperature.float())
        record.top_p.append(top_p.float())

    with contextlib.ExitStack() as stack:
        if use_context:
            stack.enter_context(on_decoder_output(heads_model.base_model, track_context))
        if pool:
            layer = heads_model.heads_config.context_layer
            if reads_ids:
                stack.enter_context(on_decoder_input_ids(heads_model.base_model, keep_prefill_ids))
            stack.enter_context(on_context_states(heads_model.base_model, layer, pool_prompt))
        stack.enter_context(contiguous_lm_head_input(heads_model.base_model))
        stack.enter_context(on_lm_head(heads_model.base_model, callback))
        yield record


@dataclass
class DecodingTrace:
    """What ``AutoDecoModel.generate_with_trace`` returns.

    Attributes:
        sequences: ``[B, L + S]`` prompt and generated tokens, as ``generate`` returns them.
        temperature: ``[B, S]`` predicted T for each generated token (the T that sampled it, before the
            user's multiplier).
        top_p: ``[B, S]`` predicted P for each generated token.
        mask: ``[B, S]`` True for real generated tokens, up to and including the first EOS; False for
            the padding after a sequence finished.
        prompt_length: ``L``, so ``sequences[:, prompt_length:]`` are the generated tokens.
        temperature_scale, top_p_scale: the user's multipliers (see the module docstring).
    """

    sequences: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    mask: torch.Tensor
    prompt_length: int
    temperature_scale: float = 1.0
    top_p_scale: float = 1.0

    @property
    def generated(self) -> torch.Tensor:
        """The new tokens ``[B, S]`` (``sequences`` after the prompt)."""
        return self.sequences[:, self.prompt_length :]

    def rows(self) -> list[dict]:
        """One dict per sequence with its real tokens and their T and P as Python lists."""
        out = []
        for i in range(self.sequences.shape[0]):
            keep = self.mask[i]
            out.append(
                {
                    "token_ids": self.generated[i][keep].tolist(),
                    "temperature": self.temperature[i][keep].tolist(),
                    "top_p": self.top_p[i][keep].tolist(),
                }
            )
        return out


def generated_mask(generated: torch.Tensor, eos_token_id) -> torch.Tensor:
    """``[B, S]`` True up to and including each row's first EOS (all True for rows without one)."""
    if eos_token_id is None:
        return torch.ones_like(generated, dtype=torch.bool)
    eos_ids = torch.as_tensor(eos_token_id, device=generated.device).reshape(-1)
    is_eos = torch.isin(generated, eos_ids)
    eos_before = is_eos.int().cumsum(-1) - is_eos.int()
    return eos_before == 0
