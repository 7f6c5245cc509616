"""``SteeringConfig``: the :class:`~trl.SFTConfig` of :class:`~steerdeco.training.SteeringTrainer`.

Every field can be set in a YAML file (``python -m steerdeco.train --config FILE``) or as a flag
(``--temperature_margin 0.2``). Fields added here choose the model and data, the training mode
(heads only, optionally from a cache of the frozen backbone, or LoRA + heads) and the heads; the
objective's fields come from :class:`~steerdeco.training.objective.ObjectiveArguments`, LoRA's from
:class:`~steerdeco.training.lora.LoraArguments`. Fields inherited from
``SFTConfig``/``TrainingArguments`` keep their meaning, with a few defaults changed (see the class
docstring). Sub-configs are built by one method each, validated once here: :meth:`SteeringConfig.heads_config`
(defaults and checks are :class:`~steerdeco.config.HeadsConfig`'s) and
:meth:`~steerdeco.training.objective.ObjectiveArguments.autodeco_loss_config`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from ..config import HeadsConfig
from .cache import HIDDEN_DTYPES
from .lora import LoraArguments
from .objective import ObjectiveArguments

TRAINING_MODES = ("head_only", "lora_joint")
TRAIN_HEADS = ("both", "temperature", "top_p")
BACKBONE_DTYPES = ("float32", "bfloat16", "auto")
OVERLONG_ROWS = ("error", "truncate", "skip")


# HeadsConfig field -> the SteeringConfig field that sets it
HEADS_FIELDS = {
    "mlp_width": "heads_mlp_width",
    "mlp_dropout": "heads_mlp_dropout",
    "max_temperature": "heads_max_temperature",
    "top_p_features": "heads_top_p_features",
    "context_features": "heads_context_features",
    "steering_width": "heads_steering_width",
    "steering_linear": "heads_steering_linear",
    "steering_levels": "heads_steering_levels",
    "context_in_mlp": "heads_context_in_mlp",
    "context_pooling": "heads_context_pooling",
    "context_layer": "heads_context_layer",
    "pool_width": "heads_pool_width",
    "pool_dropout": "heads_pool_dropout",
    "named_values": "heads_named_values",
    "negation_scope": "heads_negation_scope",
}


def _heads_field(name: str):
    """The ``heads_*`` field of HeadsConfig field ``name``: its default and its help, read from HeadsConfig."""
    source = HeadsConfig.__dataclass_fields__[name]
    return field(default=source.default, metadata={"help": f"HeadsConfig.{name}: {source.metadata['help']}"})


def resolve_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` of one of :data:`BACKBONE_DTYPES`: ``auto`` is bfloat16 where it is fast
    (:func:`fast_bf16_available`), else float32."""
    if name == "auto":
        return torch.bfloat16 if fast_bf16_available() else torch.float32
    return getattr(torch, name)


def fast_bf16_available() -> bool:
    """Whether bf16 matrix products are fast here: a CUDA GPU with bf16, or a CPU with AMX tiles."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def _multi_process_without_accelerator() -> bool:
    """Launched as several processes (``WORLD_SIZE > 1``) on a machine without any accelerator."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return not _has_accelerator()


