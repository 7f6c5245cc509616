"""``AutoDecoModel``: a causal LM plus AutoDeco's temperature and top-p heads.

The wrapper holds a reference to the base model (no copy of its weights). Its forward returns the
base logits and a temperature and top-p for every position (and the AutoDeco losses when labels
are given); its ``generate`` samples every token with that token's predicted T and P
(:mod:`steerdeco.decoding`). ``save_pretrained`` writes the heads only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import HEADS_CONFIG_NAME, HEADS_WEIGHTS_NAME, HeadsConfig
from .decoding import (
    GREEDY_BELOW_TEMPERATURE,
    DecodingTrace,
    DynamicTemperatureTopP,
    dynamic_decoding,
    generated_mask,
)
from .heads import AutoDecoHeads, running_context
from .hooks import decoder_layer, on_context_states, on_lm_head
from .io import atomic_write_text, atomic_write_with
from .losses import AutoDecoLossConfig, autodeco_losses, exact_slots, next_token_targets

logger = logging.getLogger(__name__)


@dataclass
class AutoDecoOutput:
    """Forward output. Shapes: logits ``[B, L, V]``, temperature/top_p ``[B, L]``, hidden ``[B, L, H]``."""

    logits: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    hidden_states: torch.Tensor
    loss: torch.Tensor | None = None
    temperature_loss: torch.Tensor | None = None
    top_p_loss: torch.Tensor | None = None


def base_hidden_size(base_model: nn.Module) -> int:
    """``hidden_size`` of the base model's text config (the width ``H`` of the heads' input).

    Raises:
        ValueError: the config names none.
    """
    config = base_model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text_config, "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"cannot read hidden_size from the config of {type(base_model).__name__}")
    return size


FINGERPRINT_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def base_model_fingerprint(base_model: nn.Module) -> str:
    """A short digest of the base model's architecture (:data:`FINGERPRINT_FIELDS` of its text config).

    Two models share it when they have the same shape and vocabulary, whatever folder they were loaded
    from; heads saved with one fingerprint are refused on a base model with another.
    """
    config = base_model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    values = {name: getattr(text_config, name, None) for name in FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_heads_fit(config: HeadsConfig, base_model: nn.Module, source: str = "the heads") -> None:
    """Refuse heads whose config names another base model: hidden size, then the architecture fingerprint.

    Raises:
        ValueError: naming ``source``, both models and what to do.
    """
    hidden_size = base_hidden_size(base_model)
    name = getattr(base_model.config, "_name_or_path", None) or type(base_model).__name__
    trained_on = f" (trained on {config.base_model!r})" if config.base_model else ""
    if config.hidden_size != hidden_size:
        raise ValueError(
            f"{source}{trained_on} expect hidden size {config.hidden_size} but the base model {name!r} has hidden "
            f"size {hidden_size}: load heads trained on this base model"
        )
    if config.context_layer:
        try:
            decoder_layer(base_model, config.context_layer)
        except ValueError as error:
            raise ValueError(f"{source}{trained_on}: {error}") from None
    if config.base_model_fingerprint is not None:
        fingerprint = base_model_fingerprint(base_model)
        if fingerprint != config.base_model_fingerprint:
            raise ValueError(
                f"{source}{trained_on} were trained on a base model with another architecture (fingerprint "
                f"{config.base_model_fingerprint}) than {name!r} ({fingerprint}): use the base model the heads "
                "were trained on"
            )


def read_heads(
    heads_directory: str | os.PathLike, base_model: nn.Module | None = None, source: str | None = None
) -> tuple[HeadsConfig, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of heads saved by :meth:`AutoDecoModel.save_pretrained`, fully checked.

    The one loader of saved heads: the folder and both files must exist and be readable, the config
    valid, the tensors exactly those of the config (names and shapes) and, given ``base_model``, the
    heads must fit it (:func:`check_heads_fit`).

    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
        ValueError: anything else; the message names ``source`` (default: the folder) and the file.
    """
    directory = Path(heads_directory)
    source = source or f"heads {directory}"
    if not directory.is_dir():
        raise FileNotFoundError(f"{source}: heads folder {directory} does not exist")
    weights = directory / HEADS_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{source}: {weights} is missing: this is not a steerdeco heads checkpoint")
    config = HeadsConfig.from_json_file(directory / HEADS_CONFIG_NAME)
    if base_model is not None:
        check_heads_fit(config, base_model, source)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{source}: {weights} is not a readable safetensors file ({error}); re-save the heads") from error
    expected = AutoDecoHeads(config).state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: {weights} does not match its heads config: missing {missing}, unexpected {unexpected}")
    wrong = [name for name, tensor in state.items() if tensor.shape != expected[name].shape]
    if wrong:
        shapes = ", ".join(f"{n} {tuple(state[n].shape)} instead of {tuple(expected[n].shape)}" for n in wrong)
        raise ValueError(f"{source}: {weights} has tensors of the wrong shape for its heads config: {shapes}")
    return config, state


