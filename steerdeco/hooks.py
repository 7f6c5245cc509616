"""Forward hooks on the base model, always removed in ``finally``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


def _submodule(model: nn.Module, getter_name: str, need: str) -> nn.Module:
    getter = getattr(model, getter_name, None)
    module = getter() if callable(getter) else None
    if module is None:
        raise ValueError(f"{type(model).__name__}.{getter_name}() returned no module; {need}")
    return module


def output_embeddings(model: nn.Module) -> nn.Module:
    """The module that maps the last hidden state to logits (``lm_head``)."""
    return _submodule(model, "get_output_embeddings", "steerdeco needs a causal LM with an lm_head")


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


@contextlib.contextmanager
def contiguous_lm_head_input(model: nn.Module) -> Iterator[None]:
    """Hand the lm_head a contiguous input (generation gives it the slice ``hidden[:, -1:]``).

    torch's matmul multiplies a non-contiguous ``[B, 1, H]`` slice with a weight that does not require
    grad (a frozen backbone) as a batched product that first copies the whole ``[V, H]`` matrix once per
    row; a contiguous input is folded into one ``[B, H] x [H, V]`` product instead.
    """

    def hook(_module, args):
        return (args[0].contiguous(), *args[1:]) if args and not args[0].is_contiguous() else None

    handle = output_embeddings(model).register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def decoder(model: nn.Module) -> nn.Module:
    """The base model's decoder stack (``get_decoder()``), whose output is the last hidden state of every position."""
    return _submodule(
        model, "get_decoder", "heads with context_features need a causal LM whose decoder returns the last hidden state"
    )


@contextlib.contextmanager
def on_decoder_output(
    model: nn.Module, callback: Callable[[torch.Tensor, torch.Tensor | None], None]
) -> Iterator[None]:
    """Call ``callback(last_hidden_state [B, L, H], attention_mask [B, T] or None)`` after every decoder forward.

    ``L`` is the positions this forward computed, ``T >= L`` the positions the 2D ``attention_mask``
    argument covers (with a KV cache: every position so far); None when the decoder got no 2D mask.
    Unlike the lm_head, the decoder sees every prompt position during generation's prefill.
    """

    def hook(_module, _args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        mask = kwargs.get("attention_mask")
        callback(hidden, mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)

    handle = decoder(model).register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def on_decoder_input_ids(model: nn.Module, callback: Callable[[torch.Tensor | None], None]) -> Iterator[None]:
    """Call ``callback(input_ids [B, L] or None)`` before every decoder forward (None: it got embeddings instead)."""

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        callback(ids if isinstance(ids, torch.Tensor) else None)

    handle = decoder(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def decoder_layer(model: nn.Module, number: int) -> nn.Module:
    """Decoder layer ``number`` (1 = the first) of the base model's decoder stack."""
    layers = getattr(decoder(model), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}'s decoder has no `layers` list: context_layer needs one")
    if not 1 <= number <= len(layers):
        raise ValueError(f"context_layer {number} is not a decoder layer of this model (it has layers 1..{len(layers)})")
    return layers[number - 1]


@contextlib.contextmanager
def on_context_states(
    model: nn.Module, layer: int, callback: Callable[[torch.Tensor, torch.Tensor | None], None]
) -> Iterator[None]:
    """Call ``callback(states [B, L, H], attention_mask [B, T] or None)`` after every decoder forward.

    ``states`` are the output of decoder layer ``layer`` (1 = the first) for the ``L`` positions the
    forward computed, or with ``layer=0`` the last hidden state; ``attention_mask`` as in
    :func:`on_decoder_output`.
    """
    if layer == 0:
        with on_decoder_output(model, callback):
            yield
        return
    captured: list[torch.Tensor] = []

    def layer_hook(_module, _args, output):
        captured[:] = [output[0] if isinstance(output, tuple) else output]

    def decoder_done(_hidden: torch.Tensor, mask: torch.Tensor | None) -> None:
        callback(captured[0], mask)

    handle = decoder_layer(model, layer).register_forward_hook(layer_hook)
    try:
        with on_decoder_output(model, decoder_done):
            yield
    finally:
        handle.remove()
