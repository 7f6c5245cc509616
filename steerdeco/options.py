"""Options shared by the writing tools: YAML ``--config`` merged under command-line flags, the common flags, option checks.

``python -m steerdeco.train`` reads its ``--config`` with trl's ``TrlParser`` instead; its file is
read with the same strict reader (:func:`steerdeco.io.read_yaml_file`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from .io import read_yaml_file

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Keys a ``--config`` file may hold besides the config's fields.
CLI_ONLY_KEYS = ("log_level",)


def option_name(name: str) -> str:
    """The command-line spelling of a config field: ``max_prompts`` -> ``--max-prompts``."""
    return "--" + name.replace("_", "-")


def check_int(value: object, name: str, minimum: int, error: type[Exception] = ValueError) -> None:
    """Refuse a ``value`` of option ``name`` that is not an integer >= ``minimum`` (a bool is not an integer)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise error(f"{option_name(name)} must be an integer >= {minimum}, got {value!r}")


def field_names(config_class) -> tuple[str, ...]:
    """The field names of a dataclass of options (what a ``--config`` file may set)."""
    return tuple(f.name for f in dataclasses.fields(config_class))


def add_run_flags(
    group: argparse._ArgumentGroup, out_help: str, overwrite_help: str, switches: Sequence[tuple[str, str]] = ()
) -> None:
    """The flags every writing tool has: ``--out``, ``--overwrite``, the tool's own on/off ``switches``
    (``(flag, help)`` pairs), ``--progress`` and ``--log-level``."""
    group.add_argument("--out", metavar="DIR", help=out_help)
    group.add_argument("--overwrite", action=argparse.BooleanOptionalAction, help=overwrite_help)
    for flag, help_text in switches:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, help="show progress bars (default: on)")
    group.add_argument("--log-level", choices=LOG_LEVELS, help="logging level (default: INFO)")


def read_yaml_options(
    path: str | os.PathLike, known: Sequence[str], error: type[Exception] = ValueError
) -> dict[str, object]:
    """Options from a YAML ``--config`` file, keys normalised to field names (``max-prompts`` -> ``max_prompts``).

    Raises:
        ``error``: a missing, unreadable or malformed file, a duplicate key, a file that is not a mapping,
        or an unknown key (named, with the known keys, in the message).
    """
    path = Path(path)
    data = read_yaml_file(path, "--config", error)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise error(f"--config {path}: unknown key {key!r}; known keys: {', '.join(known)}")
        if name in options:
            raise error(f"--config {path}: {key!r} gives option {name!r} a second time; keep one of them")
        options[name] = value
    return options


def merge_config(
    args: argparse.Namespace, known: Sequence[str], error: type[Exception] = ValueError
) -> tuple[dict[str, object], str]:
    """The options of ``args`` over those of its ``--config`` file (if any), and the log level.

    ``args``: a parsed namespace whose ``None`` (or suppressed) entries were not given; ``known``:
    the config's field names. Returns ``(options, log level)``; the options are the config's keyword
    arguments (``config`` and ``log_level`` taken out).

    Raises:
        ``error``: the file cannot be read (see :func:`read_yaml_options`), or an unknown log level.
    """
    options = {k: v for k, v in vars(args).items() if v is not None}  # None: not given
    config_file = options.pop("config", None)
    merged = read_yaml_options(config_file, tuple(known) + CLI_ONLY_KEYS, error) if config_file else {}
    merged.update(options)
    log_level = merged.pop("log_level", None) or "INFO"
    if log_level not in LOG_LEVELS:
        raise error(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    return merged, log_level
