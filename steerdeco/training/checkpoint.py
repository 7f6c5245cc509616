"""Pickle-free checkpoints: heads, LoRA adapter, optimizer, scheduler and RNG state.

Trained weights are written by :meth:`~steerdeco.AutoDecoModel.save_pretrained` (``heads.safetensors``
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import HEADS_WEIGHTS_NAME
from ..io import atomic_write_text, atomic_write_with
from ..modeling import AutoDecoModel

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_STATE = "optimizer"
SCHEDULER_STATE = "scheduler"
RNG_STATE = "rng_state"
STATE_FORMAT = 1


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
    directory = Path(directory)
    return (directory / f"{name}.json").is_file() and (directory / f"{name}.safetensors").is_file()


def load_state(directory: str | os.PathLike, name: str) -> Any:
    """Read what :func:`save_state` wrote."""
    directory = Path(directory)
    index = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    if index.get("format") != STATE_FORMAT:
        raise ValueError(f"{directory / name}.json has state format {index.get('format')}, expected {STATE_FORMAT}")
    return unflatten_state(index["state"], load_file(str(directory / f"{name}.safetensors")))


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
    from peft import PeftModel

    return model.base_model if isinstance(model.base_model, PeftModel) else None


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
    weights = directory / HEADS_WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"{directory} is not a steerdeco checkpoint: {HEADS_WEIGHTS_NAME} is missing")
    model.heads.load_state_dict(load_file(str(weights)))
    peft_model = _peft_model(model)
    if peft_model is not None:
        adapter = directory / ADAPTER_DIR / ADAPTER_WEIGHTS
        if not adapter.is_file():
            raise ValueError(f"{directory} has no LoRA adapter ({adapter} is missing) but the model is a peft model")
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(peft_model, load_file(str(adapter)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{adapter} does not match the model's adapter: unexpected {result.unexpected_keys}")


def load_trained_model(directory: str | os.PathLike, base_model) -> AutoDecoModel:
    """The model a training run saved in ``directory``, on ``base_model`` (heads; plus adapter if present).

    For a LoRA-joint run the adapter in ``DIRECTORY/adapter`` is attached to ``base_model`` with peft
    first; the result is ready for ``generate`` and evaluation.
    """
    directory = Path(directory)
    adapter = directory / ADAPTER_DIR
    if (adapter / ADAPTER_WEIGHTS).is_file():
        from peft import PeftModel

        base_model = PeftModel.from_pretrained(base_model, str(adapter))
        base_model.eval()
    return AutoDecoModel.from_pretrained(directory, base_model)