class AutoDecoModel(nn.Module):
    """A causal LM with AutoDeco heads.

    Args:
        base_model: any ``AutoModelForCausalLM`` (or a peft model around one). It is referenced, not
            copied.
        heads_config: shape of the heads; ``hidden_size`` must match the base model. Default: built from
            the base model's config.
        freeze_base: set ``requires_grad=False`` on the base model (AutoDeco trains the heads only).
        loss_config: hyper-parameters of the AutoDeco losses used when ``labels`` are given.
    """

    def __init__(
        self,
        base_model: nn.Module,
        heads_config: HeadsConfig | None = None,
        freeze_base: bool = True,
        loss_config: AutoDecoLossConfig | None = None,
    ):
        super().__init__()
        hidden_size = base_hidden_size(base_model)
        if heads_config is None:
            heads_config = HeadsConfig(
                hidden_size=hidden_size, base_model=getattr(base_model.config, "_name_or_path", None) or None
            )
        check_heads_fit(heads_config, base_model)
        if heads_config.base_model_fingerprint is None:
            heads_config = dataclasses.replace(heads_config, base_model_fingerprint=base_model_fingerprint(base_model))
        self.base_model = base_model
        self.heads_config = heads_config
        self.loss_config = loss_config or AutoDecoLossConfig()
        device = next(base_model.parameters()).device
        self.heads = AutoDecoHeads(heads_config).to(device=device, dtype=torch.float32)
        if freeze_base:
            base_model.requires_grad_(False)

    # -- conveniences ---------------------------------------------------------------------------
    @property
    def config(self):
        return self.base_model.config

    @property
    def generation_config(self):
        return self.base_model.generation_config

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    @property
    def temperature_head(self) -> nn.Module:
        return self.heads.temperature_head

    @property
    def top_p_head(self) -> nn.Module:
        return self.heads.top_p_head

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_generator: torch.Generator | None = None,
        prompt_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AutoDecoOutput:
        """Run the base model and the heads on every position.

        With ``context_features`` heads, the running context covers the positions of ``input_ids``
        (pass the whole sequence, not a continuation after ``past_key_values``; generation keeps its own
        running context).

        Args:
            labels: optional ``[B, L]`` HF-style labels (aligned with ``input_ids``, ``-100`` ignored);
                position ``t``'s T and P are scored on ``labels[:, t + 1]``.
            loss_generator: random source of the easy-token draw.
            prompt_mask: ``[B, L]`` the prompt's positions, for heads with ``prompt_attention`` (they pool
                the prompt once and give every position that context, as generation does). None: every
                position of ``attention_mask`` counts as prompt (right for a prompt alone).
            kwargs: passed to the base model (``position_ids``, ``past_key_values``, ...).
        """
        captured: list[torch.Tensor] = []
        prompt_states: list[torch.Tensor] = []
        with contextlib.ExitStack() as hooks:
            hooks.enter_context(on_lm_head(self.base_model, lambda hidden, _logits: captured.append(hidden)))
            if self.heads.prompt_pool is not None:
                layer = self.heads_config.context_layer
                hooks.enter_context(on_context_states(self.base_model, layer, lambda h, _m: prompt_states.append(h)))
            base_out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = captured[-1]
        logits = base_out.logits
        context = None
        if self.heads.prompt_pool is not None:
            states = prompt_states[-1]
            mask = prompt_mask if prompt_mask is not None else attention_mask
            mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if mask is None else mask
            ids = None if input_ids is None else input_ids[:, -states.shape[1] :]  # heads with named_values or negation_scope read them
            pooled = self.heads.pool_prompt(states, mask[:, -states.shape[1] :], ids)
            context = pooled.unsqueeze(1).expand(-1, hidden.shape[1], -1)
        elif self.heads_config.context_features:
            mask = None if attention_mask is None else attention_mask[:, -hidden.shape[1] :]
            context, _ = running_context(hidden, mask)
        temperature, top_p = self.heads(hidden, logits.detach(), context=context)
        out = AutoDecoOutput(logits=logits, temperature=temperature, top_p=top_p, hidden_states=hidden)
        if labels is not None:
            out.temperature_loss, out.top_p_loss = self.compute_losses(
                logits, temperature, top_p, labels, generator=loss_generator
            )
            config = self.loss_config
            out.loss = config.temperature_weight * out.temperature_loss + config.top_p_weight * out.top_p_loss
        return out

    def compute_losses(self, logits, temperature, top_p, labels, generator=None):
        """AutoDeco losses of ``[B, L, ...]`` predictions against HF-style ``labels [B, L]``."""
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels {tuple(labels.shape)} must match the inputs {tuple(logits.shape[:2])}")
        targets, valid = next_token_targets(labels)
        slots = exact_slots(logits[:, :-1][valid].detach(), targets[valid])
        return autodeco_losses(
            slots, temperature[:, :-1][valid], top_p[:, :-1][valid], self.loss_config, generator=generator
        )

    # -- generation -----------------------------------------------------------------------------
    def _split_sampling_kwargs(self, kwargs: dict) -> tuple[dict, dict]:
        """Take temperature, top_p and top_k out of generate's arguments (see :mod:`steerdeco.decoding`)."""
        generation_config = kwargs.get("generation_config")
        defaults = self.base_model.generation_config
        if kwargs.get("num_beams", getattr(generation_config, "num_beams", None) or 1) > 1:
            raise ValueError("dynamic decoding supports greedy decoding and sampling, not beam search (num_beams > 1)")

        def resolve(name, fallback):
            if kwargs.get(name) is not None:
                return kwargs.pop(name)
            kwargs.pop(name, None)
            for source in (generation_config, defaults) if name in ("do_sample", "top_k") else (generation_config,):
                if source is not None and getattr(source, name, None) is not None:
                    return getattr(source, name)
            return fallback

        do_sample = bool(resolve("do_sample", False))
        sampling = {
            "temperature_scale": resolve("temperature", 1.0),
            "top_p_scale": resolve("top_p", 1.0),
            "top_k": resolve("top_k", 50),
            "greedy_below": kwargs.pop("greedy_below", GREEDY_BELOW_TEMPERATURE),
        }
        if generation_config is not None:
            generation_config = generation_config.__class__.from_dict(generation_config.to_dict())
            generation_config.temperature, generation_config.top_p = None, None
            kwargs["generation_config"] = generation_config
        kwargs["do_sample"] = do_sample
        if do_sample:  # the processor does temperature, top-k and top-p itself
            kwargs.update(temperature=1.0, top_p=1.0, top_k=0)
        else:
            kwargs["top_k"] = sampling["top_k"]
        return kwargs, (sampling if do_sample else None)

    def generate_with_trace(self, **kwargs) -> DecodingTrace:
        """``generate`` that also returns the predicted T and P of every generated token.

        Takes the arguments of ``transformers``' ``generate`` (``input_ids``, ``attention_mask``,
        ``do_sample``, ``max_new_tokens``, ``temperature``, ``top_p``, ...). With ``do_sample=True``
        each token is sampled with its own predicted T and P (times the user's ``temperature`` and
        ``top_p``, see :mod:`steerdeco.decoding`); a token whose used T is below ``greedy_below``
        (default :data:`~steerdeco.decoding.GREEDY_BELOW_TEMPERATURE`, 0: never) is decoded greedily;
        greedy decoding stays greedy (the trace still records what the heads predicted).
        """
        if kwargs.get("return_dict_in_generate"):
            raise ValueError("generate_with_trace returns a DecodingTrace; do not pass return_dict_in_generate")
        kwargs, sampling = self._split_sampling_kwargs(dict(kwargs))
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("generate_with_trace needs input_ids")
        prompt_length = input_ids.shape[1]
        with dynamic_decoding(self) as record:
            if sampling is not None:
                processor = DynamicTemperatureTopP(record, **sampling)
                user_processors = list(kwargs.pop("logits_processor", None) or [])
                kwargs["logits_processor"] = [*user_processors, processor]
            sequences = self.base_model.generate(**kwargs)
        steps = sequences.shape[1] - prompt_length
        temperature = torch.stack(record.temperature[:steps], dim=1) if steps else sequences.new_zeros(
            (sequences.shape[0], 0), dtype=torch.float32
        )
        top_p = torch.stack(record.top_p[:steps], dim=1) if steps else torch.zeros_like(temperature)
        eos = kwargs.get("eos_token_id", self.base_model.generation_config.eos_token_id)
        return DecodingTrace(
            sequences=sequences,
            temperature=temperature,
            top_p=top_p,
            mask=generated_mask(sequences[:, prompt_length:], eos),
            prompt_length=prompt_length,
            temperature_scale=float(sampling["temperature_scale"]) if sampling else 1.0,
            top_p_scale=float(sampling["top_p_scale"]) if sampling else 1.0,
        )

    def generate(self, **kwargs) -> torch.Tensor:
        """Drop-in ``generate``: every sampled token uses its own predicted T and P. Returns sequences."""
        return self.generate_with_trace(**kwargs).sequences

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | os.PathLike, overwrite: bool = False, state_dict: dict | None = None
    ) -> Path:
        """Write the heads (``heads.safetensors``) and ``heads_config.json``; never the base model.

        Refuses to replace existing head files unless ``overwrite=True``. Each file is written atomically.
        ``state_dict``: the heads' weights to write instead of ``self.heads.state_dict()`` (e.g. gathered
        from parameters sharded by FSDP).
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights, config_path = directory / HEADS_WEIGHTS_NAME, directory / HEADS_CONFIG_NAME
        existing = [str(p) for p in (weights, config_path) if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{existing} already exist; pass overwrite=True to replace them")
        state = self.heads.state_dict() if state_dict is None else state_dict
        expected = set(self.heads.state_dict())
        if set(state) != expected:
            raise ValueError(f"heads state_dict keys {sorted(state)} do not match the heads' {sorted(expected)}")
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
        atomic_write_with(weights, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        atomic_write_text(config_path, self.heads_config.to_json_string())
        logger.info("saved heads to %s", directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, heads_directory: str | os.PathLike, base_model: nn.Module, freeze_base: bool = True
    ) -> AutoDecoModel:
        """Attach heads saved by :meth:`save_pretrained` to ``base_model``, in evaluation mode (as transformers'
        ``from_pretrained``: dropout off; a trainer switches training mode on itself).

        Raises:
            FileNotFoundError: the folder or one of its two files is missing.
            ValueError: a corrupt file, or heads trained on another base model (see :func:`read_heads`).
        """
        config, state = read_heads(heads_directory, base_model)
        model = cls(base_model, heads_config=config, freeze_base=freeze_base)
        model.heads.load_state_dict(state)
        return model.eval()
