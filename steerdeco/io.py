"""Atomic file writes: a temporary sibling, then ``os.replace``, so readers never see half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Call ``writer(temporary_path)`` and move the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(str(tmp))


def read_yaml_options(
    path: str | os.PathLike, known: Sequence[str], error: type[Exception] = ValueError
) -> dict[str, object]:
    """Options from a YAML ``--config`` file, keys normalised to field names (``max-prompts`` -> ``max_prompts``).

    Raises:
        ``error``: a missing or malformed file, a file that is not a mapping, or an unknown key (named,
        with the known keys, in the message).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"--config {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise error(f"--config {path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise error(f"--config {path}: unknown key {key!r}; known keys: {', '.join(known)}")
        options[name] = value
    return options
