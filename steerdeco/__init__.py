"""steerdeco: instruction-steered decoding with AutoDeco temperature and top-p heads.

Importing the package has no side effects; heavy submodules load on first use.
"""

#: Public name -> the submodule that defines it; loaded on first use (PEP 562), so that importing
#: ``steerdeco`` (or a light submodule such as :mod:`steerdeco.rows`) does not import torch.
_EXPORTS = {
    "HeadsConfig": "config",
    "DecodingTrace": "decoding",
    "DynamicTemperatureTopP": "decoding",
    "dynamic_decoding": "decoding",
    "AutoDecoHeads": "heads",
    "TemperatureHead": "heads",
    "TopPHead": "heads",
    "probability_features": "heads",
    "AutoDecoLossConfig": "losses",
    "LogitSlots": "losses",
    "autodeco_losses": "losses",
    "compress_logits": "losses",
    "exact_slots": "losses",
    "soft_top_p_loss": "losses",
    "temperature_loss": "losses",
    "AutoDecoModel": "modeling",
    "AutoDecoOutput": "modeling",
}

__version__ = "0.1.0"

__all__ = [
    "AutoDecoHeads",
    "AutoDecoLossConfig",
    "AutoDecoModel",
    "AutoDecoOutput",
    "DecodingTrace",
    "DynamicTemperatureTopP",
    "HeadsConfig",
    "LogitSlots",
    "TemperatureHead",
    "TopPHead",
    "autodeco_losses",
    "compress_logits",
    "dynamic_decoding",
    "exact_slots",
    "probability_features",
    "soft_top_p_loss",
    "temperature_loss",
]


def __getattr__(name: str):
    """Import the submodule defining ``name`` on first use (``steerdeco.AutoDecoModel``)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'steerdeco' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
