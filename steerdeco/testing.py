"""Tiny random models with an offline-trained tokenizer, for tests and quick experiments.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in memory by the
``tokenizers`` library on a small built-in corpus, with a ChatML chat template, and the model is a
2-layer Llama or Qwen2 with hidden size 64 built from a seeded config.

    >>> from steerdeco.testing import tiny_model_and_tokenizer
    >>> model, tokenizer = tiny_model_and_tokenizer(arch="llama", seed=0)
"""

from __future__ import annotations

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_CORPUS = [
    "Write a short poem about the sea at night.",
    "Explain why the sky is blue in two sentences.",
    "What is the capital of France? The capital of France is Paris.",
    "Solve 12 times 7. The answer is 84.",
    "Please answer with as little randomness as possible.",
    "Be wildly creative and surprising in your answer.",
    "Answer in English and use a friendly tone.",
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, a small robot learned to paint the stars.",
    "List three facts about volcanoes: they erupt, they form islands, they are hot.",
    "Temperature and top-p control how random the sampling is.",
    "Give a deterministic, precise and focused answer.",
    "Let your imagination run free and explore unusual ideas.",
    "user assistant system hello thanks sure here is an answer",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } : ; , . ! ?",
]

TINY_VOCAB_SIZE = 384


def tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """Return a ``PreTrainedTokenizerFast`` (byte-level BPE, ChatML template) trained offline.

    Training is deterministic: the same corpus and vocabulary size give the same merges.
    ``pad_token`` is ``<|pad|>``, ``eos_token`` is ``<|im_end|>`` and padding is on the left, as
    batched generation wants.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 300 (256 bytes + specials)")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        padding_side="left",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(arch: str = "llama", vocab_size: int = TINY_VOCAB_SIZE, **overrides):
    """A 2-layer, hidden-64 ``LlamaConfig`` or ``Qwen2Config`` matching :func:`tiny_tokenizer`."""
    from transformers import LlamaConfig, Qwen2Config

    tokenizer_ids = {"eos_token_id": 2, "pad_token_id": 3, "bos_token_id": 1}
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        **tokenizer_ids,
    )
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"arch={arch!r} is not supported: use 'llama' or 'qwen2'")


def tiny_model(arch: str = "llama", seed: int = 0, **config_overrides):
    """A seeded random causal LM (eval mode, fp32) built from :func:`tiny_config`."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **config_overrides)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model.eval()


def tiny_model_and_tokenizer(arch: str = "llama", seed: int = 0, **config_overrides):
    """Return ``(model, tokenizer)``: :func:`tiny_model` and :func:`tiny_tokenizer`, ids consistent."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch=arch, seed=seed, **config_overrides)
    for name in ("eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name) != getattr(model.config, name):
            raise RuntimeError(f"tiny tokenizer {name}={getattr(tokenizer, name)} does not match the tiny config")
    return model, tokenizer


def save_tiny_model(folder, seed: int = 0) -> None:
    """Save a tiny Llama and its tokenizer into ``folder`` (a local model folder, as ``--model`` takes), with
    blank tokens suppressed in its generation config: a random tiny model otherwise writes only those, and
    tests that compare generated texts need words."""
    model, tokenizer = tiny_model_and_tokenizer(seed=seed)
    model.generation_config.suppress_tokens = [
        i for i in range(len(tokenizer))
        if i != tokenizer.eos_token_id and not tokenizer.decode([i], skip_special_tokens=True).strip()
    ]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def jitter_heads(model, seed: int = 0, scale: float = 0.05):
    """Add seeded ``N(0, scale)`` noise to every heads parameter of an ``AutoDecoModel``, in place; returns it.

    Fresh heads predict a constant T and P; jittered heads give values that depend on the input.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.heads.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model
