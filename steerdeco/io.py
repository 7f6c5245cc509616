"""Safe file input and output: atomic writes with one file mode, strict YAML/JSON/JSONL reading, owned output folders.

* Writes go to a temporary sibling that is renamed onto the target (``os.replace``), so readers never
  see half a file; the result gets the mode a plain ``open`` would give (``0o666`` less the umask).
  A whole folder is assembled in a hidden sibling and swapped in (:func:`staged_folder`).
* YAML, JSON and JSON Lines are read with duplicate keys refused (the error names the key and its line).
* A folder a tool writes carries a marker file (:data:`OUTPUT_MARKER`) naming the tool; a folder is
  only ever replaced or cleared by the tool that wrote it, and only when the user asked for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

OUTPUT_MARKER = ".steerdeco-output"


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode ``open`` gives a new file: ``0o666`` less the process umask."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: ``0o777`` less the process umask."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())  # mkstemp makes the file private; what the tools write is not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None], overwrite: bool = True) -> Path:
    """Call ``writer(temporary_path)`` and move the result onto ``path``; returns ``path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    with atomic_path(path) as tmp:
        writer(str(tmp))
    return path


def to_jsonl(records: Iterable[Mapping]) -> str:
    """One JSON object per line, UTF-8 kept as is (``ensure_ascii=False``)."""
    return "".join(json.dumps(dict(record), ensure_ascii=False) + "\n" for record in records)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping], overwrite: bool = True) -> Path:
    """Write ``records`` as JSON Lines at ``path``, atomically (see :func:`atomic_write_with`)."""
    text = to_jsonl(records)
    return atomic_write_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)


def replace_folder(new: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move folder ``new`` onto ``out``; an existing ``out`` is kept aside until ``new`` is in place (restored on failure)."""
    new, out = Path(new), Path(out)
    if not out.exists():
        os.replace(new, out)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.replace(out, backup / out.name)
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(backup / out.name, out)
            raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, recheck: Callable[[], object] | None = None) -> Iterator[Path]:
    """Yield a hidden sibling folder of ``out`` to fill; when the block succeeds it replaces ``out``.

    ``recheck()`` runs just before the swap (e.g. refuse an ``out`` that appeared meanwhile). The
    staging folder gets the mode a plain ``mkdir`` gives; it is removed when anything fails.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(staging, folder_mode())  # mkdtemp makes it private; an output folder should not be
        yield staging
        if recheck is not None:
            recheck()
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- strict YAML and JSON -------------------------------------------------------------------------
def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            self.flatten_mapping(node)
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: let SafeLoader report it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_text_file(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of ``path``; ``error`` (naming ``what`` and the file) when it is missing or unreadable."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file; give the file itself") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror or exc}); check the path and its permissions") from None


def load_yaml_text(text: str, source: str, error: type[Exception] = ValueError) -> object:
    """Parse YAML safely; a duplicate key or a syntax error raises ``error`` naming ``source`` and the line."""
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{where}: not valid YAML ({problem})") from None


def _line_of_duplicate_key(text: str) -> int | None:
    """The line of the first repeated key of a JSON text, found by the YAML loader (JSON is YAML), or None."""
    import yaml

    try:
        yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as exc:
        if "duplicate key" in str(exc.problem) and exc.problem_mark is not None:
            return exc.problem_mark.line + 1
    except yaml.YAMLError:
        pass
    return None


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json`` ``object_pairs_hook`` that refuses a key given twice (raises ``KeyError(key)``)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise KeyError(key)
        out[key] = value
    return out


def load_json_text(text: str, source: str, error: type[Exception] = ValueError, line: int | None = None) -> object:
    """Parse JSON; a duplicate key or a syntax error raises ``error`` naming ``source`` and the line.

    ``line``: the line ``text`` starts on (JSONL); None: ``text`` is a whole file.
    """
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        where = f"{source}:{line if line is not None else exc.lineno}"
        problem = "malformed JSON" if line is not None else "not valid JSON"  # a JSONL line, or a whole file
        raise error(f"{where}: {problem} ({exc.msg}, column {exc.colno})") from None
    except KeyError as exc:
        key = exc.args[0]
        at = line if line is not None else _line_of_duplicate_key(text)
        where = f"{source}:{at}" if at is not None else source
        raise error(f"{where}: duplicate key {key!r}; give every key once") from None


