"""The one place LoRA is added: its settings (fields of ``SteeringConfig``) and the backbone it wraps.

:func:`prepare_backbone` is the only caller of peft's ``get_peft_model``: it gives the base model
the shape the training mode wants (LoRA adapters for ``lora_joint``, added when missing; frozen
for ``head_only``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class LoraArguments:
    """The LoRA fields of :class:`~steerdeco.training.SteeringConfig` (read in ``lora_joint`` mode only)."""

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

    def _check_lora_fields(self) -> None:
        """Refuse LoRA settings peft would reject late (called for ``training_mode='lora_joint'``)."""
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


def lora_config(args: LoraArguments, base_model: nn.Module | None = None):
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


def is_peft(module: nn.Module) -> bool:
    """Whether ``module`` is a peft model (carries LoRA adapters)."""
    from peft import PeftModel

    return isinstance(module, PeftModel)


def prepare_backbone(base_model: nn.Module, args) -> nn.Module:
    """``base_model`` as ``args.training_mode`` trains it: wrapped with LoRA adapters for ``lora_joint`` (unless it
    has them already; peft freezes everything but the adapters), frozen for ``head_only``."""
    if args.training_mode == "lora_joint":
        if is_peft(base_model):
            return base_model
        from peft import get_peft_model

        return get_peft_model(base_model, lora_config(args, base_model))
    base_model.requires_grad_(False)
    return base_model
