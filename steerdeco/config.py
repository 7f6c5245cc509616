"""Configuration of the AutoDeco heads (saved as JSON next to the head weights)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CONTEXT_POOLINGS = ("running_mean", "prompt_attention")
HEADS_CONFIG_NAME = "heads_config.json"
HEADS_WEIGHTS_NAME = "heads.safetensors"
FORMAT_VERSION = 1


def _check_dropout(name: str, value) -> None:
    """A dropout probability: a number in [0, 1) (1 would drop everything)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def _is_token_table(table, words: bool = False) -> bool:
    """Whether ``table`` is None or a ``{token id (a string of digits): text}`` dict, as a JSON config holds one;
    with ``words``, a key may also be several token ids separated by spaces (a word of several tokens)."""
    return table is None or (isinstance(table, dict) and all(
        isinstance(k, str) and all(i.isdigit() for i in (k.split(" ") if words else [k])) and isinstance(v, str)
        for k, v in table.items()))


@dataclass
class HeadsConfig:
    """Shape and range of the temperature and top-p heads.

    ``hidden_size`` is read from the base model's config when the heads are created.
    """

    hidden_size: int = field(metadata={"help": "Hidden size of the base model's last hidden state."})
    mlp_width: int = field(default=256, metadata={"help": "Width of each head's hidden MLP layer."})
    mlp_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the token's state before each head's own MLP, in training mode only. The AutoDeco "
            "losses see each shared response's tokens once per epoch, and without it the MLPs learn those tokens "
            "by heart: T and P then fit the training responses and drift away from calibrated on new ones. 0: off."
        },
    )
    max_temperature: float = field(
        default=2.0, metadata={"help": "Temperature head output is sigmoid(x) * max_temperature."}
    )
    top_p_features: bool = field(
        default=True,
        metadata={
            "help": "Feed the top-p head four statistics of softmax(logits / T): max prob, entropy, "
            "variance and top-5 mass."
        },
    )
    context_features: bool = field(
        default=False,
        metadata={
            "help": "Also feed each head the running mean of the last hidden state over the sequence so far "
            "(prompt and generated tokens; see steerdeco.heads.running_context). Off: AutoDeco's heads exactly. "
            "On: a command anywhere in the prompt reaches every token's T and P directly, which is what lets "
            "a small model's heads obey it on prompts they were not trained on."
        },
    )
    steering_width: int = field(
        default=0,
        metadata={
            "help": "With context_features: give each head a steering path, an MLP of this width on the "
            "layer-normalised context alone whose output is added to the head's logit. For T well below "
            "max_temperature the added logit is a log multiplier of T, the same for every token of a reply, so a "
            "command scales the per-token T the AutoDeco path picks; for P it shifts the log-odds. 0: none."
        },
    )
    steering_linear: bool = field(
        default=False,
        metadata={"help": "Make the steering path one linear map of the normalised context instead of an MLP."},
    )
    steering_levels: int = field(
        default=0,
        metadata={
            "help": "With a steering path on a pooled prompt: N > 0 makes it read a command as one of 2N + 1 levels "
            "(low N..1, none, high 1..N): its MLP gives per level a logit and an offset, and the added logit is "
            "the softmax-weighted offset (the objective's steering_level term trains the logits to name each "
            "row's level). 0: the MLP gives the offset itself."
        },
    )
    context_in_mlp: bool = field(
        default=True,
        metadata={
            "help": "With a steering path: also feed the context to the heads' own MLPs. False: the context reaches "
            "T and P only through the steering path, so the per-token part sees the token's state alone."
        },
    )
    context_pooling: str = field(
        default="running_mean",
        metadata={
            "help": "What the context is, with context_features: 'running_mean' of the last hidden state over the "
            "sequence so far, or 'prompt_attention': a learned attention pooling of the prompt's states (of "
            "decoder layer context_layer), one vector per reply, so the heads learn where in the prompt a "
            "command is instead of reading its trace in a mean dominated by the rest of the prompt.",
            "choices": list(CONTEXT_POOLINGS),
        },
    )
    context_layer: int = field(
        default=0,
        metadata={
            "help": "With prompt_attention: the decoder layer (1 = first) whose output states are pooled; 0: "
            "the last hidden state (the lm_head's input)."
        },
    )
    pool_width: int = field(default=64, metadata={"help": "With prompt_attention: width of the scoring MLP."})
    pool_dropout: float = field(
        default=0.0,
        metadata={
            "help": "With prompt_attention: dropout on the prompt's normalised states in training mode (each feature "
            "zeroed with this probability before scoring and pooling), so that no reading rests on a few features "
            "of one word; inference reads every feature. 0: off."
        },
    )
    named_values: bool = field(
        default=False,
        metadata={
            "help": "With prompt_attention and a steering path: read the value a command names ('temperature 0.3', "
            "'top-p 0.9'). The numbers the prompt writes come in as token features (steerdeco.numbers); per head an "
            "attention over them picks the named one and a gate, trained on which rows name the head's quantity "
            "(the objective's named_gate_weight), pulls T or P toward it. Off: commands naming values are read "
            "through the steering path like any other."
        },
    )
    number_tokens: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "With named_values: {token id: text} of the base tokenizer's tokens that can write a number "
            "(steerdeco.numbers.number_token_table; the trainer fills it in)."
        },
    )
    negation_scope: bool = field(
        default=False,
        metadata={
            "help": "With steering_levels: read the words a negation governs mirrored ('Don't play it safe': the "
            "level the steering path reads from 'play it safe' is turned around, low k <-> high k; "
            "steerdeco.negation). The pooling leaves the negators themselves out. Off: a negation is a word like "
            "any other."
        },
    )
    negation_tokens: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "With negation_scope: {token id: role} of the base tokenizer's negator and clause-break tokens, "
            "and {'id id ...': 'negator'} for each negator the tokenizer writes in several tokens "
            "(steerdeco.negation.negation_token_table; the trainer fills it in)."
        },
    )
    base_model: str | None = field(default=None, metadata={"help": "Name or path of the base model."})
    base_model_fingerprint: str | None = field(
        default=None,
        metadata={
            "help": "Digest of the base model's architecture (steerdeco.modeling.base_model_fingerprint); heads are "
            "refused on a base model with another one. None: not recorded (heads saved by older versions)."
        },
    )
    format_version: int = field(default=FORMAT_VERSION, metadata={"help": "Checkpoint format version."})

    def __post_init__(self):
        if not isinstance(self.hidden_size, int) or self.hidden_size <= 0:
            raise ValueError(f"hidden_size must be a positive integer, got {self.hidden_size!r}")
        if not isinstance(self.mlp_width, int) or self.mlp_width <= 0:
            raise ValueError(f"mlp_width must be a positive integer, got {self.mlp_width!r}")
        _check_dropout("mlp_dropout", self.mlp_dropout)
        if not (isinstance(self.max_temperature, int | float) and math.isfinite(self.max_temperature)) or (
            self.max_temperature <= 0
        ):
            raise ValueError(f"max_temperature must be a positive number, got {self.max_temperature!r}")
        if not isinstance(self.steering_width, int) or isinstance(self.steering_width, bool) or self.steering_width < 0:
            raise ValueError(f"steering_width must be an integer >= 0, got {self.steering_width!r}")
        if not self.context_in_mlp and not self.steering_width:
            raise ValueError("context_in_mlp=False needs a steering path (steering_width > 0) to read the context")
        if self.steering_width and not self.context_features:
            raise ValueError("steering_width > 0 needs context_features=True: the steering path reads the context")
        levels = self.steering_levels
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 0:
            raise ValueError(f"steering_levels must be an integer >= 0, got {levels!r}")
        if levels and (not self.steering_width or self.context_pooling != "prompt_attention"):
            raise ValueError("steering_levels > 0 needs a steering path (steering_width > 0) on context_pooling='prompt_attention'")
        if self.context_pooling not in CONTEXT_POOLINGS:
            raise ValueError(f"context_pooling must be one of {', '.join(CONTEXT_POOLINGS)}, got {self.context_pooling!r}")
        if self.context_pooling == "prompt_attention" and not self.context_features:
            raise ValueError("context_pooling='prompt_attention' needs context_features=True")
        layer = self.context_layer
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"context_layer must be a decoder layer number >= 1, or 0 (the last hidden state), got {layer!r}")
        if layer and self.context_pooling != "prompt_attention":
            raise ValueError("context_layer is read by context_pooling='prompt_attention' only")
        if not isinstance(self.pool_width, int) or isinstance(self.pool_width, bool) or self.pool_width < 1:
            raise ValueError(f"pool_width must be a positive integer, got {self.pool_width!r}")
        _check_dropout("pool_dropout", self.pool_dropout)
        if self.pool_dropout and self.context_pooling != "prompt_attention":
            raise ValueError("pool_dropout is used by context_pooling='prompt_attention' only")
        if self.named_values and (self.context_pooling != "prompt_attention" or not self.steering_width):
            raise ValueError("named_values needs context_pooling='prompt_attention' and a steering path (steering_width > 0)")
        if not _is_token_table(self.number_tokens):
            raise ValueError("number_tokens must map token ids (strings of digits) to their text")
        if self.negation_scope and not self.steering_levels:
            raise ValueError("negation_scope needs steering_levels > 0: it turns the level a negated word reads around")
        if not _is_token_table(self.negation_tokens, words=True):
            raise ValueError("negation_tokens must map token ids (strings of digits; a word of several tokens: "
                             "its ids separated by spaces) to their role")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"heads format_version {self.format_version} is not supported by this steerdeco "
                f"(expects {FORMAT_VERSION})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> HeadsConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown heads config keys {unknown}; known keys are {sorted(known)}")
        if "hidden_size" not in data:
            raise ValueError(f"{source}: missing required key 'hidden_size'")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from error

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | Path) -> HeadsConfig:
        from .io import read_json_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"heads config {path} does not exist")
        return cls.from_dict(read_json_file(path, "heads config"), source=str(path))
