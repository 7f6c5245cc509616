"""Head-only training from a cache of the frozen backbone's outputs.

With a frozen backbone the heads only ever see, at each response position, the last hidden state
and the next-token distribution. :func:`build_backbone_cache` runs the backbone once per control
row and keeps exactly that: the hidden state ``[H]`` and the compressed logits
(:func:`steerdeco.losses.compress_logits`: top-k slots plus binned tail, enough for the top-p
features and both AutoDeco losses). Training then runs the heads alone
(``heads(hidden, slots.values, slots.counts)``).

Size: hidden states (and the running context, stored only for heads with ``context_features``) are
kept in ``bfloat16`` unless another ``hidden_dtype`` is asked for; the slots stay float32. Reading is
memory-mapped (:meth:`BackboneCache.load`), so a cache larger than RAM trains: a batch reads only its
rows' pages.

Each row also has a key (:func:`row_key` of its token ids and response start), so other code (the
analysis) can find the rows it needs in the cache and score them without running the backbone
(:meth:`BackboneCache.lookup`, :func:`cached_heads_inputs`).

The cache is one safetensors file (default ``OUTPUT_DIR/backbone_cache/backbone_cache.safetensors``)
whose metadata holds a fingerprint of the model weights, the tokenised rows and the storage
settings; :func:`load_or_build_cache` rebuilds a cache whose fingerprint does not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..chat import pad_responses
from ..heads import running_context
from ..hooks import decoder, on_decoder_output, on_lm_head, output_embeddings
from ..io import atomic_write_with
from ..losses import LogitSlots, compress_logits, exact_slots

logger = logging.getLogger(__name__)

CACHE_FILE = "backbone_cache.safetensors"
CACHE_FORMAT = "3"
HIDDEN_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# safetensors' dtype names -> torch dtypes, for the memory-mapped reader
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I64": torch.int64}


def backbone_outputs(
    base_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_positions: torch.Tensor,
    response_targets: torch.Tensor,
    response_mask: torch.Tensor,
    top_k: int,
    num_bins: int,
) -> tuple[torch.Tensor, torch.Tensor, LogitSlots, torch.Tensor]:
    """Run the base model and read it at the response positions.

    For transformers' causal LMs (a forward that takes ``logits_to_keep``) only the decoder runs, and
    the logits of the response positions are computed here as one ``[K, H] x [H, V]`` product of their
    gathered hidden states with the lm_head: the prompt positions need the last hidden state (for the
    running context) but no logits, and an lm_head applied to ``[B, L, H]`` with frozen weights makes
    torch use a batched product that copies the whole output-embedding matrix (several times slower
    on CPU). Other models run whole and their logits are read at the response positions.

    Args:
        input_ids, attention_mask: ``[R, L]`` right-padded rows.
        response_positions: ``[R, N]`` position whose prediction scores response token ``j``.
        response_targets: ``[R, N]`` response token ``j``.
        response_mask: ``[R, N]`` real response tokens.
        top_k, num_bins: logit compression (``top_k=0``: exact slots).

    Returns:
        ``(hidden [K, H], context [K, H], slots, logits [K, V])`` for the ``K`` masked positions in
        row-major order; ``context`` is :func:`~steerdeco.heads.running_context` of the row up to each
        position; the slots are built from detached logits, the other tensors keep their graph.
    """
    hiddens: list[torch.Tensor] = []
    logits_out: list[torch.Tensor] = []
    length = input_ids.shape[1]
    gathered_logits = accepts_logits_to_keep(base_model)
    with contextlib.ExitStack() as hooks:
        hooks.enter_context(on_decoder_output(base_model, lambda hidden, _mask: hiddens.append(hidden)))
        if gathered_logits:  # the decoder alone; the lm_head runs below on the response positions
            decoder(base_model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        else:
            hooks.enter_context(on_lm_head(base_model, lambda _hidden, logits: logits_out.append(logits)))
            base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = hiddens[-1]
    context, _ = running_context(hidden, attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(response_positions)
    rows, positions = rows[response_mask], response_positions[response_mask]
    hidden, context = hidden[rows, positions], context[rows, positions]
    if gathered_logits:
        logits = output_embeddings(base_model)(hidden)
    else:
        logits = logits_out[-1][rows, positions - (length - logits_out[-1].shape[1])]
    targets = response_targets[response_mask]
    detached = logits.detach()
    slots = exact_slots(detached, targets) if top_k == 0 else compress_logits(detached, targets, top_k, num_bins)
    return hidden, context, slots, logits


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model``'s forward (under a peft wrapper: the wrapped model's) takes ``logits_to_keep``."""
    getter = getattr(model, "get_base_model", None)
    inner = getter() if callable(getter) else model
    return "logits_to_keep" in inspect.signature(type(inner).forward).parameters


