"""Data wiring of a run: control rows -> encoded groups, the backbone cache and the heads' context statistics.

:func:`prepare_data` encodes the training and evaluation rows into groups (checked against the
base model's context), names the command splits and, for a cached head-only run, loads or builds
the backbone cache; :func:`fit_context_normalization` then standardises the heads' context input
with statistics of the training rows.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from ..modeling import AutoDecoModel
from .cache import BackboneCache, build_backbone_cache, load_or_build_cache
from .collator import command_split_names, encode_groups
from .config import SteeringConfig

logger = logging.getLogger(__name__)

NORMALIZATION_ROWS = 64  # rows run through the backbone to fit the context normalisation without a cache


def context_size(base_model) -> int | None:
    """The base model's context length (``max_position_embeddings`` of its text config), if it names one."""
    config = base_model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text_config, "max_position_embeddings", None)
    return size if isinstance(size, int) and size > 0 else None


@dataclass
class TrainingData:
    """What a run trains and evaluates on.

    Attributes:
        train_groups, eval_groups: one record per group (:func:`~steerdeco.training.collator.encode_groups`).
        train_examples, eval_examples: the encoded rows, in the backbone cache's order.
        eval_rows: the control rows of the evaluation groups kept (None: no evaluation).
        split_names: the command splits, indexed like the collator's ``command_split`` codes.
        backbone_cache: the cache of the frozen backbone's outputs, or None; ``cache_seconds`` to load or build it.
    """

    train_groups: list[dict]
    eval_groups: list[dict]
    train_examples: list[dict]
    eval_examples: list[dict]
    eval_rows: object
    split_names: list[str]
    backbone_cache: BackboneCache | None = None
    cache_seconds: float = field(default=0.0)


def prepare_data(args: SteeringConfig, model: AutoDecoModel, tokenizer, train_rows, eval_rows) -> TrainingData:
    """Encode ``train_rows``/``eval_rows`` (control rows; ``eval_rows`` may be None) for ``model`` and, when
    ``args.use_backbone_cache``, load or build the backbone cache.

    Raises:
        ValueError: ``overlong_rows`` skipped every training group (or a row is too long with ``'error'``).
    """
    limits = {
        "max_positions": context_size(model.base_model),
        "overlong": args.overlong_rows,
        "source": f"control data {args.dataset_path}" if args.dataset_path else "the training rows",
    }
    train_groups, train_examples = encode_groups(
        train_rows, tokenizer, args.max_response_tokens, args.max_train_groups, **limits
    )
    if not train_groups:
        raise ValueError(
            f"overlong_rows={args.overlong_rows!r} skipped every training group: no prompt fits the model's "
            f"context of {limits['max_positions']} positions"
        )
    eval_groups, eval_examples = ([], [])
    if eval_rows is not None:
        eval_groups, eval_examples = encode_groups(
            eval_rows, tokenizer, args.max_response_tokens, args.max_eval_groups, len(train_examples), **limits
        )
    if eval_rows is not None and (args.max_eval_groups is not None or args.overlong_rows != "error"):
        kept = {group["group_id"] for group in eval_groups}
        eval_rows = eval_rows.select([i for i, g in enumerate(eval_rows["group_id"]) if str(g) in kept])
    data = TrainingData(
        train_groups, eval_groups, train_examples, eval_examples, eval_rows, command_split_names(train_groups, eval_groups)
    )
    if args.use_backbone_cache:
        cache_started = time.perf_counter()
        cache_dir = args.cache_dir or os.path.join(args.output_dir, "backbone_cache")
        with args.main_process_first(desc="backbone cache"):
            data.backbone_cache = load_or_build_cache(
                cache_dir,
                model.base_model,
                train_examples + eval_examples,
                tokenizer.pad_token_id,
                args.logit_top_k,
                args.logit_bins,
                args.cache_batch_size,
                progress=args.process_index == 0 and not args.disable_tqdm,
                store_context=model.heads.standardize_context,
                hidden_dtype=args.cache_hidden_dtype,
                prompt_layer=model.heads_config.context_layer if model.heads.prompt_pool is not None else None,
            )
        data.cache_seconds = time.perf_counter() - cache_started
    return data


def fit_context_normalization(model: AutoDecoModel, data: TrainingData, pad_token_id: int, args: SteeringConfig) -> None:
    """Standardise the heads' context input with statistics of the training rows' response positions (from the
    backbone cache, else from a forward over the first :data:`NORMALIZATION_ROWS` rows)."""
    if data.backbone_cache is not None:
        end = int(data.backbone_cache.offsets[len(data.train_examples)])
        contexts = data.backbone_cache.context[:end]
    else:
        was_training = model.base_model.training
        model.base_model.eval()
        try:
            contexts = build_backbone_cache(  # only its context is used; exact logits (top_k 0) are not cacheable
                model.base_model, data.train_examples[:NORMALIZATION_ROWS], pad_token_id, args.logit_top_k or 5,
                args.logit_bins, args.cache_batch_size, progress=False,
            ).context
        finally:
            model.base_model.train(was_training)
    model.heads.fit_context_normalization(contexts)
    logger.info("context normalisation fitted on %d response positions", contexts.shape[0])
