"""``SteeringTrainer``: trl's ``SFTTrainer`` on the AutoDeco + steering objective.

What changes from ``SFTTrainer`` (everything else, from the optimizer to DDP, logging callbacks and
``resume_from_checkpoint``, is the Trainer's own):

* data: control rows are grouped by prompt (:mod:`steerdeco.training.collator`); a batch is a few
  groups with every variant of each;
* the model it optimises is a :class:`SteeringModel`: an :class:`~steerdeco.AutoDecoModel` read at
  the response positions only, either through the backbone or, head-only, from a cache of the
  backbone's outputs (:mod:`steerdeco.training.cache`);
* ``compute_loss``: AutoDeco's temperature/top-p losses, the pairwise ranking, placebo and
  absolute-target losses of :mod:`steerdeco.ranking` and, in LoRA-joint mode, a language-modelling
  loss, each with its weight; ``log`` adds every term, mean T and P per variant and the share of
  correctly ordered groups;
* checkpoints: heads (+ LoRA adapter) as safetensors, optimizer/scheduler/RNG state as safetensors
  + JSON (:mod:`steerdeco.training.checkpoint`); nothing is pickled. A checkpoint is written into a
  hidden folder and renamed into place when complete;
* before any model is loaded, :mod:`steerdeco.training.preflight` checks the output folder, the
  checkpoint to resume from, ``init_heads`` and the control data; the data pass checks every row
  against the model's context.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from trl import SFTTrainer

from ..config import HeadsConfig
from ..heads import MIN_TEMPERATURE
from ..io import atomic_write_text, mark_output
from ..losses import AutoDecoLossConfig, LogitSlots, autodeco_losses
from ..modeling import AutoDecoModel, base_hidden_size, read_heads
from ..ranking import (
    absolute_target_loss,
    level_offsets,
    pairwise_ranking_loss,
    placebo_loss,
    relative_target_loss,
    sequence_means,
)
from ..rows import VARIANTS, select_split
from .cache import backbone_outputs, load_or_build_cache
from .checkpoint import (
    OPTIMIZER_STATE,
    RNG_STATE,
    SCHEDULER_STATE,
    STEERING_CONFIG_NAME,
    TRAINER_STATE_NAME,
    full_optimizer_state,
    has_state,
    is_sharded,
    load_state,
    load_trained_into,
    rng_state,
    save_state,
    save_trained,
    set_rng_state,
)
from .collator import SteeringCollator, command_split_names, encode_groups
from .config import SteeringConfig
from .evaluation import QUANTITIES, summarize_ordering
from .preflight import TOOL, check_init_heads, heads_settings, preflight

logger = logging.getLogger(__name__)

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
)
LOSS_TERMS = (
    "autodeco_temperature_loss",
    "autodeco_top_p_loss",
    "ranking_temperature_loss",
    "ranking_top_p_loss",
    "placebo_temperature_loss",
    "placebo_top_p_loss",
    "ratio_temperature_loss",
    "absolute_temperature_loss",
    "absolute_top_p_loss",
    "lm_loss",
)


# -- models ---------------------------------------------------------------------------------------
def load_base_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """``(causal LM, tokenizer)`` for ``'embedded'``, ``'tiny'`` or a local folder (offline, eval mode, ``dtype``)."""
    if name_or_path == "embedded":
        from ..embedded import load_embedded_model

        return load_embedded_model(dtype=dtype)
    if name_or_path == "tiny":
        from ..testing import tiny_model_and_tokenizer

        model, tokenizer = tiny_model_and_tokenizer(arch="llama", seed=0)
        return model.to(dtype), tokenizer
    path = Path(name_or_path)
    if not path.is_dir():
        raise ValueError(
            f"model_name_or_path={name_or_path!r} is not 'embedded', 'tiny' or a local model folder (no hub access)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


def context_size(base_model) -> int | None:
    """The base model's context length (``max_position_embeddings`` of its text config), if it names one."""
    config = base_model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text_config, "max_position_embeddings", None)
    return size if isinstance(size, int) and size > 0 else None