def row_key(example: dict) -> int:
    """A 63-bit key of an ``encode_example`` dict (its ``input_ids`` and ``response_start``)."""
    text = json.dumps([list(example["input_ids"]), int(example["response_start"])])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass
class BackboneCache:
    """Backbone outputs at the response positions of every row, concatenated.

    ``K`` positions over all rows; row ``r`` owns positions ``offsets[r]:offsets[r + 1]``.
    Attributes: ``hidden [K, H]`` (bfloat16, float16 or float32), ``context [K, H]`` (same dtype;
    running mean of the last hidden state up to each position, for heads with ``context_features``)
    or None when it was not stored, ``slot_values [K, top_k + bins]``, ``bin_counts [K, bins]`` (the
    top-k slots are single tokens), ``target_value [K]``, ``target_slot [K]``, ``offsets [rows + 1]``,
    ``row_keys [rows]`` (:func:`row_key` of each row).
    """

    hidden: torch.Tensor
    context: torch.Tensor | None
    slot_values: torch.Tensor
    bin_counts: torch.Tensor
    target_value: torch.Tensor
    target_slot: torch.Tensor
    offsets: torch.Tensor
    row_keys: torch.Tensor
    top_k: int
    fingerprint: str

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_bins(self) -> int:
        return self.bin_counts.shape[1]

    @property
    def bytes_per_position(self) -> float:
        """Bytes stored per cached response position (every tensor but the per-row ones)."""
        tensors = (self.hidden, self.context, self.slot_values, self.bin_counts, self.target_value, self.target_slot)
        total = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return total / max(1, self.hidden.shape[0])

    def lookup(self, keys: list[int]) -> list[int | None]:
        """The cache row of each :func:`row_key` (None: not cached)."""
        index = getattr(self, "_key_index", None)
        if index is None:
            index = {int(key): row for row, key in enumerate(self.row_keys.tolist())}
            self._key_index = index
        return [index.get(int(key)) for key in keys]

    def gather(self, rows: list[int], width: int) -> dict[str, torch.Tensor]:
        """Padded ``[B, width, ...]`` tensors for ``rows`` (the collator's cache inputs); no ``context``
        when it was not stored. Hidden states and context keep the cache's dtype."""
        batch, hidden_size, slots = len(rows), self.hidden.shape[1], self.slot_values.shape[1]
        hidden = torch.zeros(batch, width, hidden_size, dtype=self.hidden.dtype)
        context = None if self.context is None else torch.zeros(batch, width, hidden_size, dtype=self.context.dtype)
        values = torch.zeros(batch, width, slots)
        bins = torch.ones(batch, width, self.num_bins)
        target_value = torch.zeros(batch, width)
        target_slot = torch.zeros(batch, width, dtype=torch.long)
        for i, row in enumerate(rows):
            if not 0 <= row < len(self):
                raise IndexError(f"row {row} is not in this backbone cache of {len(self)} rows")
            start, end = int(self.offsets[row]), int(self.offsets[row + 1])
            n = min(end - start, width)
            hidden[i, :n] = self.hidden[start : start + n]
            if context is not None:
                context[i, :n] = self.context[start : start + n]
            values[i, :n] = self.slot_values[start : start + n]
            bins[i, :n] = self.bin_counts[start : start + n]
            target_value[i, :n] = self.target_value[start : start + n]
            target_slot[i, :n] = self.target_slot[start : start + n]
        counts = torch.cat([torch.ones(batch, width, self.top_k), bins], dim=-1)
        out = {
            "hidden": hidden,
            "slot_values": values,
            "slot_counts": counts,
            "target_value": target_value,
            "target_slot": target_slot,
        }
        if context is not None:
            out["context"] = context
        return out

    def rows(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor | None, LogitSlots]:
        """``(hidden [K, H], context [K, H] or None, slots)`` of ``rows``' positions, concatenated in order
        (the flat form :func:`backbone_outputs` returns)."""
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]

        def take(tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor[a:b] for a, b in spans]) if spans else tensor[:0]

        bins = take(self.bin_counts)
        counts = torch.cat([torch.ones(bins.shape[0], self.top_k), bins], dim=-1)
        slots = LogitSlots(take(self.slot_values), counts, take(self.target_value), take(self.target_slot))
        return take(self.hidden), None if self.context is None else take(self.context), slots

    def save(self, path: str | os.PathLike) -> None:
        tensors = {
            "hidden": self.hidden,
            "slot_values": self.slot_values,
            "bin_counts": self.bin_counts,
            "target_value": self.target_value,
            "target_slot": self.target_slot,
            "offsets": self.offsets,
            "row_keys": self.row_keys,
        }
        if self.context is not None:
            tensors["context"] = self.context
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        metadata = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "top_k": str(self.top_k)}
        atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BackboneCache:
        """Memory-map the file: tensors are views of the file's pages, read when indexed (copy-on-write,
        the file is never written)."""
        metadata = read_cache_metadata(path)
        tensors = _memory_mapped_tensors(path)
        return cls(
            **{name: tensors.get(name) for name in ("hidden", "context", "slot_values", "bin_counts", "target_value",
                                                    "target_slot", "offsets", "row_keys")},
            top_k=int(metadata["top_k"]),
            fingerprint=metadata["fingerprint"],
        )


