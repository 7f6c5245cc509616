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

import hashlib
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
from ..io import atomic_write_with
from ..losses import LogitSlots
from .backbone import backbone_outputs

logger = logging.getLogger(__name__)

CACHE_FILE = "backbone_cache.safetensors"
CACHE_FORMAT = "3"
HIDDEN_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# safetensors' dtype names -> torch dtypes, for the memory-mapped reader
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I64": torch.int64}


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
    ``row_keys [rows]`` (:func:`row_key` of each row). For heads with ``prompt_attention``:
    ``prompt_states [S, H]`` (every row's prompt positions, concatenated; row ``r`` owns
    ``prompt_offsets[r]:prompt_offsets[r + 1]``), else None.
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
    prompt_states: torch.Tensor | None = None
    prompt_offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_bins(self) -> int:
        """Tail bins of the compressed logits."""
        return self.bin_counts.shape[1]

    @property
    def bytes_per_position(self) -> float:
        """Bytes stored per cached response position (every tensor but the per-row ones; prompt states are
        per row and left out)."""
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
        if self.prompt_states is not None:
            out["prompt_states"], out["prompt_mask"] = self.prompts(rows)
        return out

    def prompts(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states [B, P, H], mask [B, P])``: the prompt states of ``rows``, right-padded (``P``: the longest)."""
        if self.prompt_states is None:
            raise ValueError("this backbone cache holds no prompt states (it was built for heads without prompt_attention)")
        spans = [(int(self.prompt_offsets[r]), int(self.prompt_offsets[r + 1])) for r in rows]
        width = max((b - a for a, b in spans), default=0)
        states = torch.zeros(len(rows), width, self.prompt_states.shape[1], dtype=self.prompt_states.dtype)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (a, b) in enumerate(spans):
            states[i, : b - a] = self.prompt_states[a:b]
            mask[i, : b - a] = True
        return states, mask

    def rows(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor | None, LogitSlots]:
        """``(hidden [K, H], context [K, H] or None, slots)`` of ``rows``' positions, concatenated in order
        (the flat form :func:`~steerdeco.training.backbone.backbone_outputs` returns)."""
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]

        def take(tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor[a:b] for a, b in spans]) if spans else tensor[:0]

        bins = take(self.bin_counts)
        counts = torch.cat([torch.ones(bins.shape[0], self.top_k), bins], dim=-1)
        slots = LogitSlots(take(self.slot_values), counts, take(self.target_value), take(self.target_slot))
        return take(self.hidden), None if self.context is None else take(self.context), slots

    def save(self, path: str | os.PathLike) -> None:
        """Write every tensor and the fingerprint to one safetensors file, atomically."""
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
        if self.prompt_states is not None:
            tensors["prompt_states"], tensors["prompt_offsets"] = self.prompt_states, self.prompt_offsets
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
            prompt_states=tensors.get("prompt_states"),
            prompt_offsets=tensors.get("prompt_offsets"),
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
    """The metadata of a cache file (``format``, ``fingerprint``, ``top_k``) without reading its tensors."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def cache_fingerprint(
    base_model,
    examples: list[dict],
    top_k: int,
    num_bins: int,
    store_context: bool = True,
    hidden_dtype: str = "bfloat16",
    prompt_layer: int | None = None,
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
    if prompt_layer is not None:
        header["prompt_layer"] = prompt_layer
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
    prompt_layer: int | None = None,
) -> BackboneCache:
    """Run ``base_model`` once over every example (``encode_example`` dicts) and cache its outputs.

    Rows are batched by length; the base model is put in eval mode for the pass (restored after).
    ``store_context``: keep the running context (heads with ``context_features`` read it);
    ``hidden_dtype``: ``"bfloat16"``, ``"float16"`` or ``"float32"``, the dtype hidden states and
    context are stored in; ``prompt_layer``: also keep each row's prompt states (see
    :func:`backbone_outputs`) for heads with ``prompt_attention``.
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
    prompts: list = [None] * len(examples)
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="caching backbone outputs", disable=not progress):
            index = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in _right_pad([examples[i] for i in index], pad_token_id).items()}
            out = backbone_outputs(base_model, **batch, top_k=top_k, num_bins=num_bins, prompt_layer=prompt_layer)
            hidden, context, slots = out.hidden, out.context, out.slots
            lengths = batch["response_mask"].sum(-1).tolist()
            if prompt_layer is not None:
                states = out.prompt_states.to(dtype).cpu()
                for j, (i, n) in enumerate(zip(index, out.prompt_mask.sum(-1).tolist(), strict=True)):
                    prompts[i] = states[j, :n]
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
    prompt_states = prompt_offsets = None
    if prompt_layer is not None:
        prompt_lengths = torch.tensor([p.shape[0] for p in prompts])
        prompt_offsets = torch.cat([torch.zeros(1, dtype=torch.long), prompt_lengths.cumsum(0)])
        prompt_states = torch.cat(prompts)
    return BackboneCache(
        *columns, offsets=offsets, row_keys=keys, top_k=top_k, fingerprint=fingerprint,
        prompt_states=prompt_states, prompt_offsets=prompt_offsets,
    )  # fmt: skip


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
    prompt_layer: int | None = None,
) -> BackboneCache:
    """The cache in ``directory`` if its fingerprint matches this model, data and settings; else build and save it."""
    _check_hidden_dtype(hidden_dtype)
    path = Path(directory) / CACHE_FILE
    fingerprint = cache_fingerprint(base_model, examples, top_k, num_bins, store_context, hidden_dtype, prompt_layer)
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
        base_model, examples, pad_token_id, top_k, num_bins, batch_size, progress, fingerprint=fingerprint,
        store_context=store_context, hidden_dtype=hidden_dtype, prompt_layer=prompt_layer,
    )  # fmt: skip
    cache.save(path)
    extra = (" with context" if store_context else "") + (" and prompt states" if prompt_layer is not None else "")
    logger.info("cached the backbone outputs of %d rows (%d positions, %.0f bytes per position, %s%s) in %.1f s -> %s",
                len(cache), cache.hidden.shape[0], cache.bytes_per_position, hidden_dtype, extra,
                time.perf_counter() - started, path)
    return BackboneCache.load(path)
