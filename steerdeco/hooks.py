"""Forward hooks on the base model, always removed in ``finally``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


def output_embeddings(model: nn.Module) -> nn.Module:
    """The module that maps the last hidden state to logits (``lm_head``)."""
    getter = getattr(model, "get_output_embeddings", None)
    module = getter() if callable(getter) else None
    if module is None:
        raise ValueError(
            f"{type(model).__name__} has no output embeddings (get_output_embeddings() returned None); "
            "steerdeco needs a causal LM with an lm_head"
        )
    return module


@contextlib.contextmanager
def on_lm_head(model: nn.Module, callback: Callable[[torch.Tensor, torch.Tensor], None]) -> Iterator[None]:
    """Call ``callback(hidden [B, L, H], logits [B, L, V])`` after every lm_head forward of ``model``."""

    def hook(_module, inputs, output):
        callback(inputs[0], output)

    handle = output_embeddings(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