def _memory_mapped_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of one ``numpy.memmap`` of the file (no copy)."""
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + header_size)
    tensors = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, not one a backbone cache stores; rebuild it")
        start, end = info["data_offsets"]
        raw = torch.from_numpy(data[start:end]) if end > start else torch.zeros(0, dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(info["shape"])
    return tensors


def read_cache_metadata(path: str | os.PathLike) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def cache_fingerprint(
    base_model,
    examples: list[dict],
    top_k: int,
    num_bins: int,
    store_context: bool = True,
    hidden_dtype: str = "bfloat16",
) -> str:
    """sha256 of the model (class, config, every weight), the tokenised rows and the storage settings."""
    digest = hashlib.sha256()
    config = base_model.config.to_json_string() if hasattr(base_model.config, "to_json_string") else str(base_model.config)
    header = {
        "format": CACHE_FORMAT,
        "top_k": top_k,
        "bins": num_bins,
        "model": type(base_model).__name__,
        "context": bool(store_context),
        "hidden_dtype": hidden_dtype,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(config.encode())
    for name, tensor in sorted(base_model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    for example in examples:
        digest.update(json.dumps([example["input_ids"], example["response_start"]]).encode())
    return digest.hexdigest()


def _check_hidden_dtype(hidden_dtype: str) -> torch.dtype:
    if hidden_dtype not in HIDDEN_DTYPES:
        raise ValueError(f"hidden_dtype must be one of {list(HIDDEN_DTYPES)}, got {hidden_dtype!r}")
    return HIDDEN_DTYPES[hidden_dtype]


def _right_pad(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    rows = [(e["input_ids"], e["response_start"]) for e in examples]
    return pad_responses(rows, [len(ids) - start for ids, start in rows], pad_token_id)


@torch.no_grad()
def build_backbone_cache(
    base_model,
    examples: list[dict],
    pad_token_id: int,
    top_k: int = 256,
    num_bins: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    fingerprint: str = "",
    store_context: bool = True,
    hidden_dtype: str = "bfloat16",
) -> BackboneCache:
    """Run ``base_model`` once over every example (``encode_example`` dicts) and cache its outputs.

    Rows are batched by length; the base model is put in eval mode for the pass (restored after).
    ``store_context``: keep the running context (heads with ``context_features`` read it);
    ``hidden_dtype``: ``"bfloat16"``, ``"float16"`` or ``"float32"``, the dtype hidden states and
    context are stored in.
    """
    from tqdm.auto import tqdm

    dtype = _check_hidden_dtype(hidden_dtype)
    if top_k < 5:
        raise ValueError(f"the backbone cache needs compressed logits (top_k >= 5), got top_k={top_k}")
    if not examples:
        raise ValueError("no rows to cache")
    device = next(base_model.parameters()).device
    was_training = base_model.training
    base_model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    per_row: list = [None] * len(examples)
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="caching backbone outputs", disable=not progress):
            index = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in _right_pad([examples[i] for i in index], pad_token_id).items()}
            hidden, context, slots, _ = backbone_outputs(base_model, **batch, top_k=top_k, num_bins=num_bins)
            lengths = batch["response_mask"].sum(-1).tolist()
            pieces = zip(
                hidden.to(dtype).cpu().split(lengths),
                context.to(dtype).cpu().split(lengths) if store_context else [None] * len(lengths),
                slots.values.cpu().split(lengths),
                slots.counts[:, top_k:].cpu().split(lengths),
                slots.target_value.cpu().split(lengths),
                slots.target_slot.long().cpu().split(lengths),
                strict=True,
            )
            for i, piece in zip(index, pieces, strict=True):
                per_row[i] = piece
    finally:
        base_model.train(was_training)
    lengths = torch.tensor([row[0].shape[0] for row in per_row])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    columns = [None if per_row[0][c] is None else torch.cat([row[c] for row in per_row]) for c in range(6)]
    keys = torch.tensor([row_key(example) for example in examples], dtype=torch.long)
    return BackboneCache(*columns, offsets=offsets, row_keys=keys, top_k=top_k, fingerprint=fingerprint)


def load_or_build_cache(
    directory: str | os.PathLike,
    base_model,
    examples: list[dict],
    pad_token_id: int,
    top_k: int = 256,
    num_bins: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    store_context: bool = True,
    hidden_dtype: str = "bfloat16",
) -> BackboneCache:
    """The cache in ``directory`` if its fingerprint matches this model, data and settings; else build and save it."""
    _check_hidden_dtype(hidden_dtype)
    path = Path(directory) / CACHE_FILE
    fingerprint = cache_fingerprint(base_model, examples, top_k, num_bins, store_context, hidden_dtype)
    if path.is_file():
        try:
            found = read_cache_metadata(path).get("fingerprint")
        except Exception as error:  # a truncated or foreign file: rebuild it
            logger.warning("backbone cache %s is unreadable (%s); rebuilding it", path, error)
            found = None
        if found == fingerprint:
            logger.info("reusing the backbone cache %s", path)
            return BackboneCache.load(path)
        if found is not None:
            logger.info("backbone cache %s is stale (other model, data or settings); rebuilding it", path)
    started = time.perf_counter()
    cache = build_backbone_cache(
        base_model,
        examples,
        pad_token_id,
        top_k,
        num_bins,
        batch_size,
        progress,
        fingerprint=fingerprint,
        store_context=store_context,
        hidden_dtype=hidden_dtype,
    )
    cache.save(path)
    logger.info(
        "cached the backbone outputs of %d rows (%d positions, %.0f bytes per position, %s%s) in %.1f s -> %s",
        len(cache),
        cache.hidden.shape[0],
        cache.bytes_per_position,
        hidden_dtype,
        " with context" if store_context else "",
        time.perf_counter() - started,
        path,
    )
    return BackboneCache.load(path)
