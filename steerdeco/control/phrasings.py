"""The phrasing grammar: many wordings of each randomness command, composed from framings and cores.

A hand-written library has a few dozen phrasings per direction; heads trained on them learn those
sentences, not the request. The grammar (``control_data/phrasings.yaml``, schema in its header and
in ``docs/control_data.md``) composes wordings instead: a *frame* ("Could you {imp}?") with a *core*
of the same grammatical form ("be a bit more creative"). The level lives in the core, never in the
frame, so every frame is seen at every level and the heads must read the core.

* :meth:`PhrasingGrammar.commands` expands every train frame with every train core (and held-out
  with held-out) into :class:`~steerdeco.control.commands.Command` objects, ids ``gen-<direction>-
  <level>-<split>-NNNN``; they join the library's decks like hand-written phrasings;
* :meth:`PhrasingGrammar.named_command` writes one command that names a temperature or top-p value
  (direction ``named``), with the value in one of several number formats; train prompts draw
  ``train_values``, eval prompts ``eval_values`` (values between the train ones included).
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ControlDataError
from .commands import (
    COMMAND_SPLITS,
    GRADED_DIRECTIONS,
    MAX_TEMPERATURE,
    NEUTRAL_TEMPERATURE,
    Command,
    read_command_file,
)

logger = logging.getLogger(__name__)

FORMS = ("imp", "adv", "noun")
SENTENCE_FORM = "sentence"
NAMED_QUANTITIES = ("temperature", "top_p")
VALUE_SETS = ("train_values", "eval_values")
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SCHEMA_HINT = "see the header of control_data/phrasings.yaml"


def default_grammar_path() -> Path:
    """``control_data/phrasings.yaml`` of the source checkout."""
    return Path(__file__).resolve().parents[2] / "control_data" / "phrasings.yaml"


def format_value(value: float, style: str) -> str:
    """``value`` written in one number format.

    Styles: ``plain`` (0.3, 1, 1.25), ``padded`` (0.30, 1.00), ``bare`` (.3; as plain for values >= 1),
    ``words`` (zero point three, one, one point two five), ``percent`` (30%; top-p only).
    """
    plain = f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if style == "plain":
        return plain
    if style == "padded":
        return f"{value:.2f}"
    if style == "bare":
        return plain[1:] if plain.startswith("0.") else plain
    if style == "percent":
        return f"{round(value * 100):d}%"
    if style == "words":
        whole, _, fraction = plain.partition(".")
        words = " ".join(_DIGITS[int(d)] for d in whole)
        return words if not fraction else f"{words} point {' '.join(_DIGITS[int(d)] for d in fraction)}"
    raise ValueError(f"unknown number style {style!r}")


NUMBER_STYLES = {"temperature": ("plain", "plain", "padded", "bare", "words"), "top_p": ("plain", "plain", "padded", "bare", "words", "percent")}
# The order number_style tries the styles in: a written value can hold another style's (0.30 holds 0.3, 0.3 holds
# .3), and a number word can be a plain word ("this one"), so digits are looked for first.
_STYLE_SEARCH_ORDER = ("padded", "percent", "plain", "bare", "words")
_DIGIT_WORD = "(?:point|" + "|".join(_DIGITS) + ")"
# (before, after): what may not touch a written value, so that 0.3 is not read inside 10.3, 0.35 or 30%
_DECIMAL_BOUNDS = (r"(?<![\w.])", r"(?![\w%]|\.\d)")
_STYLE_BOUNDS = {
    "padded": _DECIMAL_BOUNDS,
    "plain": _DECIMAL_BOUNDS,
    "bare": (r"(?<![\w.])", r"(?![\w%])"),
    "percent": (r"(?<![\w.])", ""),
    "words": (r"(?<!\w)(?<!point )", rf"(?!\w|\s+{_DIGIT_WORD}\b)"),
}


def number_style(text: str, value: float) -> str | None:
    """The number format in which ``text`` writes ``value`` (a style of :func:`format_value`), or None.

    The inverse of :func:`format_value`, for reading a command back: ``number_style("Use top-p 30%.", 0.3)``
    is ``"percent"``. Where two styles write a value alike (0.35 plain and padded, 1.5 plain and bare) it
    is the plain one; a value written in no known style ("a third", "1.0") gives None.
    """
    plain = format_value(value, "plain")
    for style in _STYLE_SEARCH_ORDER:
        written = format_value(value, style)
        if (style != "plain" and written == plain) or (style == "words" and re.search(r"\d", text)):
            continue  # a text with digits writes its value in them ("this one, temperature 1.0")
        before, after = _STYLE_BOUNDS[style]
        if re.search(before + re.escape(written) + after, text, flags=re.IGNORECASE):
            return style
    return None


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _render(frame: str, form: str, core: str) -> str:
    return frame.replace("{" + _capitalised(form) + "}", _capitalised(core)).replace("{" + form + "}", core)


@dataclass(frozen=True)
class NamedFrames:
    """Frames and values of one named quantity (``temperature`` or ``top_p``)."""

    quantity: str
    frames: dict  # {split: [frame, ...]}
    values: dict  # {"train_values" | "eval_values": [value, ...]}


@dataclass(frozen=True)
class PhrasingGrammar:
    """A validated phrasing grammar (see the module docstring) and the file it came from."""

    frames: dict  # {form: {split: [frame]}}
    cores: dict  # {direction: {level: {form: {split: [core]}}}}
    named: dict  # {quantity: NamedFrames}
    source: str
    level_targets: dict = field(default_factory=dict)  # {(direction, level): target temperature}

    def commands(self) -> list[Command]:
        """Every wording of the unnamed commands: frames x cores of one split, plus whole-sentence cores."""
        commands: list[Command] = []
        for direction in GRADED_DIRECTIONS:
            for level in sorted(self.cores.get(direction, {})):
                for split in COMMAND_SPLITS:
                    texts: list[str] = []
                    target = self.level_targets.get((direction, level))
                    for form, by_split in self.cores[direction][level].items():
                        cores = by_split.get(split, [])
                        if form == SENTENCE_FORM:
                            texts.extend(cores)
                            continue
                        texts.extend(_render(frame, form, core) for frame in self.frames[form].get(split, []) for core in cores)
                    seen: set[str] = set()
                    for text in texts:
                        if text.casefold() in seen:
                            continue
                        seen.add(text.casefold())
                        number = len(seen)
                        commands.append(
                            Command(f"gen-{direction}-{level}-{split}-{number:04d}", direction, level, split, text, target)
                        )
        return commands

    def named_command(self, quantity: str, value: float, split: str, rng: random.Random) -> Command:
        """One command naming ``value`` for ``quantity`` in a frame of ``split``, number style drawn by ``rng``."""
        named = self.named[quantity]
        frames = named.frames.get(split) or []
        if not frames:
            raise ControlDataError(f"{self.source}: named.{quantity} has no {split!r} frames")
        index = rng.randrange(len(frames))
        style = rng.choice(NUMBER_STYLES[quantity])
        text = frames[index].replace("{x}", format_value(value, style))
        command_id = f"named-{quantity}-{split}-{index:02d}-{style}-{value:g}"
        targets = {"target_temperature": float(value)} if quantity == "temperature" else {"target_top_p": float(value)}
        return Command(command_id, "named", 0, split, text, **targets)

    def values(self, quantity: str, prompt_split: str) -> list[float]:
        """The values named on prompts of ``prompt_split``: ``train_values`` for train, ``eval_values`` for eval."""
        return list(self.named[quantity].values["train_values" if prompt_split == "train" else "eval_values"])


def _strings(value: object, where: str, source: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ControlDataError(f"{source}: {where} must be a list of non-empty strings; {_SCHEMA_HINT}")
    return [v.strip() for v in value]


def _split_lists(value: object, where: str, source: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ControlDataError(f"{source}: {where} must be a mapping with 'train' and/or 'heldout' lists; {_SCHEMA_HINT}")
    unknown = sorted(str(k) for k in value if k not in COMMAND_SPLITS)
    if unknown:
        raise ControlDataError(f"{source}: {where}: unknown key(s) {unknown} (allowed: train, heldout); {_SCHEMA_HINT}")
    return {split: _strings(value.get(split), f"{where}.{split}", source) for split in COMMAND_SPLITS}


def parse_grammar(data: object, source: str = "<grammar>") -> PhrasingGrammar:
    """Validate already-parsed grammar data.

    Raises:
        ControlDataError: the data breaks the schema; the message names ``source`` and the entry.
    """
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ControlDataError(f"{source}: expected a mapping with version: 1, forms, cores and named; {_SCHEMA_HINT}")
    unknown = sorted(str(k) for k in data if k not in ("version", "forms", "cores", "named"))
    if unknown:
        raise ControlDataError(f"{source}: unknown top-level key(s) {unknown}; {_SCHEMA_HINT}")
    frames = {}
    for form, value in (data.get("forms") or {}).items():
        if form not in FORMS:
            raise ControlDataError(f"{source}: forms.{form}: unknown form (expected one of {', '.join(FORMS)}); {_SCHEMA_HINT}")
        frames[form] = _split_lists(value, f"forms.{form}", source)
        for split, items in frames[form].items():
            for frame in items:
                if "{" + form + "}" not in frame and "{" + _capitalised(form) + "}" not in frame:
                    raise ControlDataError(f"{source}: forms.{form}.{split}: frame {frame!r} has no {{{form}}} slot")
    cores: dict = {}
    level_targets: dict = {}
    for direction, levels in (data.get("cores") or {}).items():
        if direction not in GRADED_DIRECTIONS or not isinstance(levels, dict):
            raise ControlDataError(f"{source}: cores.{direction}: expected low or high with levels 1, 2, 3; {_SCHEMA_HINT}")
        for level, forms in levels.items():
            if not isinstance(level, int) or isinstance(level, bool) or level < 1 or not isinstance(forms, dict):
                raise ControlDataError(f"{source}: cores.{direction}.{level}: expected an integer level >= 1 with forms")
            for form, value in forms.items():
                if form == "target_temperature":
                    below = direction == "low" and value < NEUTRAL_TEMPERATURE
                    above = direction == "high" and NEUTRAL_TEMPERATURE < value <= MAX_TEMPERATURE
                    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not (below or above):
                        raise ControlDataError(
                            f"{source}: cores.{direction}.{level}.target_temperature: {value!r} is not a number in [0, 2] "
                            f"on the {direction} side of {NEUTRAL_TEMPERATURE}"
                        )
                    level_targets[(direction, level)] = float(value)
                    continue
                if form not in (*FORMS, SENTENCE_FORM):
                    raise ControlDataError(f"{source}: cores.{direction}.{level}.{form}: unknown form; {_SCHEMA_HINT}")
                if form != SENTENCE_FORM and form not in frames:
                    raise ControlDataError(f"{source}: cores.{direction}.{level}.{form}: no frames of that form under forms")
                cores.setdefault(direction, {}).setdefault(level, {})[form] = _split_lists(
                    value, f"cores.{direction}.{level}.{form}", source
                )
    named = {}
    for quantity, value in (data.get("named") or {}).items():
        if quantity not in NAMED_QUANTITIES or not isinstance(value, dict):
            raise ControlDataError(f"{source}: named.{quantity}: expected temperature or top_p; {_SCHEMA_HINT}")
        extra = sorted(str(k) for k in value if k not in (*COMMAND_SPLITS, *VALUE_SETS))
        if extra:
            raise ControlDataError(f"{source}: named.{quantity}: unknown key(s) {extra}; {_SCHEMA_HINT}")
        split_frames = {split: _strings(value.get(split), f"named.{quantity}.{split}", source) for split in COMMAND_SPLITS}
        for split, items in split_frames.items():
            for frame in items:
                if "{x}" not in frame:
                    raise ControlDataError(f"{source}: named.{quantity}.{split}: frame {frame!r} has no {{x}} slot")
        upper = MAX_TEMPERATURE if quantity == "temperature" else 1.0
        values = {}
        for name in VALUE_SETS:
            items = value.get(name)
            if not isinstance(items, list) or not items:
                raise ControlDataError(f"{source}: named.{quantity}.{name} must be a non-empty list of numbers")
            for item in items:
                if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item) or not 0 <= item <= upper:
                    raise ControlDataError(f"{source}: named.{quantity}.{name}: {item!r} is not a number in [0, {upper}]")
            values[name] = [float(v) for v in items]
        named[quantity] = NamedFrames(quantity, split_frames, values)
    return PhrasingGrammar(frames, cores, named, source, level_targets)


def load_grammar(path: str | Path | None = None) -> PhrasingGrammar:
    """Load and validate a phrasing grammar (YAML or JSON); ``None``: the project's own.

    Raises:
        ControlDataError: the file is missing, unreadable or breaks the schema.
    """
    path = default_grammar_path() if path is None else Path(path)
    grammar = parse_grammar(read_command_file(path, "--phrasings"), source=str(path))
    logger.debug("loaded the phrasing grammar %s", path)
    return grammar