def _lora_config(args: SteeringConfig, base_model=None):
    """peft ``LoraConfig`` of ``args``; with ``lora_layers`` only the top layers of ``base_model`` get adapters."""
    from peft import LoraConfig

    layers = None
    if args.lora_layers is not None:
        total = getattr(getattr(base_model, "config", None), "num_hidden_layers", None)
        if total is None:
            raise ValueError("lora_layers needs a base model whose config has num_hidden_layers")
        if args.lora_layers > total:
            raise ValueError(f"lora_layers={args.lora_layers} but the base model has only {total} layers")
        layers = list(range(total - args.lora_layers, total))
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules),
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        task_type="CAUSAL_LM",
    )


def _is_peft(module: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(module, PeftModel)


def prepare_model(model: AutoDecoModel, args: SteeringConfig) -> AutoDecoModel:
    """Make ``model`` match ``args``: LoRA on the backbone for ``lora_joint`` (added if missing), a frozen
    backbone for ``head_only``, ``init_heads`` loaded, and the heads that are not trained frozen."""
    if not isinstance(model, AutoDecoModel):
        raise TypeError(f"SteeringTrainer trains an AutoDecoModel, got {type(model).__name__}")
    if args.training_mode == "lora_joint" and not _is_peft(model.base_model):
        from peft import get_peft_model

        heads_state = model.heads.state_dict()
        model_with_lora = AutoDecoModel(
            get_peft_model(model.base_model, _lora_config(args, model.base_model)), model.heads_config, freeze_base=False
        )
        model_with_lora.heads.load_state_dict(heads_state)
        model = model_with_lora
    elif args.training_mode == "head_only":
        model.base_model.requires_grad_(False)
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
    if args.training_mode == "lora_joint":
        from peft import get_peft_model

        base = get_peft_model(base, _lora_config(args, base))
    heads_config = HeadsConfig(
        hidden_size=base_hidden_size(base),
        mlp_width=args.heads_mlp_width,
        max_temperature=args.heads_max_temperature,
        top_p_features=args.heads_top_p_features,
        context_features=args.heads_context_features,
        steering_width=args.heads_steering_width,
        steering_linear=args.heads_steering_linear,
        context_in_mlp=args.heads_context_in_mlp,
        base_model=args.model_name_or_path,
    )
    model = AutoDecoModel(base, heads_config, freeze_base=args.training_mode == "head_only")
    return prepare_model(model, args), tokenizer


@dataclass
class SteeringOutput:
    """Heads along the responses: ``temperature``/``top_p [R, N]`` (0 on padding), ``slots`` for the ``K``
    masked positions (row-major), ``lm_loss`` (lora_joint) or None."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    slots: LogitSlots
    lm_loss: torch.Tensor | None = None


class SteeringModel(nn.Module):
    """The module the trainer optimises: an AutoDecoModel evaluated at the response positions.

    ``forward`` takes the collator's batch: either ``input_ids``/``attention_mask`` plus
    ``response_positions``/``response_targets`` (the backbone runs; without grad when it is frozen),
    or the cached ``hidden``/``context``/``slot_*``/``target_*`` tensors (heads only). In both cases the heads
    see the hidden state and the (compressed) logit slots of each response position, so training
    from the cache and through the backbone compute the same thing.
    """

    def __init__(self, autodeco: AutoDecoModel, logit_top_k: int = 256, logit_bins: int = 64, lm_loss: bool = False):
        super().__init__()
        self.autodeco = autodeco
        self.logit_top_k, self.logit_bins = logit_top_k, logit_bins
        self.compute_lm_loss = lm_loss

    @property
    def config(self):
        return self.autodeco.config

    @property
    def generation_config(self):
        return self.autodeco.generation_config

    def add_model_tags(self, tags) -> None:
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
    ) -> SteeringOutput:
        mask = response_mask.bool()
        lm_loss = None
        if hidden is not None:
            flat_hidden = hidden[mask]
            flat_context = None if context is None else context[mask]
            slots = LogitSlots(slot_values[mask], slot_counts[mask], target_value[mask], target_slot[mask].long())
        else:
            if input_ids is None or response_positions is None or response_targets is None:
                raise ValueError("SteeringModel needs either cached backbone outputs or input_ids with response positions")
            grad = torch.enable_grad() if self._backbone_is_trainable() else torch.no_grad()
            with grad:
                flat_hidden, flat_context, slots, logits = backbone_outputs(
                    self.autodeco.base_model,
                    input_ids,
                    attention_mask,
                    response_positions,
                    response_targets,
                    mask,
                    self.logit_top_k,
                    self.logit_bins,
                )
            if self.compute_lm_loss:
                lm_loss = F.cross_entropy(logits.float(), response_targets[mask]) if logits.shape[0] else logits.sum() * 0
        temperature, top_p = self.autodeco.heads(flat_hidden, slots.values, slots.counts, context=flat_context)
        padded = torch.zeros(mask.shape, dtype=temperature.dtype, device=temperature.device)
        return SteeringOutput(
            temperature=padded.masked_scatter(mask, temperature),
            top_p=padded.masked_scatter(mask, top_p),
            slots=slots,
            lm_loss=lm_loss,
        )

    @torch.no_grad()
    def base_lm_loss(self, input_ids, attention_mask, response_positions, response_targets, response_mask) -> torch.Tensor:
        """Language-modelling loss on the responses with the LoRA adapter disabled (the base model's)."""
        base = self.autodeco.base_model
        context = base.disable_adapter() if _is_peft(base) else contextlib.nullcontext()
        mask = response_mask.bool()
        with context:
            *_, logits = backbone_outputs(
                base, input_ids, attention_mask, response_positions, response_targets, mask, self.logit_top_k, self.logit_bins
            )
        return F.cross_entropy(logits.float(), response_targets[mask])


# -- trainer --------------------------------------------------------------------------------------
class SteeringTrainer(SFTTrainer):
    """Trains AutoDeco heads (and optionally LoRA) to predict T and P *and* to obey randomness commands.

    Args:
        model: an :class:`~steerdeco.AutoDecoModel`; None builds one from ``args.model_name_or_path``
            (then ``processing_class`` defaults to its tokenizer). In ``lora_joint`` mode a model
            without adapters gets them.
        args: a :class:`SteeringConfig`.
        train_dataset / eval_dataset: control rows (``datasets.Dataset``, one row per prompt and
            variant, see :mod:`steerdeco.training.collator`). None: read ``args.dataset_path`` and
            take the rows of ``args.train_split`` / ``args.eval_split``.
        processing_class: the tokenizer (with a chat template and a pad token).
        callbacks, optimizers: as for ``SFTTrainer``.

    After ``__init__``: ``trainer.autodeco_model`` is the model being trained, ``trainer.backbone_cache``
    the cache (or None) and ``trainer.backbone_cache_seconds`` the time it took to load or build,
    ``trainer.train_rows``/``eval_rows`` the control rows.
    """

    _tag_names = ["trl", "steerdeco"]
    _name = "Steering"
    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(
        self,
        model: AutoDecoModel | None = None,
        args: SteeringConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is None:
            args = SteeringConfig()
        if not isinstance(args, SteeringConfig):
            raise TypeError(f"args must be a SteeringConfig, got {type(args).__name__}")
        # everything that can be checked without a model, before one is loaded
        plan = preflight(args, need_data=train_dataset is None)
        self.resume_checkpoint = plan.resume_checkpoint
        if train_dataset is None:
            train_dataset = select_split(plan.rows, args.train_split)
            if eval_dataset is None:
                eval_dataset = select_split(plan.rows, args.eval_split)
        if len(train_dataset) == 0:
            raise ValueError(
                f"no training rows (split == {args.train_split!r}) in the control data; set train_split to a split "
                "the data has"
            )
        if model is None:
            model, tokenizer = build_model(args)
            processing_class = processing_class or tokenizer
        else:
            model = prepare_model(model, args)
        if processing_class is None:
            raise ValueError("pass the model's tokenizer as processing_class")
        if processing_class.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (tokenizer.pad_token = tokenizer.eos_token)")
        if eval_dataset is not None and len(eval_dataset) == 0:
            eval_dataset = None
        self.train_rows, self.eval_rows = train_dataset, eval_dataset
        limits = {
            "max_positions": context_size(model.base_model),
            "overlong": args.overlong_rows,
            "source": f"control data {args.dataset_path}" if args.dataset_path else "the training rows",
        }
        train_groups, train_examples = encode_groups(
            train_dataset, processing_class, args.max_response_tokens, args.max_train_groups, **limits
        )
        if not train_groups:
            raise ValueError(
                f"overlong_rows={args.overlong_rows!r} skipped every training group: no prompt fits the model's "
                f"context of {limits['max_positions']} positions"
            )
        eval_groups, eval_examples = ([], [])
        if eval_dataset is not None:
            eval_groups, eval_examples = encode_groups(
                eval_dataset, processing_class, args.max_response_tokens, args.max_eval_groups, len(train_examples),
                **limits,
            )
        if eval_dataset is not None and (args.max_eval_groups is not None or args.overlong_rows != "error"):
            kept = {group["group_id"] for group in eval_groups}
            eval_dataset = eval_dataset.select([i for i, g in enumerate(eval_dataset["group_id"]) if str(g) in kept])
            self.eval_rows = eval_dataset  # the final ordering report scores the same groups
        self.split_names = command_split_names(train_groups, eval_groups)

        self.backbone_cache, self.backbone_cache_seconds = None, 0.0
        if args.use_backbone_cache:
            cache_started = time.perf_counter()
            cache_dir = args.cache_dir or os.path.join(args.output_dir, "backbone_cache")
            with args.main_process_first(desc="backbone cache"):
                self.backbone_cache = load_or_build_cache(
                    cache_dir,
                    model.base_model,
                    train_examples + eval_examples,
                    processing_class.pad_token_id,
                    args.logit_top_k,
                    args.logit_bins,
                    args.cache_batch_size,
                    progress=args.process_index == 0 and not args.disable_tqdm,
                    store_context=model.heads_config.context_features,
                    hidden_dtype=args.cache_hidden_dtype,
                )
            self.backbone_cache_seconds = time.perf_counter() - cache_started

        if model.heads_config.context_features and not args.init_heads:
            self._fit_context_normalization(model, train_examples, processing_class.pad_token_id, args)

        import datasets

        self.autodeco_model = model
        steering_model = SteeringModel(model, args.logit_top_k, args.logit_bins, lm_loss=args.training_mode == "lora_joint")
        super().__init__(
            model=steering_model,
            args=args,
            data_collator=SteeringCollator(processing_class.pad_token_id, self.split_names, self.backbone_cache),
            train_dataset=datasets.Dataset.from_list(train_groups),
            eval_dataset=datasets.Dataset.from_list(eval_groups) if eval_groups else None,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.loss_config = AutoDecoLossConfig(
            easy_token_fraction=args.easy_token_fraction,
            dft=args.dft,
            steepness=args.top_p_steepness,
            temperature_weight=args.temperature_loss_weight,
            top_p_weight=args.top_p_loss_weight,
        )
        self._metric_keys = [
            *LOSS_TERMS,
            "base_lm_loss",
            *(f"mean_{q}/{v}" for q in QUANTITIES for v in VARIANTS),
            *(f"ordered_{q}/{s}" for q in QUANTITIES for s in self.split_names),
        ]
        self._metric_index = {key: i for i, key in enumerate(self._metric_keys)}
        self._metric_sums = {mode: torch.zeros(len(self._metric_keys), 2, dtype=torch.float64) for mode in ("train", "eval")}
        self._generator_key, self._generator_calls = None, 0

    NORMALIZATION_ROWS = 64  # rows run through the backbone to fit the context normalisation without a cache

    def _fit_context_normalization(self, model: AutoDecoModel, train_examples: list[dict], pad_token_id: int, args) -> None:
        """Standardise the heads' context input with statistics of the training rows' response positions
        (from the backbone cache, else from a forward over the first rows); a resumed run loads the saved ones."""
        if self.backbone_cache is not None:
            end = int(self.backbone_cache.offsets[len(train_examples)])
            contexts = self.backbone_cache.context[:end]
        else:
            from .cache import build_backbone_cache

            was_training = model.base_model.training
            model.base_model.eval()
            try:
                contexts = build_backbone_cache(  # only its context is used; exact logits (top_k 0) are not cacheable
                    model.base_model, train_examples[: self.NORMALIZATION_ROWS], pad_token_id, args.logit_top_k or 5,
                    args.logit_bins, args.cache_batch_size, progress=False,
                ).context
            finally:
                model.base_model.train(was_training)
        model.heads.fit_context_normalization(contexts)
        logger.info("context normalisation fitted on %d response positions", contexts.shape[0])

    # -- objective ----------------------------------------------------------------------------
    def _term_weights(self) -> dict[str, float]:
        args = self.args
        train_t = args.train_heads in ("both", "temperature")
        train_p = args.train_heads in ("both", "top_p")
        weights = {
            "autodeco_temperature_loss": args.temperature_loss_weight if train_t else None,
            "autodeco_top_p_loss": args.top_p_loss_weight if train_p else None,
            "ranking_temperature_loss": args.temperature_ranking_weight if train_t else None,
            "ranking_top_p_loss": args.top_p_ranking_weight if train_p else None,
            "placebo_temperature_loss": args.placebo_weight if train_t else None,
            "placebo_top_p_loss": args.placebo_weight if train_p else None,
            "ratio_temperature_loss": args.temperature_ratio_weight if train_t and args.temperature_ratio_weight else None,
            "absolute_temperature_loss": args.absolute_weight if train_t else None,
            "absolute_top_p_loss": args.top_p_absolute_weight if train_p and args.top_p_absolute_weight else None,
            "lm_loss": args.lm_loss_weight if args.training_mode == "lora_joint" else None,
        }
        return {name: weight for name, weight in weights.items() if weight is not None}

    def _loss_generator(self, mode: str) -> torch.Generator:
        """A generator for the easy-token draw that depends only on (seed, step, call, process): resumable."""
        key = (mode, self.state.global_step)
        if key != self._generator_key:
            self._generator_key, self._generator_calls = key, 0
        self._generator_calls += 1
        text = f"{self.args.seed}|{mode}|{self.state.global_step}|{self._generator_calls}|{self.args.process_index}"
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def objective_terms(self, outputs: SteeringOutput, inputs: dict, mode: str = "train") -> dict[str, torch.Tensor]:
        """Every unweighted loss term of this configuration for one batch (see :class:`SteeringConfig`)."""
        args = self.args
        weights = self._term_weights()
        mask = inputs["response_mask"].bool()
        temperature, top_p = outputs.temperature, outputs.top_p
        groups, levels, variant = inputs["groups"], inputs["signed_level"], inputs["variant"]
        is_none = variant == VARIANTS.index("none")
        is_placebo = variant == VARIANTS.index("placebo")
        terms: dict[str, torch.Tensor] = {}
        if "autodeco_temperature_loss" in weights or "autodeco_top_p_loss" in weights:
            rows = (is_none | is_placebo) if args.autodeco_rows == "uncommanded" else torch.ones_like(is_none)
            keep = rows.unsqueeze(1).expand_as(mask)[mask]
            t_loss, p_loss = autodeco_losses(
                outputs.slots.select(keep),
                temperature[mask][keep],
                top_p[mask][keep],
                self.loss_config,
                generator=self._loss_generator(mode),
            )
            if "autodeco_temperature_loss" in weights:
                terms["autodeco_temperature_loss"] = t_loss
            if "autodeco_top_p_loss" in weights:
                terms["autodeco_top_p_loss"] = p_loss
        log_t = temperature.clamp_min(MIN_TEMPERATURE).log()
        for quantity, values, margin in (
            ("temperature", temperature, args.temperature_margin),
            ("top_p", top_p, args.top_p_margin),
        ):
            if f"ranking_{quantity}_loss" in weights:
                if args.ranking_space == "linear":
                    ranked = values
                elif quantity == "temperature":
                    ranked = log_t
                else:
                    ranked = torch.logit(values, eps=1e-4)
                terms[f"ranking_{quantity}_loss"] = pairwise_ranking_loss(
                    ranked, mask, groups, levels, margin=margin, reduction=args.ranking_reduction
                )
            if f"placebo_{quantity}_loss" in weights:
                terms[f"placebo_{quantity}_loss"] = placebo_loss(
                    values, mask, groups, is_placebo, is_none, reduction=args.ranking_reduction
                )
        if "ratio_temperature_loss" in weights:
            offsets = level_offsets(levels, args.low_temperature_ratios, args.high_temperature_ratios)
            terms["ratio_temperature_loss"] = relative_target_loss(
                log_t, mask, groups, is_none, offsets, reduction=args.ranking_reduction
            )
        if "absolute_temperature_loss" in weights:
            targets = inputs["target_temperature"].clamp_min(args.absolute_temperature_floor).log()
            terms["absolute_temperature_loss"] = absolute_target_loss(log_t, mask, targets, reduction=args.ranking_reduction)
        if "absolute_top_p_loss" in weights:
            terms["absolute_top_p_loss"] = absolute_target_loss(
                top_p, mask, inputs["target_top_p"], reduction=args.ranking_reduction
            )
        if "lm_loss" in weights:
            terms["lm_loss"] = outputs.lm_loss
        return terms

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The weighted steering objective instead of SFT's NLL; records every term and the ordering metrics."""
        mode = "train" if self.model.training else "eval"
        outputs = model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs})
        terms = self.objective_terms(outputs, inputs, mode)
        weights = self._term_weights()
        loss = sum(weights[name] * term for name, term in terms.items())
        if mode == "eval" and self.args.training_mode == "lora_joint" and "input_ids" in inputs:
            terms["base_lm_loss"] = self.model.base_lm_loss(
                *(inputs[k] for k in ("input_ids", "attention_mask", "response_positions", "response_targets", "response_mask"))
            )
        self._record_metrics(mode, terms, outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss only (the steering model returns no logits); the metrics come from ``compute_loss``."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- metrics ------------------------------------------------------------------------------
    def _add_metric(self, mode: str, key: str, total: float, count: float = 1.0) -> None:
        index = self._metric_index.get(key)
        if index is not None:
            self._metric_sums[mode][index, 0] += total
            self._metric_sums[mode][index, 1] += count

    def _record_metrics(self, mode: str, terms: dict, outputs: SteeringOutput, inputs: dict) -> None:
        for name, value in terms.items():
            self._add_metric(mode, name, float(value.detach()))
        mask = inputs["response_mask"].bool()
        has_tokens = mask.any(-1)
        means = {
            "temperature": sequence_means(outputs.temperature.detach().float(), mask).cpu(),
            "top_p": sequence_means(outputs.top_p.detach().float(), mask).cpu(),
        }
        variants = inputs["variant"].cpu().tolist()
        splits = inputs["command_split"].cpu().tolist()
        groups = inputs["groups"].cpu().tolist()
        records = []
        for r, (variant, split, group) in enumerate(zip(variants, splits, groups, strict=True)):
            if not bool(has_tokens[r]):
                continue
            name = VARIANTS[variant]
            for quantity in QUANTITIES:
                self._add_metric(mode, f"mean_{quantity}/{name}", float(means[quantity][r]))
            records.append(
                {
                    "group_id": group,
                    "variant": name,
                    "command_split": self.split_names[split] if split >= 0 else None,
                    "temperature": float(means["temperature"][r]),
                    "top_p": float(means["top_p"][r]),
                }
            )
        for unit in summarize_ordering(records)["units"]:
            for quantity in QUANTITIES:
                ordered = unit[f"{quantity}_ordered"]
                if ordered is not None:
                    self._add_metric(mode, f"ordered_{quantity}/{unit['command_split']}", float(ordered))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the steering metrics averaged since the last log and over processes: every loss term, mean T
        and P per variant (``mean_temperature/low``, ...) and the share of groups ordered low < none < high
        per command split (``ordered_temperature/train``, ...); ``eval_``-prefixed during evaluation."""
        mode = "train" if self.model.training else "eval"
        sums = self._metric_sums[mode]
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums.to(self.accelerator.device), reduction="sum").cpu()
        prefix = "eval_" if mode == "eval" else ""
        for key, (total, count) in zip(self._metric_keys, sums.tolist(), strict=True):
            if count > 0:
                logs[prefix + key] = total / count
        self._metric_sums[mode].zero_()
        super().log(logs, start_time)

    # -- running and resuming -------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``; without ``resume_from_checkpoint`` the config's (checked by the preflight) is used.

        ``True`` or ``"last"`` resumes from the last *complete* checkpoint of ``output_dir``; a folder
        is checked like the config's (complete, trained with the same settings).
        """
        from .preflight import resolve_resume

        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            checkpoint = self.resume_checkpoint
        else:
            checkpoint = resolve_resume(self.args, resume_from_checkpoint)
        if self.args.should_save:
            mark_output(self.args.output_dir, TOOL)
        if checkpoint is not None:
            logger.info("resuming from %s", checkpoint)
        return super().train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint), **kwargs)

    # -- checkpoints (no pickle) ----------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        """``Trainer._save_checkpoint``, but atomic: everything goes into ``.checkpoint-N.partial``, which is
        renamed to ``checkpoint-N`` once every process has written its part."""
        from transformers.trainer_callback import ExportableState
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"checkpoint-{self.state.global_step}"
        final, staging = run_dir / name, run_dir / f".{name}.partial"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left behind by a killed run
        self.accelerator.wait_for_everyone()
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(str(staging), _internal_call=True)
        if self.state.best_global_step:
            best = run_dir / f"checkpoint-{self.state.best_global_step}"
            if best == final or best.exists():
                self.state.best_model_checkpoint = str(best)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))
        if self.args.should_save:
            for callback in [*self.callback_handler.callbacks, self.control]:
                if isinstance(callback, ExportableState):
                    callback_name = callback.__class__.__name__
                    if isinstance(self.state.stateful_callbacks[callback_name], list):
                        self.state.stateful_callbacks[callback_name].append(callback.state())
                    else:
                        self.state.stateful_callbacks[callback_name] = callback.state()
            self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if final.exists():  # the same step saved again (e.g. after a resume): replace it whole
                old = run_dir / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, final)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Heads (+ LoRA adapter) as safetensors and the config as JSON, instead of the whole model and a
        pickled ``training_args.bin``. Only the writing process saves; under FSDP from the full state dict
        that ``save_model`` gathered from every process's shards."""
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is not None and self.is_fsdp_enabled:  # gathered from the shards by save_model
            prefix = "autodeco."
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            save_trained(self.autodeco_model, output_dir, state_dict=state_dict)
        else:
            save_trained(self.autodeco_model, output_dir)
        atomic_write_text(Path(output_dir) / STEERING_CONFIG_NAME, self.args.to_json_string())
        logger.info("saved the trained heads%s to %s", " and adapter" if self.args.training_mode == "lora_joint" else "", output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Optimizer and scheduler state as safetensors + JSON (``optimizer.*``, ``scheduler.*``); under FSDP
        the optimizer state is gathered to full tensors keyed by parameter name (every process takes part)."""
        if self.is_fsdp_enabled and is_sharded(self.model):
            optimizer_state = full_optimizer_state(self.model, getattr(self.optimizer, "optimizer", self.optimizer))
        else:
            optimizer_state = self.optimizer.state_dict() if self.args.should_save else None
        if self.args.should_save:
            save_state(output_dir, OPTIMIZER_STATE, optimizer_state)
            save_state(output_dir, SCHEDULER_STATE, self.lr_scheduler.state_dict())

    def _rng_file(self) -> str:
        return RNG_STATE if self.args.world_size <= 1 else f"{RNG_STATE}_{self.args.process_index}"

    def _save_rng_state(self, output_dir: str) -> None:
        """RNG states as safetensors + JSON, one file per process."""
        save_state(output_dir, self._rng_file(), rng_state())

    def _refuse_sharded_loading(self, what: str) -> None:
        if self.is_fsdp_enabled:
            raise ValueError(
                f"{what} under FSDP is not supported yet (the checkpoint holds full, unsharded heads and adapter): "
                "start a new run with init_heads=CHECKPOINT, or resume without FSDP"
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load the heads (+ adapter) written by ``_save``."""
        self._refuse_sharded_loading("resume_from_checkpoint")
        load_trained_into(self.autodeco_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """Load the heads (+ adapter) of the best checkpoint."""
        self._refuse_sharded_loading("load_best_model_at_end")
        load_trained_into(self.autodeco_model, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Read the optimizer and scheduler state written by ``_save_optimizer_and_scheduler``."""
        if checkpoint is None:
            return
        for name, target in ((OPTIMIZER_STATE, self.optimizer), (SCHEDULER_STATE, self.lr_scheduler)):
            if not has_state(checkpoint, name):
                raise ValueError(
                    f"checkpoint {checkpoint} has no {name} state ({name}.json/.safetensors): it cannot continue the "
                    "run exactly; resume from a full checkpoint or start afresh with --overwrite_output_dir"
                )
            target.load_state_dict(load_state(checkpoint, name))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Restore the RNG states written by ``_save_rng_state``."""
        if checkpoint is None:
            return
        if not has_state(checkpoint, self._rng_file()):
            logger.warning("no RNG state for this process in %s; resuming with fresh RNG state", checkpoint)
            return
        set_rng_state(load_state(checkpoint, self._rng_file()))

    def _send_telemetry(self) -> None:
        """Nothing: steerdeco makes no network calls."""
