"""The one loader of a base model, its trained heads and its LoRA adapter (offline, validated).

:func:`load_base_model` opens ``embedded`` (SmolLM2-135M-Instruct), ``tiny`` (a random test model)
or a local folder; :func:`load_trained_model` attaches what a training run saved in a folder: the
heads, read once through :func:`steerdeco.modeling.read_heads` (hidden size, config, tensors and
base-model fingerprint checked every time) and, when ``adapter/`` is present, the LoRA adapter.
Training, analysis and the demo all load through here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .modeling import AutoDecoModel, read_heads

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TINY = "tiny"
EMBEDDED = "embedded"


def load_base_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """``(causal LM, tokenizer)`` for ``'embedded'``, ``'tiny'`` or a local folder (offline, eval mode, ``dtype``).

    Raises:
        ValueError: ``name_or_path`` is none of the three (nothing is downloaded).
    """
    if name_or_path == EMBEDDED:
        from .embedded import load_embedded_model

        return load_embedded_model(dtype=dtype)
    if name_or_path == TINY:
        from .testing import tiny_model_and_tokenizer

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


def read_adapter(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA adapter file; a ValueError naming the file when it is unreadable or truncated."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"LoRA adapter {path} is not a readable safetensors file ({error}); re-save it") from error


def load_trained_model(
    directory: str | os.PathLike, base_model: torch.nn.Module, source: str | None = None
) -> AutoDecoModel:
    """The model a training run saved in ``directory``, on ``base_model`` (heads; plus adapter if present).

    The heads are read and checked against ``base_model`` before it is touched; for a LoRA-joint run
    the adapter in ``DIRECTORY/adapter`` is then attached with peft. The result (frozen base, heads
    in float32 on the base's device) is ready for ``generate`` and evaluation.

    Raises:
        FileNotFoundError: no heads folder or file.
        ValueError: heads that do not fit ``base_model`` or are corrupt, an unreadable adapter; the
            message names ``source`` (default: the folder).
    """
    directory = Path(directory)
    config, state = read_heads(directory, base_model, source=source)
    adapter = directory / ADAPTER_DIR
    if (adapter / ADAPTER_WEIGHTS).is_file():
        from peft import PeftModel

        read_adapter(adapter / ADAPTER_WEIGHTS)  # a truncated file: an error naming it, not peft's traceback
        base_model = PeftModel.from_pretrained(base_model, str(adapter))
        base_model.eval()
    model = AutoDecoModel(base_model, heads_config=config)
    model.heads.load_state_dict(state)
    return model