@dataclass
class SteeringConfig(ObjectiveArguments, LoraArguments, SFTConfig):
    """Configuration of :class:`~steerdeco.training.SteeringTrainer`.

    Defaults changed from ``SFTConfig``: ``learning_rate=1e-3`` (heads are small MLPs),
    ``per_device_train_batch_size``/``per_device_eval_batch_size`` count *groups* (a prompt with all
    its command variants), ``gradient_checkpointing=None`` and ``bf16=False`` (CPU-friendly),
    ``remove_unused_columns=False`` and ``dataset_kwargs={"skip_prepare_dataset": True}`` (the trainer
    prepares its own grouped data), ``logging_steps=5``, ``report_to="none"``. Several processes on a
    machine without accelerator (``torchrun``/``accelerate launch`` on CPU) set ``use_cpu=True``, so
    the Trainer uses DDP over gloo.

    The objective: :mod:`steerdeco.training.objective`.
    """

    # -- defaults changed from SFTConfig ----------------------------------------------------------
    learning_rate: float = field(default=1e-3, metadata={"help": "Initial AdamW learning rate."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Groups (a prompt with all its variants) per device and training step."}
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Groups per device and evaluation step."})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations in the backward pass (newer transformers name it activation_checkpointing; off by default here)."},
    )
    bf16: bool | None = field(default=False, metadata={"help": "bf16 mixed precision (off by default here)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads the grouped columns."}
    )
    dataset_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Always {'skip_prepare_dataset': True} here: SteeringTrainer prepares its own data."},
    )
    logging_steps: float = field(default=5, metadata={"help": "Log every X update steps."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Integrations to report to ('none': no network, no trackers)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue an interrupted run: 'last' (the last complete checkpoint-N folder in output_dir) or a "
            "checkpoint folder. The checkpoint's saved config must match this run's."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the files of an earlier run in output_dir (only a folder written by steerdeco.train; "
            "its backbone cache is kept). Without it, training into a non-empty output_dir is refused."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Unused by SteeringTrainer (prompts are never truncated); see max_response_tokens."},
    )

    # -- model and data -------------------------------------------------------------------------
    model_name_or_path: str = field(
        default="embedded",
        metadata={
            "help": "Base model: 'embedded' (SmolLM2-135M-Instruct, offline), 'tiny' (random 2-layer Llama for "
            "tests) or a local folder with a causal LM and its tokenizer."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Control data: a datasets save_to_disk folder, a JSONL file, or a folder holding one JSONL. Rows "
            "with split == train_split train, rows with split == eval_split evaluate."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Value of the 'split' column used for training."})
    eval_split: str = field(default="eval", metadata={"help": "Value of the 'split' column used for evaluation."})
    max_train_groups: int | None = field(
        default=None, metadata={"help": "Use at most this many training groups (the first ones); None: all."}
    )
    max_eval_groups: int | None = field(
        default=None, metadata={"help": "Use at most this many evaluation groups (the first ones); None: all."}
    )
    max_response_tokens: int | None = field(
        default=128, metadata={"help": "Truncate every response to this many tokens (EOS included); None: no limit."}
    )
    overlong_rows: str = field(
        default="error",
        metadata={
            "help": "Rows whose prompt + response exceed the base model's context: 'error' (refuse the data), "
            "'truncate' (cut the group's shared response to fit; a group whose prompt alone fills the context is "
            "skipped) or 'skip' (leave the group out). The number of groups touched is logged.",
            "choices": list(OVERLONG_ROWS),
        },
    )

    # -- training mode --------------------------------------------------------------------------
    training_mode: str = field(
        default="head_only",
        metadata={
            "help": "'head_only': frozen backbone, train the heads; 'lora_joint': LoRA on the backbone plus the "
            "heads, with a language-modelling loss on the responses.",
            "choices": list(TRAINING_MODES),
        },
    )
    train_heads: str = field(
        default="both",
        metadata={"help": "Which heads to train; the other one stays frozen.", "choices": list(TRAIN_HEADS)},
    )
    backbone_cache: bool | None = field(
        default=None,
        metadata={
            "help": "head_only: run the frozen backbone once per row and train from a cache of its outputs (hidden "
            "states and compressed logits at the response positions). None: on for head_only, off for lora_joint "
            "(where it is not possible)."
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the backbone cache (default: OUTPUT_DIR/backbone_cache). A cache built for another "
            "model, data or settings is rebuilt."
        },
    )
    cache_batch_size: int = field(
        default=8,
        metadata={"help": "Rows per backbone forward while building the cache (and in the final ordering report)."},
    )
    logit_top_k: int = field(
        default=256,
        metadata={
            "help": "Keep the top-k logits of every response position exactly and summarise the tail in logit_bins "
            "bins (steerdeco.losses.compress_logits); 0: exact logits (not with the backbone cache)."
        },
    )
    logit_bins: int = field(default=64, metadata={"help": "Tail bins of the compressed logits."})
    backbone_dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the frozen or LoRA-wrapped base model: 'float32', 'bfloat16', or 'auto' (bfloat16 "
            "where bf16 matrix products are fast: a CUDA GPU, or a CPU with AMX; else float32). The heads always "
            "train in float32; generate with the base model in the same precision.",
            "choices": list(BACKBONE_DTYPES),
        },
    )
    cache_hidden_dtype: str = field(
        default="bfloat16",
        metadata={
            "help": "dtype of the hidden states (and running context) stored in the backbone cache; the heads "
            "compute in float32 either way.",
            "choices": list(HIDDEN_DTYPES),
        },
    )

    # -- heads (defaults: HeadsConfig's, the one set) ----------------------------------------------
    heads_mlp_width: int = _heads_field("mlp_width")
    heads_mlp_dropout: float = _heads_field("mlp_dropout")
    heads_max_temperature: float = _heads_field("max_temperature")
    heads_top_p_features: bool = _heads_field("top_p_features")
    heads_context_features: bool = _heads_field("context_features")
    heads_steering_width: int = _heads_field("steering_width")
    heads_steering_linear: bool = _heads_field("steering_linear")
    heads_steering_levels: int = _heads_field("steering_levels")
    heads_context_in_mlp: bool = _heads_field("context_in_mlp")
    heads_context_pooling: str = _heads_field("context_pooling")
    heads_context_layer: int = _heads_field("context_layer")
    heads_pool_width: int = _heads_field("pool_width")
    heads_pool_dropout: float = _heads_field("pool_dropout")
    heads_named_values: bool = _heads_field("named_values")
    heads_negation_scope: bool = _heads_field("negation_scope")
    init_heads: str | None = field(
        default=None, metadata={"help": "Start from heads saved by AutoDecoModel.save_pretrained (a folder)."}
    )
    anchor_heads: str | None = field(
        default=None,
        metadata={
            "help": "Heads of the same base model not trained to steer (every steering weight 0; the demo's "
            "reference/ folder): rows without a randomness command are held to their T and P by the anchor term "
            "(anchor_weight), so steering leaves a prompt without a command as AutoDeco alone would decode it."
        },
    )
    final_ordering_report: bool = field(
        default=True,
        metadata={
            "help": "After training, score the evaluation rows teacher-forced through the full model "
            "(steerdeco.training.evaluate_ordering) and write ordering_report.json to the output folder."
        },
    )

    def __post_init__(self):
        self._check_steering_fields()
        fsdp = bool(self.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if fsdp and self.training_mode == "head_only":
            raise ValueError(
                "FSDP is for training_mode lora_joint (it shards the backbone that LoRA trains); head-only trains the "
                "small heads on a frozen backbone: drop --fsdp / the FSDP accelerate config to train with DDP"
            )
        if fsdp and (
            self.use_cpu or _multi_process_without_accelerator() or not _has_accelerator()
        ):
            raise ValueError(
                "FSDP needs GPUs (accelerate runs CPU processes as DDP and would ignore it): run on GPUs, or drop "
                "--fsdp / the FSDP accelerate config to train with DDP"
            )
        if not self.use_cpu and _multi_process_without_accelerator():
            self.use_cpu = True  # several CPU processes (torchrun, accelerate launch): DDP over gloo
        if self.dataloader_pin_memory and (self.use_cpu or not torch.cuda.is_available()):
            self.dataloader_pin_memory = False  # nothing to pin to; avoids a warning per dataloader
        if self.dataset_kwargs is None:
            self.dataset_kwargs = {"skip_prepare_dataset": True}
        super().__post_init__()
        if isinstance(self.dataset_kwargs, dict):
            self.dataset_kwargs["skip_prepare_dataset"] = True

    def heads_config(self, hidden_size: int) -> HeadsConfig:
        """The heads this run trains, on a base model of ``hidden_size`` (validated by HeadsConfig)."""
        settings = {name: getattr(self, steering_field) for name, steering_field in HEADS_FIELDS.items()}
        return HeadsConfig(hidden_size=hidden_size, base_model=self.model_name_or_path, **settings)

    @property
    def backbone_torch_dtype(self) -> torch.dtype:
        """The ``torch.dtype`` that ``backbone_dtype`` resolves to on this machine."""
        return resolve_dtype(self.backbone_dtype)

    @property
    def use_backbone_cache(self) -> bool:
        """Whether this run trains from the backbone cache."""
        return bool(self.backbone_cache) if self.backbone_cache is not None else self.training_mode == "head_only"

    def _check_run_fields(self) -> None:
        """Fields inherited from ``TrainingArguments`` that would fail late (or not at all) when wrong."""
        if self.output_dir is not None and not str(self.output_dir).strip():
            raise ValueError("output_dir is empty; set output_dir (--output_dir DIR) to the folder for this run")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}; set --{name} N")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got {rate!r}; set --learning_rate")
        epochs = self.num_train_epochs
        if (self.max_steps is None or self.max_steps <= 0) and not (
            isinstance(epochs, int | float) and math.isfinite(epochs) and epochs > 0
        ):
            raise ValueError(
                f"num_train_epochs must be > 0 when max_steps is not set, got {epochs!r}: the run would save untrained "
                "heads; set --num_train_epochs or --max_steps"
            )

    def _check_steering_fields(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {list(options)}, got {getattr(self, name)!r}")

        choice("training_mode", TRAINING_MODES)
        choice("train_heads", TRAIN_HEADS)
        choice("backbone_dtype", BACKBONE_DTYPES)
        choice("overlong_rows", OVERLONG_ROWS)
        self._check_run_fields()
        self._check_objective_fields()
        if self.backbone_cache and self.training_mode != "head_only":
            raise ValueError(
                "backbone_cache=True needs training_mode='head_only': with LoRA the backbone changes every step, so "
                "its outputs cannot be cached"
            )
        if self.logit_top_k != 0 and self.logit_top_k < 5:
            raise ValueError(f"logit_top_k must be 0 (exact logits) or >= 5, got {self.logit_top_k}")
        if self.logit_top_k == 0 and self.use_backbone_cache:
            raise ValueError("the backbone cache stores compressed logits: set logit_top_k >= 5 or backbone_cache=False")
        if self.logit_bins < 1:
            raise ValueError(f"logit_bins must be >= 1, got {self.logit_bins}")
        for name in ("max_response_tokens", "max_train_groups", "max_eval_groups"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        choice("cache_hidden_dtype", tuple(HIDDEN_DTYPES))
        if self.cache_batch_size < 1:
            raise ValueError(f"cache_batch_size must be >= 1, got {self.cache_batch_size}")
        try:  # HeadsConfig's own checks, once; the hidden size comes with the model
            self.heads_config(hidden_size=1)
        except ValueError as error:
            raise ValueError(f"heads_{error} (set the heads_* fields)") from None
        if self.train_split == self.eval_split:
            raise ValueError(f"train_split and eval_split must differ, both are {self.train_split!r}")
        if self.training_mode == "lora_joint":
            self._check_lora_fields()
        if self.push_to_hub:
            raise ValueError("push_to_hub is not supported: steerdeco trains offline and saves heads locally")
        if self.deepspeed:
            raise ValueError(
                "DeepSpeed is not supported (checkpoints are heads/adapters as safetensors); use FSDP2 "
                "(accelerate launch --config_file configs/accelerate_fsdp2.yaml) or DDP"
            )
        if self.fsdp:
            fsdp_config = self.fsdp_config if isinstance(self.fsdp_config, dict) else {}
            version = fsdp_config.get("version", fsdp_config.get("fsdp_version", 2))
            if str(version) != "2":
                raise ValueError(
                    f"fsdp_config version {version} is not supported: steerdeco trains with FSDP2 (fully_shard); "
                    "set fsdp_config: {version: 2} or use configs/accelerate_fsdp2.yaml"
                )
        if self.fp16:
            raise ValueError("fp16 mixed precision is not supported (its grad scaler state is pickled); use bf16")
        if self.packing or self.padding_free:
            raise ValueError("packing and padding_free are not supported: variants of a group must stay separate rows")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: the collator reads the grouped columns")
