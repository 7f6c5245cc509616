"""Pickle-free checkpoints: heads, LoRA adapter, optimizer, scheduler and RNG state.

A checkpoint folder ``checkpoint-N`` is written into a hidden sibling (``.checkpoint-N.partial``) and
renamed into place once complete (:meth:`~steerdeco.training.SteeringTrainer._save_checkpoint`), so
a ``checkpoint-N`` folder is always whole; :func:`last_complete_checkpoint` also skips folders that
lack a file a resume needs (written by a killed run of an older version). Trained weights are written by :meth:`~steerdeco.AutoDecoModel.save_pretrained` (``heads.safetensors``
+ ``heads_config.json``) and, in LoRA-joint mode, peft's ``save_pretrained`` into ``adapter/``
(``adapter_model.safetensors`` + ``adapter_config.json``). Resume state (optimizer, scheduler, RNG)
is any nested structure of dicts, lists, tuples, numbers, strings and tensors, stored as one
safetensors file holding the tensors plus a JSON *skeleton* that says where each tensor goes
(:func:`save_state` / :func:`load_state`). Nothing is ever pickled, so loading runs no code.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import HEADS_CONFIG_NAME, HEADS_WEIGHTS_NAME
from ..io import atomic_write_text, atomic_write_with, read_json_file
from ..loading import ADAPTER_DIR, ADAPTER_WEIGHTS, read_adapter
from ..modeling import AutoDecoModel, read_heads
from .lora import is_peft

logger = logging.getLogger(__name__)

OPTIMIZER_STATE = "optimizer"
SCHEDULER_STATE = "scheduler"
RNG_STATE = "rng_state"
STATE_FORMAT = 1
STEERING_CONFIG_NAME = "steering_config.json"
TRAINER_STATE_NAME = "trainer_state.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
CHECKPOINT_FILES = (HEADS_WEIGHTS_NAME, HEADS_CONFIG_NAME, STEERING_CONFIG_NAME, TRAINER_STATE_NAME)
# SteeringConfig fields that may change between a run and its resumption: where things go, how often
# they are logged or saved, progress bars. Every other field must match the checkpoint's.
RESUME_FREE_FIELDS = frozenset(
    {
        "output_dir", "logging_dir", "resume_from_checkpoint", "overwrite_output_dir", "disable_tqdm", "run_name",
        "report_to", "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter",
        "save_steps", "save_strategy", "save_total_limit", "save_only_model", "save_on_each_node", "eval_steps",
        "eval_strategy", "eval_delay", "per_device_eval_batch_size", "eval_accumulation_steps", "cache_dir",
        "cache_batch_size", "final_ordering_report", "dataloader_num_workers", "dataloader_pin_memory",
        "dataloader_persistent_workers", "dataloader_prefetch_factor", "local_rank", "ddp_timeout",
        "max_eval_groups", "skip_memory_metrics", "log_level", "log_level_replica", "log_on_each_node",
    }
)  # fmt: skip


# -- nested state <-> (tensors, JSON) -------------------------------------------------------------
def flatten_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into ``(tensors, skeleton)``: the skeleton is JSON-serialisable.

    Dicts keep their key types (int keys stay ints), tuples stay tuples, numpy arrays come back as
    numpy arrays of the same dtype.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "ui" else value.copy())
            return {"__ndarray__": path, "dtype": str(value.dtype)}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if not isinstance(key, str | int) or isinstance(key, bool):
                    raise TypeError(f"cannot store a dict key of type {type(key).__name__} at {path!r}")
                items.append([key, encode(item, f"{path}.{key}")])
            return {"__dict__": items}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(item, f"{path}.{i}") for i, item in enumerate(value)]}
        if isinstance(value, list):
            return [encode(item, f"{path}.{i}") for i, item in enumerate(value)]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"cannot store a value of type {type(value).__name__} at {path!r} without pickle")

    return tensors, encode(obj, "state")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(item) for item in value]
        if isinstance(value, dict):
            if "__tensor__" in value:
                return tensors[value["__tensor__"]]
            if "__ndarray__" in value:
                return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
            if "__tuple__" in value:
                return tuple(decode(item) for item in value["__tuple__"])
            if "__dict__" in value:
                return {key: decode(item) for key, item in value["__dict__"]}
            raise ValueError(f"unknown entry in a state skeleton: {sorted(value)}")
        return value

    return decode(skeleton)


def save_state(directory: str | os.PathLike, name: str, obj: Any) -> None:
    """Write ``obj`` as ``NAME.safetensors`` (tensors) + ``NAME.json`` (skeleton), atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten_state(obj)
    atomic_write_with(directory / f"{name}.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / f"{name}.json", json.dumps({"format": STATE_FORMAT, "state": skeleton}) + "\n")


def has_state(directory: str | os.PathLike, name: str) -> bool:
    """Whether ``directory`` holds both files :func:`save_state` writes for ``name``."""
    directory = Path(directory)
    return (directory / f"{name}.json").is_file() and (directory / f"{name}.safetensors").is_file()


def load_state(directory: str | os.PathLike, name: str) -> Any:
    """Read what :func:`save_state` wrote.

    Raises:
        ValueError: an unreadable or truncated file (named in the message).
    """
    directory = Path(directory)
    index = read_json_file(directory / f"{name}.json", "checkpoint file")
    if not isinstance(index, dict) or index.get("format") != STATE_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{directory / name}.json has state format {found}, expected {STATE_FORMAT}")
    tensors_file = directory / f"{name}.safetensors"
    try:
        tensors = load_file(str(tensors_file))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"checkpoint file {tensors_file} is not a readable safetensors file ({error}); resume from an earlier "
            "checkpoint (--resume_from_checkpoint DIR) or start afresh"
        ) from error
    try:
        return unflatten_state(index["state"], tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"checkpoint files {directory / name}.json/.safetensors do not match ({error})") from error


