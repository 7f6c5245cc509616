"""The model an analysis scores: the heads folder (or its latest checkpoint), the base model they name, heads and adapter attached, the device."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from steerdeco.errors import AnalysisError

logger = logging.getLogger(__name__)


def _checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def resolve_heads(path: str | os.PathLike, flag: str = "--heads") -> Path:
    """The folder holding ``heads.safetensors``: ``path`` itself, else its latest ``checkpoint-N`` (``flag``: named in errors).

    Raises:
        AnalysisError: no such folder, or no heads in it.
    """
    from steerdeco.config import HEADS_CONFIG_NAME, HEADS_WEIGHTS_NAME

    path = Path(path)
    if not path.is_dir():
        raise AnalysisError(f"{flag} {path}: no such folder (give a training output folder or a heads checkpoint)")
    if (path / HEADS_WEIGHTS_NAME).is_file():
        if not (path / HEADS_CONFIG_NAME).is_file():
            raise AnalysisError(f"{flag} {path}: {HEADS_CONFIG_NAME} is missing next to {HEADS_WEIGHTS_NAME}")
        return path
    checkpoints = sorted((p for p in path.iterdir() if _checkpoint_step(p) >= 0 and (p / HEADS_WEIGHTS_NAME).is_file()),
                         key=_checkpoint_step)
    if checkpoints:
        logger.warning("%s %s has no %s of its own; using its latest checkpoint %s", flag, path, HEADS_WEIGHTS_NAME,
                       checkpoints[-1].name)
        return checkpoints[-1]
    raise AnalysisError(f"{flag} {path}: no {HEADS_WEIGHTS_NAME} there nor in a checkpoint-N subfolder; give a training "
                        "output folder or a folder saved by AutoDecoModel.save_pretrained")


def heads_config(heads_dir: Path):
    """The :class:`~steerdeco.config.HeadsConfig` saved in ``heads_dir``; an unreadable one is an :class:`AnalysisError`."""
    from steerdeco.config import HEADS_CONFIG_NAME, HeadsConfig

    try:
        return HeadsConfig.from_json_file(heads_dir / HEADS_CONFIG_NAME)
    except (FileNotFoundError, ValueError) as error:
        raise AnalysisError(f"--heads {heads_dir}: {error}") from error


def default_model(heads_dir: Path) -> str:
    """The base model the heads config names (the embedded model's cache folder -> ``embedded``); else ``embedded``."""
    name = heads_config(heads_dir).base_model
    if not name:
        logger.info("the heads config names no base model; using the embedded model (pass --model to choose)")
        return "embedded"
    from steerdeco.embedded import embedded_model_dir

    if Path(name) == embedded_model_dir():
        return "embedded"
    return str(name)


def load_base(name: str, from_heads: bool = False, dtype=None):
    """``(model, tokenizer)`` of ``embedded``, ``tiny`` or a local folder (:func:`steerdeco.training.load_base_model`),
    in ``dtype`` (a ``torch.dtype``; None: the loader's default)."""
    from steerdeco.loading import load_base_model

    if name not in ("embedded", "tiny") and not Path(name).is_dir():
        where = f"the heads config names base model {name!r}" if from_heads else f"--model {name!r}"
        raise AnalysisError(f"{where}, which is not 'embedded', 'tiny' or a local model folder; pass --model")
    try:
        return load_base_model(name) if dtype is None else load_base_model(name, dtype)
    except (OSError, ValueError) as error:
        raise AnalysisError(f"--model {name!r} could not be loaded: {error}") from error


def check_hidden_size(heads_dir: Path, base, model_name: str, flag: str = "--heads") -> None:
    """Refuse heads that do not fit the base model: hidden size, then every check of
    :func:`steerdeco.modeling.read_heads` (config, tensors, base-model fingerprint), before any expensive step
    (``flag``: named in errors)."""
    from steerdeco.modeling import base_hidden_size, read_heads

    expected = heads_config(heads_dir).hidden_size
    actual = base_hidden_size(base)
    if expected != actual:
        raise AnalysisError(f"{flag} {heads_dir} expects hidden size {expected} but --model {model_name!r} has hidden size "
                            f"{actual}: pass the base model the heads were trained on")
    try:  # the one validating loader: config, tensors, base-model fingerprint
        read_heads(heads_dir, base, source=f"{flag} {heads_dir}")
    except (FileNotFoundError, ValueError) as error:
        raise AnalysisError(f"{error} (--model {model_name!r})") from None


def attach_heads(heads_dir: Path, base, model_name: str, flag: str = "--heads"):
    """The trained model: heads (and the LoRA adapter, if any) of ``heads_dir`` on ``base`` (``flag``: named in errors)."""
    from steerdeco.loading import load_trained_model

    check_hidden_size(heads_dir, base, model_name, flag)
    try:
        model = load_trained_model(heads_dir, base)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as error:
        raise AnalysisError(f"{flag} {heads_dir} does not fit --model {model_name!r}: {error}") from error
    return model.eval()


def load_heads_model(heads: str | os.PathLike, model: str | None = None, device: str = "auto", dtype=None):
    """``(trained model, tokenizer)`` for the one-model tools (``analysis.sample``, ``analysis.wordings``): the heads
    of ``--heads`` (a run or checkpoint folder) on ``--model`` (default: the base model their config names), on
    ``device``, the base model in ``dtype`` (None: the loader's default). Every failure is an :class:`AnalysisError`
    naming the flag; the device is checked before any model is loaded."""
    heads_dir = resolve_heads(heads)
    model_name = model or default_model(heads_dir)
    device = resolve_device(device)
    base, tokenizer = load_base(model_name, from_heads=model is None, dtype=dtype)
    return attach_heads(heads_dir, base, model_name).to(device), tokenizer


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a CUDA device is an :class:`AnalysisError`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("--device cuda: no CUDA device is available")
    return device
