"""The command library: plain-language commands about randomness, loaded from YAML/JSON and validated.

A library file is a mapping ``{"version": 1, "commands": [...]}``; each command has an ``id``, a
``direction`` (``low``, ``high`` or ``placebo``), a graded ``level`` (1, 2, 3, ... for low/high; 0
or absent for placebo), a phrasing ``split`` (``train`` or ``heldout``), the ``text`` itself and,
for absolute commands that name a value, a ``target_temperature``. ``docs/control_data.md`` has the
full schema; the project's own library is ``control_data/commands.yaml``.

    >>> from steerdeco.control import load_commands
    >>> library = load_commands()                 # the project's library
    >>> library.select(direction="low", level=3, split="heldout")
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ControlDataError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DIRECTIONS = ("low", "high", "placebo")
GRADED_DIRECTIONS = ("low", "high")
COMMAND_SPLITS = ("train", "heldout")
NEUTRAL_TEMPERATURE = 1.0
MAX_TEMPERATURE = 2.0

_TOP_LEVEL_KEYS = ("version", "description", "commands")
_REQUIRED_KEYS = ("id", "direction", "split", "text")
_OPTIONAL_KEYS = ("level", "target_temperature", "note")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Words that give a placebo away as a command about randomness; a hit is only a warning.
_RANDOMNESS_WORDS = re.compile(
    r"random|temperature|top-?p\b|determinis|predictab|creativ|sampl|entropy|greedy|wild|surpris",
    re.IGNORECASE,
)
_SCHEMA_HINT = "see docs/control_data.md for the command-file schema"


@dataclass(frozen=True)
class Command:
    """One phrasing of the library."""

    id: str
    direction: str
    level: int
    split: str
    text: str
    target_temperature: float | None = None
    note: str | None = None
    line: int | None = None
    target_top_p: float | None = None

    @property
    def absolute(self) -> bool:
        """True for commands that name a target value ("temperature 0.3", "no randomness", "top-p 0.5")."""
        return self.target_temperature is not None or self.target_top_p is not None


@dataclass(frozen=True)
class CommandLibrary:
    """A validated list of commands and the file it came from."""

    commands: tuple[Command, ...]
    source: str

    def __len__(self) -> int:
        return len(self.commands)

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands)

    def select(self, direction: str | None = None, level: int | None = None, split: str | None = None) -> list[Command]:
        """The commands matching every given field, in file order."""
        if direction is not None and direction not in DIRECTIONS:
            raise ControlDataError(f"unknown direction {direction!r}; expected one of {', '.join(DIRECTIONS)}")
        if split is not None and split not in COMMAND_SPLITS:
            raise ControlDataError(f"unknown phrasing split {split!r}; expected one of {', '.join(COMMAND_SPLITS)}")
        return [
            c
            for c in self.commands
            if (direction is None or c.direction == direction)
            and (level is None or c.level == level)
            and (split is None or c.split == split)
        ]

    def levels(self, direction: str) -> list[int]:
        """The sorted intensity levels present for ``direction`` (``[0]`` for placebo, if any)."""
        return sorted({c.level for c in self.select(direction=direction)})

    def with_commands(self, extra: list[Command], source: str) -> CommandLibrary:
        """This library plus ``extra`` commands (e.g. a phrasing grammar's); ids and texts must stay unique.

        Raises:
            ControlDataError: an extra command repeats an id or a text (the message names both).
        """
        ids = {c.id: c for c in self.commands}
        texts = {_normalised(c.text): c for c in self.commands}
        added = []
        for command in extra:
            if command.id in ids:
                raise ControlDataError(f"{source}: command id {command.id!r} is already used in {self.source}")
            key = _normalised(command.text)
            if key in texts:
                if texts[key].direction != command.direction or texts[key].level != command.level:
                    other = texts[key]
                    raise ControlDataError(
                        f"{source}: {command.text!r} ({command.direction} {command.level}) is also {other.id!r} "
                        f"({other.direction} {other.level}) in {self.source}"
                    )
                continue  # the same wording at the same level: keep the first
            ids[command.id] = texts[key] = command
            added.append(command)
        return CommandLibrary(self.commands + tuple(added), f"{self.source} + {source}")

    def by_id(self, command_id: str) -> Command:
        """The command with id ``command_id`` (KeyError when there is none)."""
        for command in self.commands:
            if command.id == command_id:
                return command
        raise KeyError(f"no command with id {command_id!r} in {self.source}")


def default_commands_path() -> Path:
    """``control_data/commands.yaml`` of the source checkout."""
    return Path(__file__).resolve().parents[2] / "control_data" / "commands.yaml"


class _LineDict(dict):
    """A mapping that remembers the (1-based) line it started on."""

    line: int | None = None


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings know their line and refuse duplicate keys."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    mapping = _LineDict()
    mapping.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise ControlDataError(f"{loader.source}:{key_node.start_mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_command_file(path: Path, flag: str = "--commands") -> object:
    """The data of a YAML or JSON file read for ``flag``, duplicate keys refused (lines in the errors)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ControlDataError(f"file {path} does not exist ({flag})") from None
    except IsADirectoryError:
        raise ControlDataError(f"file {path} is a folder; {flag} takes a YAML or JSON file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ControlDataError(f"file {path} cannot be read ({flag}): {error}") from error
    if path.suffix.lower() == ".json":
        from ..io import load_json_text

        return load_json_text(text, str(path), ControlDataError)
    loader = _LineLoader(text)
    loader.source = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise ControlDataError(f"{where}: not valid YAML/JSON ({problem})") from error
    finally:
        loader.dispose()


def load_commands(path: str | Path | None = None) -> CommandLibrary:
    """Load and validate a command library (YAML or JSON); ``None``: the project's own library.

    Raises:
        ControlDataError: the file is missing or unreadable, or breaks the schema (the message names
            the file, the line and the command).
    """
    path = default_commands_path() if path is None else Path(path)
    data = read_command_file(path)
    library = parse_commands(data, source=str(path))
    logger.debug("loaded %d commands from %s", len(library), path)
    return library


def _fail(source: str, line: int | None, what: str, problem: str) -> ControlDataError:
    where = f"{source}:{line}" if line is not None else source
    return ControlDataError(f"{where}: {what}: {problem}; {_SCHEMA_HINT}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_command(entry: object, index: int, source: str, parent_line: int | None) -> Command:
    line = getattr(entry, "line", parent_line)
    what = f"commands[{index}]"
    if not isinstance(entry, dict):
        raise _fail(source, line, what, f"expected a mapping with keys {', '.join(_REQUIRED_KEYS)}, got {entry!r}")
    if isinstance(entry.get("id"), str):
        what = f"commands[{index}] (id {entry['id']!r})"
    unknown = sorted(str(k) for k in entry if k not in _REQUIRED_KEYS + _OPTIONAL_KEYS)
    if unknown:
        allowed = ", ".join(_REQUIRED_KEYS + _OPTIONAL_KEYS)
        raise _fail(source, line, what, f"unknown key(s) {', '.join(repr(k) for k in unknown)} (allowed: {allowed})")
    missing = [k for k in _REQUIRED_KEYS if k not in entry or entry[k] is None]
    if missing:
        raise _fail(source, line, what, f"missing required key(s) {', '.join(missing)}")

    command_id = entry["id"]
    if not isinstance(command_id, str) or not _ID_PATTERN.match(command_id):
        raise _fail(source, line, what, f"id must be a string of letters, digits, '.', '_' or '-', got {command_id!r}")
    direction = entry["direction"]
    if direction not in DIRECTIONS:
        raise _fail(source, line, what, f"unknown direction {direction!r} (expected one of {', '.join(DIRECTIONS)})")
    split = entry["split"]
    if split not in COMMAND_SPLITS:
        raise _fail(source, line, what, f"unknown split {split!r} (expected one of {', '.join(COMMAND_SPLITS)})")
    text = entry["text"]
    if not isinstance(text, str) or not text.strip():
        raise _fail(source, line, what, "text must be a non-empty string")

    level = entry.get("level")
    if direction in GRADED_DIRECTIONS:
        if level is None:
            raise _fail(source, line, what, f"a {direction!r} command needs a level (1 = slightly, 2 = clearly, 3 = extremely)")
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            raise _fail(source, line, what, f"level must be an integer >= 1 for a {direction!r} command, got {level!r}")
    else:
        if level not in (None, 0) or isinstance(level, bool):
            raise _fail(source, line, what, f"a placebo command has level 0 (or none), got {level!r}")
        level = 0

    target = entry.get("target_temperature")
    if target is not None:
        if direction == "placebo":
            raise _fail(source, line, what, "a placebo command cannot have a target_temperature")
        if not _is_number(target) or not 0.0 <= target <= MAX_TEMPERATURE:
            raise _fail(source, line, what, f"target_temperature must be a number in [0, {MAX_TEMPERATURE}], got {target!r}")
        if direction == "low" and not target < NEUTRAL_TEMPERATURE:
            raise _fail(source, line, what, f"a 'low' command's target_temperature must be below {NEUTRAL_TEMPERATURE}, got {target}")
        if direction == "high" and not target > NEUTRAL_TEMPERATURE:
            raise _fail(source, line, what, f"a 'high' command's target_temperature must be above {NEUTRAL_TEMPERATURE}, got {target}")
        target = float(target)
    note = entry.get("note")
    if note is not None and not isinstance(note, str):
        raise _fail(source, line, what, f"note must be a string, got {note!r}")
    return Command(command_id, direction, int(level), split, text.strip(), target, note, line)


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def parse_commands(data: object, source: str = "<commands>") -> CommandLibrary:
    """Validate already-parsed library data (the mapping a YAML/JSON file holds).

    Raises:
        ControlDataError: the data breaks the schema; the message names ``source`` and the line
            (when the data came from :func:`load_commands`) and the command at fault.
    """
    top_line = getattr(data, "line", None)
    if not isinstance(data, dict):
        raise _fail(source, top_line, "top level", f"expected a mapping with keys {', '.join(_TOP_LEVEL_KEYS)}, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _TOP_LEVEL_KEYS)
    if unknown:
        raise _fail(source, top_line, "top level", f"unknown key(s) {', '.join(repr(k) for k in unknown)} (allowed: {', '.join(_TOP_LEVEL_KEYS)})")
    version = data.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise _fail(source, top_line, "version", f"unsupported schema version {version!r} (this builder reads version {SCHEMA_VERSION})")
    entries = data.get("commands")
    if not isinstance(entries, list) or not entries:
        raise _fail(source, top_line, "commands", "expected a non-empty list of commands")

    commands: list[Command] = []
    seen_ids: dict[str, Command] = {}
    seen_texts: dict[str, Command] = {}
    for index, entry in enumerate(entries):
        command = _parse_command(entry, index, source, top_line)
        what = f"commands[{index}] (id {command.id!r})"
        if command.id in seen_ids:
            raise _fail(source, command.line, what, f"duplicate id: already used on line {seen_ids[command.id].line}")
        key = _normalised(command.text)
        if key in seen_texts:
            other = seen_texts[key]
            raise _fail(source, command.line, what, f"duplicate text: same phrasing as {other.id!r} (line {other.line})")
        seen_ids[command.id] = command
        seen_texts[key] = command
        commands.append(command)

    library = CommandLibrary(tuple(commands), source)
    for direction in GRADED_DIRECTIONS:
        if not library.select(direction=direction, split="train"):
            raise _fail(source, top_line, "commands", f"no {direction!r} command with split 'train': train prompts would have nothing to rank")
        for level in library.levels(direction):
            for split in COMMAND_SPLITS:
                if not library.select(direction=direction, level=level, split=split):
                    logger.warning("%s: no %s level-%d command with split %r", source, direction, level, split)
    if not library.select(direction="placebo"):
        logger.warning("%s: no placebo commands: the data will have no placebo rows", source)
    for command in library.select(direction="placebo"):
        if _RANDOMNESS_WORDS.search(command.text):
            logger.warning(
                "%s:%s: placebo %r mentions randomness (%r); placebos should say nothing about it",
                source, command.line, command.id, command.text,
            )
    return library
