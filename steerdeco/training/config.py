"""``SteeringConfig``: the :class:`~trl.SFTConfig` of :class:`~steerdeco.training.SteeringTrainer`.

Every field can be set in a YAML file (``python -m steerdeco.train --config FILE``) or as a flag
(``--temperature_margin 0.2``). Fields added here choose the model and data, the training mode
(heads only, optionally from a cache of the frozen backbone, or LoRA + heads), and the weight of
each term of the objective; fields inherited from ``SFTConfig``/``TrainingArguments`` keep their
meaning, with a few defaults changed (see the class docstring).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from ..config import CONTEXT_POOLINGS
from .cache import HIDDEN_DTYPES

TRAINING_MODES = ("head_only", "lora_joint")
TRAIN_HEADS = ("both", "temperature", "top_p")
AUTODECO_ROWS = ("uncommanded", "all")
REDUCTIONS = ("token", "sequence")
RANKING_SPACES = ("linear", "log")
BACKBONE_DTYPES = ("float32", "bfloat16", "auto")
OVERLONG_ROWS = ("error", "truncate", "skip")


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
class SteeringConfig(SFTConfig):
    """Configuration of :class:`~steerdeco.training.SteeringTrainer`.

    Defaults changed from ``SFTConfig``: ``learning_rate=1e-3`` (heads are small MLPs),
    ``per_device_train_batch_size``/``per_device_eval_batch_size`` count *groups* (a prompt with all
    its command variants), ``gradient_checkpointing=None`` and ``bf16=False`` (CPU-friendly),
    ``remove_unused_columns=False`` and ``dataset_kwargs={"skip_prepare_dataset": True}`` (the trainer
    prepares its own grouped data), ``logging_steps=5``, ``report_to="none"``. Several processes on a
    machine without accelerator (``torchrun``/``accelerate launch`` on CPU) set ``use_cpu=True``, so
    the Trainer uses DDP over gloo.

    The objective is a weighted sum::

        temperature_loss_weight * autodeco_T + top_p_loss_weight * autodeco_P
        + temperature_ranking_weight * rank_T + top_p_ranking_weight * rank_P
        + placebo_weight * (placebo_T + placebo_P)
        + temperature_ratio_weight * ratio_T            (commanded rows: log T_cmd = log T_none + log ratio(level))
        + absolute_weight * absolute_T                  (rows naming a temperature X: log T toward log max(X, floor))
        + top_p_absolute_weight * absolute_P            (rows naming a top-p X: P toward X)
        + lm_loss_weight * lm (lora_joint only)

    Terms of a head that is not trained (``train_heads``) are left out.
    """

    # -- defaults changed from SFTConfig ----------------------------------------------------------
    learning_rate: float = field(default=1e-3, metadata={"help": "Initial AdamW learning rate."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Groups (a prompt with all its variants) per device and training step."}
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Groups per device and evaluation step."})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing (off by default here)."},
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

    # -- heads ----------------------------------------------------------------------------------
    heads_mlp_width: int = field(
        default=192,
        metadata={
            "help": "Hidden width of each head's MLP (AutoDeco uses 256; 192 keeps heads with context features "
            "for SmolLM2-135M under 2 MB)."
        },
    )
    heads_max_temperature: float = field(default=2.0, metadata={"help": "T = max_temperature * sigmoid(MLP(h))."})
    heads_top_p_features: bool = field(
        default=True, metadata={"help": "Feed the top-p head AutoDeco's four probability features."}
    )
    heads_context_features: bool = field(
        default=True,
        metadata={
            "help": "Feed both heads the running mean of the last hidden state up to each token as well as the "
            "token's own state (HeadsConfig.context_features), so the command in the prompt reaches every "
            "token directly. false: AutoDeco's heads exactly."
        },
    )
    heads_steering_width: int = field(
        default=0,
        metadata={
            "help": "Width of each head's steering path (HeadsConfig.steering_width): an MLP on the context alone "
            "whose output shifts the head's logit for every token of the reply. 0: none. Needs heads_context_features."
        },
    )
    heads_steering_linear: bool = field(
        default=False, metadata={"help": "HeadsConfig.steering_linear: a linear steering path instead of an MLP."}
    )
    heads_context_in_mlp: bool = field(
        default=True,
        metadata={"help": "HeadsConfig.context_in_mlp: feed the context to the heads' own MLPs too (not only the steering path)."},
    )
    heads_context_pooling: str = field(
        default="running_mean",
        metadata={
            "help": "HeadsConfig.context_pooling: the context is the 'running_mean' of the last hidden state, or "
            "'prompt_attention', a learned attention pooling of the prompt's states (one vector per reply).",
            "choices": ["running_mean", "prompt_attention"],
        },
    )
    heads_context_layer: int = field(
        default=0,
        metadata={"help": "HeadsConfig.context_layer: with prompt_attention, the decoder layer whose states are pooled (0: the last hidden state)."},
    )
    heads_pool_width: int = field(default=64, metadata={"help": "HeadsConfig.pool_width: width of the prompt attention's scoring MLP."})
    init_heads: str | None = field(
        default=None, metadata={"help": "Start from heads saved by AutoDecoModel.save_pretrained (a folder)."}
    )

    # -- AutoDeco objective ---------------------------------------------------------------------
    temperature_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of AutoDeco's temperature loss (CE of logits / T)."}
    )
    top_p_loss_weight: float = field(default=1.0, metadata={"help": "Weight of AutoDeco's soft top-p loss."})
    easy_token_fraction: float = field(
        default=0.6, metadata={"help": "Share of easy positions (base argmax == target) dropped from the T loss."}
    )
    dft: bool = field(default=True, metadata={"help": "Weight AutoDeco's losses by the base target probability."})
    top_p_steepness: float = field(default=30.0, metadata={"help": "Steepness of the soft top-p mask."})
    autodeco_rows: str = field(
        default="uncommanded",
        metadata={
            "help": "Rows the AutoDeco losses see: 'uncommanded' (no-command and placebo variants, whose response "
            "is the model's own) or 'all' variants.",
            "choices": list(AUTODECO_ROWS),
        },
    )

    # -- steering objective ---------------------------------------------------------------------
    temperature_ranking_weight: float = field(
        default=1.0, metadata={"help": "Weight of the pairwise ranking loss on T (low < none < high, by level)."}
    )
    top_p_ranking_weight: float = field(default=1.0, metadata={"help": "Weight of the pairwise ranking loss on P."})
    temperature_margin: float = field(
        default=0.1,
        metadata={
            "help": "Margin by which each higher-level variant's T must exceed the lower one's (in log T with "
            "ranking_space='log': 0.1 is a ratio of about 1.105)."
        },
    )
    top_p_margin: float = field(default=0.05, metadata={"help": "Margin of the ranking loss on P."})
    ranking_reduction: str = field(
        default="token",
        metadata={
            "help": "Compare variants position by position ('token') or on response means ('sequence'); also "
            "used by the placebo and absolute-target terms.",
            "choices": list(REDUCTIONS),
        },
    )
    ranking_space: str = field(
        default="log",
        metadata={
            "help": "Compare variants on the values themselves ('linear': a margin is an absolute difference) or on "
            "log T and logit P ('log': a margin on T is a ratio, log(T_high / T_low) >= margin; on P a step in "
            "log-odds, which leaves room above a P near 1). 'log' keeps the ranking satisfiable when the calibrated T "
            "is small and the graded levels need room below it.",
            "choices": list(RANKING_SPACES),
        },
    )
    temperature_ratio_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the level-ratio term: every low/high row's log T is regressed toward its group's "
            "no-command log T plus log(ratio of its level) (low_temperature_ratios / high_temperature_ratios), token "
            "by token. 0: off (ranking only)."
        },
    )
    low_temperature_ratios: list[float] = field(
        default_factory=lambda: [0.7, 0.4, 0.1],
        metadata={"help": "T ratio (command / no command) asked of low levels 1, 2, 3, ... by the level-ratio term."},
    )
    high_temperature_ratios: list[float] = field(
        default_factory=lambda: [1.3, 1.6, 2.0],
        metadata={"help": "T ratio asked of high levels 1, 2, 3, ... by the level-ratio term."},
    )
    placebo_weight: float = field(
        default=0.1,
        metadata={
            "help": "Weight of |T_placebo - T_none| + |P_placebo - P_none|. Kept small: at 1.0 this per-token pull "
            "toward invariance to any instruction outweighs the ranking and the heads stop telling commands apart."
        },
    )
    absolute_weight: float = field(
        default=0.1,
        metadata={
            "help": "Weight of (log T - log max(target, absolute_temperature_floor))^2 for commands naming a target "
            "temperature."
        },
    )
    absolute_temperature_floor: float = field(
        default=0.05,
        metadata={"help": "A named temperature below this (0: 'no randomness') is asked as this value in log space."},
    )
    top_p_absolute_weight: float = field(
        default=0.0, metadata={"help": "Weight of (P - target)^2 for commands naming a top-p value."}
    )

    # -- LoRA-joint mode ------------------------------------------------------------------------
    lm_loss_weight: float = field(
        default=1.0, metadata={"help": "lora_joint: weight of the language-modelling loss on the responses."}
    )
    lora_r: int = field(default=8, metadata={"help": "lora_joint: LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "lora_joint: LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "lora_joint: LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "lora_joint: names of the backbone modules that get LoRA adapters."},
    )
    lora_layers: int | None = field(
        default=None,
        metadata={
            "help": "lora_joint: put adapters on the top N decoder layers only (None: all layers). Backpropagation "
            "then stops below them, which makes a step much cheaper on CPU."
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
        if (self.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true") and (
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

    @property
    def backbone_torch_dtype(self) -> torch.dtype:
        """The ``torch.dtype`` that ``backbone_dtype`` resolves to on this machine."""
        if self.backbone_dtype == "auto":
            return torch.bfloat16 if fast_bf16_available() else torch.float32
        return getattr(torch, self.backbone_dtype)

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
        choice("autodeco_rows", AUTODECO_ROWS)
        choice("ranking_reduction", REDUCTIONS)
        choice("ranking_space", RANKING_SPACES)
        choice("backbone_dtype", BACKBONE_DTYPES)
        choice("overlong_rows", OVERLONG_ROWS)
        self._check_run_fields()
        weights = (
            "temperature_loss_weight",
            "top_p_loss_weight",
            "temperature_ranking_weight",
            "top_p_ranking_weight",
            "placebo_weight",
            "absolute_weight",
            "temperature_ratio_weight",
            "top_p_absolute_weight",
            "lm_loss_weight",
            "temperature_margin",
            "top_p_margin",
        )
        for name in weights:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("low_temperature_ratios", "high_temperature_ratios"):
            ratios = getattr(self, name)
            if not ratios or not all(isinstance(r, int | float) and math.isfinite(r) and r > 0 for r in ratios):
                raise ValueError(f"{name} must be a non-empty list of positive numbers, got {ratios!r}")
        if not all(r < 1 for r in self.low_temperature_ratios) or not all(r > 1 for r in self.high_temperature_ratios):
            raise ValueError(
                f"low_temperature_ratios must be < 1 and high_temperature_ratios > 1, got {self.low_temperature_ratios} "
                f"and {self.high_temperature_ratios}"
            )
        if not self.absolute_temperature_floor > 0:
            raise ValueError(f"absolute_temperature_floor must be > 0, got {self.absolute_temperature_floor}")
        if not 0.0 <= self.easy_token_fraction <= 1.0:
            raise ValueError(f"easy_token_fraction must be in [0, 1], got {self.easy_token_fraction}")
        if self.top_p_steepness <= 0:
            raise ValueError(f"top_p_steepness must be > 0, got {self.top_p_steepness}")
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
        if self.heads_steering_width < 0 or (self.heads_steering_width and not self.heads_context_features):
            raise ValueError(
                f"heads_steering_width must be >= 0 and needs heads_context_features=true, got {self.heads_steering_width}"
            )
        if self.heads_mlp_width < 1:
            raise ValueError(f"heads_mlp_width must be >= 1, got {self.heads_mlp_width}")
        choice("heads_context_pooling", CONTEXT_POOLINGS)
        if self.heads_context_pooling == "prompt_attention" and not self.heads_context_features:
            raise ValueError("heads_context_pooling=prompt_attention needs heads_context_features=true")
        if self.heads_context_layer < 0 or (self.heads_context_layer and self.heads_context_pooling != "prompt_attention"):
            raise ValueError(
                f"heads_context_layer must be >= 0 (0: the last hidden state) and is read by "
                f"heads_context_pooling=prompt_attention only, got {self.heads_context_layer}"
            )
        if self.heads_pool_width < 1:
            raise ValueError(f"heads_pool_width must be >= 1, got {self.heads_pool_width}")
        if not self.heads_max_temperature > 0:
            raise ValueError(f"heads_max_temperature must be > 0, got {self.heads_max_temperature}")
        if self.train_split == self.eval_split:
            raise ValueError(f"train_split and eval_split must differ, both are {self.train_split!r}")
        if self.training_mode == "lora_joint":
            if self.lora_r < 1:
                raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
            if not self.lora_alpha > 0:
                raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            if self.lora_layers is not None and self.lora_layers < 1:
                raise ValueError(f"lora_layers must be >= 1 or None, got {self.lora_layers}")
            if not self.lora_target_modules:
                raise ValueError("lora_target_modules must name at least one module for training_mode='lora_joint'")
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