# -- checkpoint folders ---------------------------------------------------------------------------
def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a ``checkpoint-N`` folder name, else None."""
    match = CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def missing_checkpoint_files(path: str | os.PathLike) -> list[str]:
    """The files of :data:`CHECKPOINT_FILES` that ``path`` lacks (all of them when it is no folder)."""
    path = Path(path)
    return [name for name in CHECKPOINT_FILES if not (path / name).is_file()]


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the largest N that holds every file a resume needs."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted((step, p) for p in output_dir.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None)
    for _, path in reversed(found):
        missing = missing_checkpoint_files(path)
        if not missing:
            return path
        logger.warning("skipping the incomplete checkpoint %s (no %s)", path, ", ".join(missing))
    return None


def config_differences(saved: dict, current: dict) -> list[str]:
    """``field: checkpoint value -> this run's value`` for every field both have that must match on resume."""
    return [
        f"{name}: {saved[name]!r} -> {current[name]!r}"
        for name in sorted(set(saved) & set(current) - RESUME_FREE_FIELDS)
        if saved[name] != current[name]
    ]


# -- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Python, numpy, torch CPU (and CUDA, when present) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.random.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.random.set_rng_state_all(state["cuda"])


# -- weights --------------------------------------------------------------------------------------
def _peft_model(model: AutoDecoModel):
    return model.base_model if is_peft(model.base_model) else None


def save_trained(model: AutoDecoModel, directory: str | os.PathLike, state_dict: dict | None = None) -> None:
    """Write the heads and, when the base model is a peft model, its adapter (``adapter/``).

    ``state_dict``: the whole model's full state dict, keys relative to ``model`` (``heads.*``,
    ``base_model.*``), as :func:`full_state_dict` gathers it from sharded parameters; None: the
    model's own (unsharded) parameters.
    """
    directory = Path(directory)
    heads = None if state_dict is None else _under(state_dict, "heads.")
    model.save_pretrained(directory, overwrite=True, state_dict=heads)
    peft_model = _peft_model(model)
    if peft_model is not None:
        kwargs = {} if state_dict is None else {"state_dict": _under(state_dict, "base_model.")}
        peft_model.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True, **kwargs)


def _under(state_dict: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


# -- sharded (FSDP2) state ------------------------------------------------------------------------
def is_sharded(module: torch.nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (sharded by FSDP2's ``fully_shard``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of an FSDP2 ``module``, on CPU, on rank 0 (empty elsewhere).

    A collective: every process must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(module: torch.nn.Module, optimizer) -> dict:
    """The optimizer state of an FSDP2 ``module`` with full tensors keyed by parameter name, on rank 0.

    A collective: every process must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_trained_into(model: AutoDecoModel, directory: str | os.PathLike) -> None:
    """Load heads (and the adapter, for a peft base model) saved by :func:`save_trained` into ``model``.

    Raises:
        ValueError: the folder holds no heads, or no adapter while ``model`` has one.
    """
    directory = Path(directory)
    if not (directory / HEADS_WEIGHTS_NAME).is_file():
        raise ValueError(f"{directory} is not a steerdeco checkpoint: {HEADS_WEIGHTS_NAME} is missing")
    try:
        config, state = read_heads(directory, model.base_model, source=f"checkpoint {directory}")
    except FileNotFoundError as error:
        raise ValueError(str(error)) from error
    if config != model.heads_config:
        raise ValueError(f"checkpoint {directory} holds heads of another config ({config}) than the model's "
                         f"({model.heads_config}); resume with the heads settings it was trained with")
    model.heads.load_state_dict(state)
    peft_model = _peft_model(model)
    if peft_model is not None:
        adapter = directory / ADAPTER_DIR / ADAPTER_WEIGHTS
        if not adapter.is_file():
            raise ValueError(f"{directory} has no LoRA adapter ({adapter} is missing) but the model is a peft model")
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(peft_model, read_adapter(adapter))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{adapter} does not match the model's adapter: unexpected {result.unexpected_keys}")
