"""The model a run trains: built from the config, and read at the response positions only.

:func:`build_model` loads the base model (:func:`steerdeco.loading.load_base_model`), gives it the
training mode's shape (:func:`~steerdeco.training.lora.prepare_backbone`) and fresh heads of
``SteeringConfig.heads_config``; :func:`prepare_model` does the same to a model the caller built.
:class:`SteeringModel` is the module the trainer optimises: it runs the heads on the backbone's
outputs at the response positions, live or from the backbone cache.

Shapes: ``R`` rows (variants), ``N`` response positions (padded), ``K`` real response positions
(``response_mask`` true), ``H`` hidden size.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..loading import load_base_model
from ..losses import LogitSlots
from ..modeling import AutoDecoModel, base_hidden_size, read_heads
from ..negation import negation_token_table
from ..numbers import number_token_table
from .backbone import backbone_outputs
from .config import SteeringConfig
from .lora import is_peft, prepare_backbone
from .preflight import check_init_heads, heads_settings


def load_anchor(args: SteeringConfig, model: AutoDecoModel):
    """The frozen :class:`~steerdeco.heads.AutoDecoHeads` of ``args.anchor_heads`` (None without), checked against
    ``model``'s base model (their context settings: :func:`~steerdeco.training.preflight.check_anchor_heads_file`)."""
    if not args.anchor_heads:
        return None
    from ..heads import AutoDecoHeads

    config, state = read_heads(args.anchor_heads, model.base_model, source=f"anchor_heads {args.anchor_heads}")
    anchor = AutoDecoHeads(config)
    anchor.load_state_dict(state)
    return anchor.requires_grad_(False).eval()


def prepare_model(model: AutoDecoModel, args: SteeringConfig) -> AutoDecoModel:
    """Make ``model`` match ``args``: the backbone as the training mode wants it (LoRA added for ``lora_joint``
    when missing, frozen for ``head_only``), ``init_heads`` loaded, and the heads that are not trained frozen."""
    if not isinstance(model, AutoDecoModel):
        raise TypeError(f"SteeringTrainer trains an AutoDecoModel, got {type(model).__name__}")
    backbone = prepare_backbone(model.base_model, args)
    if backbone is not model.base_model:  # LoRA was added: a new wrapper around it, the same heads
        with_lora = AutoDecoModel(backbone, model.heads_config, freeze_base=False)
        with_lora.heads.load_state_dict(model.heads.state_dict())
        model = with_lora
    if args.init_heads:
        source = f"init_heads {args.init_heads}"
        config, state = read_heads(args.init_heads, model.base_model, source=source)
        check_init_heads(config, heads_settings(model.heads_config), source)
        model.heads.load_state_dict(state)
    model.heads.requires_grad_(True)
    model.temperature_head.requires_grad_(args.train_heads in ("both", "temperature"))
    model.top_p_head.requires_grad_(args.train_heads in ("both", "top_p"))
    return model


def build_model(args: SteeringConfig) -> tuple[AutoDecoModel, object]:
    """``(AutoDecoModel, tokenizer)`` from ``args.model_name_or_path`` with fresh heads (seeded with ``args.seed``)."""
    from transformers import set_seed

    base, tokenizer = load_base_model(args.model_name_or_path, args.backbone_torch_dtype)
    set_seed(args.seed)
    base = prepare_backbone(base, args)  # LoRA's initial weights draw from the seeded RNG before the heads'
    config = args.heads_config(base_hidden_size(base))
    if config.named_values:
        config = dataclasses.replace(config, number_tokens=number_token_table(tokenizer))
    if config.negation_scope:
        config = dataclasses.replace(config, negation_tokens=negation_token_table(tokenizer))
    model = AutoDecoModel(base, config, freeze_base=False)
    return prepare_model(model, args), tokenizer