def check_text_values(record: object, where: str, error: type[Exception] = ValueError) -> None:
    """Refuse a parsed JSON/YAML value holding a lone surrogate (an escaped ``\\ud8xx`` without its pair): not text.

    Raises:
        error: naming ``where`` (file and line) and the fix.
    """
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise error(
            f"{where}: a string holds a lone surrogate (an escaped \\ud8xx-\\udfxx without its pair), which is not "
            "text; fix or remove that character"
        ) from None


def read_yaml_file(path: str | os.PathLike, what: str = "--config", error: type[Exception] = ValueError) -> object:
    """A YAML (or JSON) file read strictly (see :func:`read_text_file` and :func:`load_yaml_text`)."""
    text = read_text_file(path, what, error)
    return load_yaml_text(text, f"{what} {path}", error)


def read_json_file(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> object:
    """A JSON file read strictly (see :func:`read_text_file` and :func:`load_json_text`)."""
    return load_json_text(read_text_file(path, what, error), f"{what} {path}", error)


def read_jsonl(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for every non-blank line of a JSON Lines file, read strictly.

    Raises:
        error: the file is missing, a folder, unreadable or not UTF-8, or a line is not valid JSON,
            repeats a key, is not a JSON object or holds a lone surrogate (file and line named).
    """
    text = read_text_file(path, what, error)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = load_json_text(line, f"{what} {path}", error, line=number)
        if not isinstance(record, dict):
            raise error(f"{what} {path}:{number}: expected a JSON object, got {type(record).__name__}")
        check_text_values(record, f"{what} {path}:{number}", error)
        yield number, record


# -- owned output folders -------------------------------------------------------------------------
def output_owner(folder: str | os.PathLike) -> str | None:
    """The tool named by ``folder``'s marker file, or None (no marker, or an unreadable one)."""
    marker = Path(folder) / OUTPUT_MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("tool") if isinstance(data, dict) and isinstance(data.get("tool"), str) else None


def mark_output(folder: str | os.PathLike, tool: str) -> None:
    """Write ``folder``'s marker file naming ``tool`` (the folder is created if needed)."""
    atomic_write_text(Path(folder) / OUTPUT_MARKER, json.dumps({"tool": tool}) + "\n")


def check_output_folder(
    folder: str | os.PathLike, tool: str, overwrite: bool, flag: str = "--overwrite",
    error: type[Exception] = ValueError, option: str = "--out",
) -> Path:
    """``folder`` (the tool's ``option``) as a Path, refused as :func:`check_replaceable` says, the option named.

    Raises:
        error: ``folder`` is a file, or a non-empty folder without ``overwrite`` or not written by ``tool``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise error(f"{option} {folder} is a file, not a folder; choose another {option}")
    try:
        check_replaceable(folder, tool, overwrite, flag, error)
    except error as exc:
        raise error(f"{option}: {exc}") from None
    return folder


def check_replaceable(
    folder: str | os.PathLike,
    tool: str,
    overwrite: bool,
    flag: str,
    error: type[Exception] = ValueError,
    ignore: Sequence[str] = (),
) -> bool:
    """Whether ``folder`` holds earlier output that may be replaced; raise ``error`` when it may not.

    An absent or empty folder (entries in ``ignore`` and the marker do not count) is free: False. A
    folder with content may be replaced only when ``overwrite`` (the user gave ``flag``) and its marker
    names ``tool``: True. Otherwise ``error`` says why and what to do.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise error(f"{folder} is a file, not a folder; choose another output folder")
    if not folder.is_dir():
        return False
    try:
        entries = [p.name for p in folder.iterdir() if p.name not in (OUTPUT_MARKER, *ignore)]
    except OSError as exc:
        raise error(f"output folder {folder} cannot be read ({exc.strerror or exc}); choose another one") from None
    if not entries:
        return False
    if not overwrite:
        raise error(f"output folder {folder} exists and is not empty; pass {flag} to replace it, or choose another one")
    owner = output_owner(folder)
    if owner != tool:
        written = f"was written by {owner}" if owner else f"has no {OUTPUT_MARKER} marker"
        raise error(
            f"output folder {folder} {written}, not by {tool}, so {flag} will not replace it; "
            "move it away yourself or choose another output folder"
        )
    return True
