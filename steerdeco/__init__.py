"""steerdeco: instruction-steered decoding with AutoDeco temperature and top-p heads.

Importing the package has no side effects; heavy submodules load on first use.
"""

from .config import HeadsConfig
from .decoding import DecodingTrace, DynamicTemperatureTopP, dynamic_decoding
from .heads import AutoDecoHeads, TemperatureHead, TopPHead, probability_features
from .losses import (
    AutoDecoLossConfig,
    LogitSlots,
    autodeco_losses,
    compress_logits,
    exact_slots,
    soft_top_p_loss,
    temperature_loss,
)
from .modeling import AutoDecoModel, AutoDecoOutput

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