@dataclass
class SteeringOutput:
    """Heads along the responses: ``temperature``/``top_p [R, N]`` (0 on padding), ``slots`` for the ``K``
    masked positions (row-major), ``lm_loss`` (lora_joint) or None, the anchor heads' ``[R, N]`` values
    (without gradient) when the model has anchor heads, and for heads with ``named_values`` each row's
    ``named [R, 4]`` (:data:`~steerdeco.heads.NAMED_SLOTS`: named values and gate logits), for heads with
    ``steering_levels`` N each row's ``level_logits [R, 2, 2N + 1]`` (temperature and top-p steering paths)."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    slots: LogitSlots
    lm_loss: torch.Tensor | None = None
    anchor_temperature: torch.Tensor | None = None
    anchor_top_p: torch.Tensor | None = None
    named: torch.Tensor | None = None
    level_logits: torch.Tensor | None = None


MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "response_positions",
    "response_targets",
    "response_mask",
    "hidden",
    "context",
    "slot_values",
    "slot_counts",
    "target_value",
    "target_slot",
    "prompt_states",
    "prompt_mask",
    "prompt_ids",
    "cache_rows",
)


class SteeringModel(nn.Module):
    """The module the trainer optimises: an AutoDecoModel evaluated at the response positions.

    ``forward`` takes the collator's batch: either ``input_ids``/``attention_mask`` plus
    ``response_positions``/``response_targets`` (the backbone runs; without grad when it is frozen),
    or the cached ``hidden``/``context``/``slot_*``/``target_*`` tensors (heads only). In both cases the heads
    see the hidden state and the (compressed) logit slots of each response position, so training
    from the cache and through the backbone compute the same thing.
    """

    def __init__(
        self, autodeco: AutoDecoModel, logit_top_k: int = 256, logit_bins: int = 64, lm_loss: bool = False, anchor=None
    ):
        super().__init__()
        self.autodeco = autodeco
        self.logit_top_k, self.logit_bins = logit_top_k, logit_bins
        self.compute_lm_loss = lm_loss
        # frozen AutoDecoHeads, kept out of the module tree: neither optimised nor saved with the model
        object.__setattr__(self, "anchor", anchor)
        # cache row -> the anchor heads' (T, P) at its positions: from the cache they never change
        self._anchor_memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def config(self):
        """The base model's config (the Trainer reads it)."""
        return self.autodeco.config

    @property
    def generation_config(self):
        """The base model's generation config."""
        return self.autodeco.generation_config

    def add_model_tags(self, tags) -> None:
        """Tag the base model as trl does (when it takes tags)."""
        base = self.autodeco.base_model
        if hasattr(base, "add_model_tags"):
            base.add_model_tags(tags)

    def _backbone_is_trainable(self) -> bool:
        return any(p.requires_grad for p in self.autodeco.base_model.parameters())

    def forward(
        self,
        response_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        response_positions: torch.Tensor | None = None,
        response_targets: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        slot_values: torch.Tensor | None = None,
        slot_counts: torch.Tensor | None = None,
        target_value: torch.Tensor | None = None,
        target_slot: torch.Tensor | None = None,
        prompt_states: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        prompt_ids: torch.Tensor | None = None,
        cache_rows: torch.Tensor | None = None,
    ) -> SteeringOutput:
        """Heads along the responses of one batch of ``R`` rows.

        Args:
            response_mask: ``[R, N]``, 1 at the real response positions.
            input_ids, attention_mask: ``[R, L]`` prompt + response tokens (live backbone).
            response_positions, response_targets: ``[R, N]`` where each response position sits in
                ``input_ids`` and the token it predicts (live backbone).
            hidden, context: ``[R, N, H]`` cached last hidden states and running context (head-only).
            slot_values, slot_counts: ``[R, N, M]`` cached compressed logits; target_value,
                target_slot: ``[R, N]`` (head-only).
            prompt_states, prompt_mask: ``[R, P, H]`` / ``[R, P]`` cached prompt states, for heads with
                ``prompt_attention`` (head-only; a live backbone reads them itself).
            prompt_ids: ``[R, P]`` the prompt's token ids beside the cached states, for heads with
                ``named_values`` (head-only; a live backbone's come from ``input_ids``).
            cache_rows: ``[R]`` each row's index in the backbone cache (head-only): anchor heads with
                their own prompt pooling then run once per row, their values kept for later epochs.

        Returns:
            A :class:`SteeringOutput`; ``lm_loss`` only for a live backbone with ``lm_loss=True``.
        """
        mask = response_mask.bool()
        lm_loss = named = levels = None
        pooling = self.autodeco.heads.prompt_pool is not None
        if hidden is not None:
            flat_hidden = hidden[mask]
            flat_context = None if context is None else context[mask]
            slots = LogitSlots(slot_values[mask], slot_counts[mask], target_value[mask], target_slot[mask].long())
            if pooling and prompt_states is None:
                raise ValueError("heads with prompt_attention need the prompt states: this backbone cache has none; rebuild it")
        else:
            if input_ids is None or response_positions is None or response_targets is None:
                raise ValueError("SteeringModel needs either cached backbone outputs or input_ids with response positions")
            grad = torch.enable_grad() if self._backbone_is_trainable() else torch.no_grad()
            with grad:
                out = backbone_outputs(
                    self.autodeco.base_model,
                    input_ids,
                    attention_mask,
                    response_positions,
                    response_targets,
                    mask,
                    self.logit_top_k,
                    self.logit_bins,
                    prompt_layer=self.autodeco.heads_config.context_layer if pooling else None,
                )
            flat_hidden, flat_context, slots, logits = out.hidden, out.context, out.slots, out.logits
            prompt_states, prompt_mask = out.prompt_states, out.prompt_mask
            prompt_ids = None if prompt_mask is None else input_ids[:, : prompt_mask.shape[1]]
            if self.compute_lm_loss:
                lm_loss = F.cross_entropy(logits.float(), response_targets[mask]) if logits.shape[0] else logits.sum() * 0
        rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]  # each position's row
        if pooling:  # one pooled prompt per row, given to each of its response positions
            prompt_states, prompt_mask = prompt_states.to(mask.device), prompt_mask.to(mask.device)
            heads = self.autodeco.heads
            pooled = heads.pool_prompt(prompt_states, prompt_mask, prompt_ids)
            named = heads.split_named(pooled)[1]
            levels = heads.level_logits(pooled) if heads.config.steering_levels else None
            flat_context, context_rows = pooled, rows  # one context per row: the heads give it to its positions
        else:
            context_rows = None
        temperature, top_p = self.autodeco.heads(flat_hidden, slots.values, slots.counts, context=flat_context,
                                                 rows=context_rows)
        padded = torch.zeros(mask.shape, dtype=temperature.dtype, device=temperature.device)
        anchor_t = anchor_p = None
        if self.anchor is not None:
            keys = None if hidden is None or cache_rows is None else cache_rows.tolist()
            anchor_t, anchor_p = self._anchor_values(flat_hidden, slots, flat_context, context_rows, prompt_states,
                                                     prompt_mask, rows, keys)
            anchor_t = padded.masked_scatter(mask, anchor_t.to(padded.dtype))
            anchor_p = padded.masked_scatter(mask, anchor_p.to(padded.dtype))
        return SteeringOutput(
            temperature=padded.masked_scatter(mask, temperature),
            top_p=padded.masked_scatter(mask, top_p),
            slots=slots,
            lm_loss=lm_loss,
            anchor_temperature=anchor_t,
            anchor_top_p=anchor_p,
            named=named,
            level_logits=levels,
        )

    @torch.no_grad()
    def _anchor_values(self, flat_hidden, slots, context, context_rows, prompt_states, prompt_mask, rows, keys=None):
        """The anchor heads' T and P at the ``K`` positions (``rows``: each one's row), with their own prompt
        pooling when they have one (preflight makes it read the same prompt states as the trained heads);
        ``context``/``context_rows`` as the trained heads got them.

        ``keys``: each row's backbone-cache row. Anchor heads with their own pooling read only cached
        inputs then, so their values are kept per row and later batches of the same rows reuse them.
        """
        anchor = self.anchor.to(rows.device)
        keep = keys is not None and anchor.prompt_pool is not None
        if keep:
            counts = torch.bincount(rows, minlength=len(keys)).tolist()  # positions of each row in this batch
            kept = [self._anchor_memo.get(key) for key in keys]
            if all(k is not None and k[0].numel() == n for k, n in zip(kept, counts, strict=True)):
                return torch.cat([t for t, _ in kept]), torch.cat([p for _, p in kept])
        context = self.autodeco.heads.split_named(context)[0]
        if anchor.prompt_pool is not None:
            context, context_rows = anchor.pool_prompt(prompt_states, prompt_mask), rows
        temperature, top_p = anchor(flat_hidden.detach(), slots.values, slots.counts, context=context, rows=context_rows)
        if keep:
            for key, t, p in zip(keys, temperature.split(counts), top_p.split(counts), strict=True):
                self._anchor_memo[key] = (t, p)
        return temperature, top_p

    @torch.no_grad()
    def base_lm_loss(self, input_ids, attention_mask, response_positions, response_targets, response_mask) -> torch.Tensor:
        """Language-modelling loss (a scalar) on the responses with the LoRA adapter disabled (the base model's);
        arguments as for :meth:`forward`."""
        base = self.autodeco.base_model
        context = base.disable_adapter() if is_peft(base) else contextlib.nullcontext()
        mask = response_mask.bool()
        with context:
            logits = backbone_outputs(
                base, input_ids, attention_mask, response_positions, response_targets, mask, self.logit_top_k, self.logit_bins
            ).logits
        return F.cross_entropy(logits.float(), response_targets[mask])
