"""Shared responses: one per prompt, generated greedily by the plain base model, resumable.

Generation applies the tokenizer's chat template to the prompt's conversation (no command),
left-pads batches and decodes greedily. Finished responses are appended, one JSON line per prompt
and flushed after every batch, to a cache file (``responses.jsonl`` in the build's work folder):
an interrupted build picks up where it stopped. Each cache line carries a key made of the
conversation and the generation settings (model, ``max_new_tokens``), so a changed prompt or
setting is generated anew rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .errors import ControlDataError

logger = logging.getLogger(__name__)

RESPONSE_MODES = ("given", "generate", "none")
CACHE_FILE = "responses.jsonl"


def load_model(spec: str = "embedded"):
    """``(model, tokenizer)`` for generation: ``embedded`` (SmolLM2, offline) or a local HF model folder.

    Raises:
        ControlDataError: ``spec`` is neither ``embedded`` nor a folder with a model.
    """
    if spec == "embedded":
        from steerdeco.embedded import load_embedded_model

        return load_embedded_model()
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ControlDataError(
            f"--model {spec!r}: expected 'embedded' or a local Hugging Face model folder with a config.json "
            "(models are never downloaded)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def cache_key(messages: Sequence[dict], settings: Mapping[str, object]) -> str:
    """A digest of the conversation and the generation settings."""
    payload = json.dumps({"messages": list(messages), "settings": dict(settings)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_cache(path: str | Path) -> dict[str, dict]:
    """``{prompt id: {"key", "response"}}`` from a cache file (the last line of an id wins).

    A torn last line (an interruption while writing) is ignored; any other bad line is an error.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    entries: dict[str, dict] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt_id, key, response = record["prompt_id"], record["key"], record["response"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            if number == len(lines):  # no newline after it: the write was cut short
                logger.warning("%s:%d: ignoring a torn last line", path, number)
                continue
            raise ControlDataError(
                f"{path}:{number}: not a response-cache line ({error}); delete {path} to regenerate"
            ) from error
        entries[str(prompt_id)] = {"key": key, "response": response}
    return entries


def _append(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as handle:  # drop a torn last line so that the next one starts clean
            data = handle.read()
            if not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def greedy_generate(model, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 96) -> list[str]:
    """Greedy responses of ``model`` to a batch of conversations (chat template, left padding), stripped."""
    import torch
    from transformers import GenerationConfig

    if getattr(tokenizer, "chat_template", None) is None:
        raise ControlDataError("the tokenizer has no chat template; response generation applies it to every prompt")
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        batch = tokenizer.apply_chat_template(
            [list(c) for c in conversations], add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", padding=True,
        )
    finally:
        tokenizer.padding_side = padding_side
        if pad_token is None:
            tokenizer.pad_token = None
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.inference_mode():
        output = model.generate(**batch, generation_config=config)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_responses(
    model,
    tokenizer,
    conversations: Sequence[tuple[str, Sequence[dict]]],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    cache_file: str | Path | None = None,
    settings: Mapping[str, object] | None = None,
    progress: bool = True,
    on_batch: Callable[[int, list[str]], None] | None = None,
) -> dict[str, str]:
    """``{prompt id: response}`` for ``(prompt id, conversation)`` pairs, reusing and extending a cache.

    Args:
        model, tokenizer: a causal LM and its tokenizer (with a chat template).
        conversations: ``(prompt id, messages)`` pairs; ids must be unique.
        max_new_tokens: the response length limit.
        batch_size: conversations per ``generate`` call (sorted by length to limit padding).
        cache_file: the append-only JSONL cache; ``None``: no cache.
        settings: extra cache-key fields naming the model (``max_new_tokens`` is always part of it).
        progress: show a tqdm progress bar.
        on_batch: called as ``on_batch(batch_number, prompt_ids)`` after each batch is cached
            (``batch_number`` counts from 1); an exception it raises stops generation there.
    """
    from tqdm.auto import tqdm

    if max_new_tokens < 1:
        raise ControlDataError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ControlDataError(f"--batch-size must be at least 1, got {batch_size}")
    settings = {**(settings or {}), "max_new_tokens": max_new_tokens, "decoding": "greedy"}
    cache_path = Path(cache_file) if cache_file is not None else None
    cached = read_cache(cache_path) if cache_path is not None else {}
    keys = {prompt_id: cache_key(messages, settings) for prompt_id, messages in conversations}
    if len(keys) != len(conversations):
        raise ControlDataError("generate_responses: prompt ids must be unique")
    results = {pid: cached[pid]["response"] for pid in keys if pid in cached and cached[pid]["key"] == keys[pid]}
    pending = [(pid, messages) for pid, messages in conversations if pid not in results]
    if results:
        logger.info("reusing %d cached responses from %s; %d left to generate", len(results), cache_path, len(pending))
    pending.sort(key=lambda item: -sum(len(m["content"]) for m in item[1]))
    bar = tqdm(total=len(pending), desc="generating responses", unit="prompt", disable=not progress or not pending)
    try:
        for number, start in enumerate(range(0, len(pending), batch_size), 1):
            chunk = pending[start : start + batch_size]
            texts = greedy_generate(model, tokenizer, [messages for _, messages in chunk], max_new_tokens)
            records = [{"prompt_id": pid, "key": keys[pid], "response": text} for (pid, _), text in zip(chunk, texts, strict=True)]
            if cache_path is not None:
                _append(cache_path, records)
            results.update((r["prompt_id"], r["response"]) for r in records)
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(number, [pid for pid, _ in chunk])
    finally:
        bar.close()
    return {pid: results[pid] for pid, _ in conversations}
