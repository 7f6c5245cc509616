"""One control-data build, start to end: options, prompts, commands, responses, rows, output.

    >>> from steerdeco.control import BuildConfig, build_control_data
    >>> result = build_control_data(BuildConfig(out="outputs/control_data", responses="none"))
    >>> result.summary["rows"], result.out
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ControlDataError
from ..options import check_int, field_names, option_name
from .commands import CommandLibrary, load_commands
from .insertion import PLACEMENT_MODES
from .output import check_output_dir, log_summary, summarize, write_output
from .phrasings import PhrasingGrammar, load_grammar
from .prompts import SPECIAL_SOURCES, Prompt, load_prompts
from .responses import CACHE_FILE, RESPONSE_MODES, generate_responses, load_model
from .variants import assign_splits, plan_rows, select_prompts

logger = logging.getLogger(__name__)

DEFAULT_OUT = "outputs/control_data"


@dataclass
class BuildConfig:
    """Every option of a build; the command line and ``--config`` YAML files fill one of these."""

    prompts: list[str] = field(default_factory=lambda: ["builtin"])
    commands: str | None = None
    out: str = DEFAULT_OUT
    seed: int = 0
    responses: str = "none"
    overwrite: bool = False
    placement: str = "sample"
    max_prompts: int | None = None
    eval_fraction: float = 0.2
    eval_sources: list[str] | None = None
    train_commands: int | None = None
    commands_per_level: int = 1
    train_commands_per_level: int | None = None
    placebos: int = 1
    phrasings: str | None = None
    named_per_group: int = 0
    model: str = "embedded"
    max_new_tokens: int = 96
    response_temperature: float = 1.0
    batch_size: int = 8
    work_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.prompts, str):
            self.prompts = [self.prompts]
        if not isinstance(self.prompts, list) or not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
            raise ControlDataError(f"--prompts must be one or more file paths or builtin/mtbench/gsm8k, got {self.prompts!r}")
        for name in ("commands", "work_dir", "phrasings"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, Path)):
                raise ControlDataError(f"{option_name(name)} must be a path, got {value!r}")
        for name in ("out", "model"):
            if not isinstance(getattr(self, name), (str, Path)) or not str(getattr(self, name)):
                raise ControlDataError(f"{option_name(name)} must be a non-empty string, got {getattr(self, name)!r}")
        for name, minimum in (("seed", 0), ("commands_per_level", 1), ("placebos", 0), ("named_per_group", 0), ("max_new_tokens", 1), ("batch_size", 1)):
            self._check_int(name, minimum)
        for name in ("max_prompts", "train_commands", "train_commands_per_level"):
            if getattr(self, name) is not None:
                self._check_int(name, 1)
        if isinstance(self.eval_sources, str):
            self.eval_sources = [self.eval_sources]
        if self.eval_sources is not None:
            unknown = [s for s in self.eval_sources if s not in self.prompts]
            if not self.eval_sources or unknown:
                raise ControlDataError(
                    f"--eval-sources must name sources given to --prompts ({', '.join(self.prompts)}), got {self.eval_sources!r}"
                )
        for name in ("overwrite", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ControlDataError(f"{option_name(name)} must be true or false, got {getattr(self, name)!r}")
        if self.responses not in RESPONSE_MODES:
            raise ControlDataError(f"--responses must be one of {', '.join(RESPONSE_MODES)}, got {self.responses!r}")
        if self.placement not in PLACEMENT_MODES:
            raise ControlDataError(f"--placement must be one of {', '.join(PLACEMENT_MODES)}, got {self.placement!r}")
        fraction = self.eval_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) or not 0 <= fraction < 1:
            raise ControlDataError(f"--eval-fraction must be a number in [0, 1), got {fraction!r}")
        self.eval_fraction = float(fraction)
        temperature = self.response_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise ControlDataError(f"--response-temperature must be a number >= 0 (0: greedy), got {temperature!r}")
        self.response_temperature = float(temperature)

    def _check_int(self, name: str, minimum: int) -> None:
        check_int(getattr(self, name), name, minimum, ControlDataError)

    field_names = classmethod(field_names)

    def resolved_phrasings(self) -> str | None:
        """The phrasing grammar to use: ``builtin``, a path, or None (none). Unset: the builtin grammar with the
        builtin library, none with a library of the user's own."""
        if self.phrasings is None:
            return "builtin" if self.commands is None else None
        return None if str(self.phrasings) == "none" else str(self.phrasings)

    def resolved_work_dir(self) -> Path:
        """``work_dir``, else ``<out>.work`` next to the output folder."""
        if self.work_dir is not None:
            return Path(self.work_dir)
        out = Path(self.out)
        return out.parent / f"{out.name}.work"

    def recorded(self) -> dict:
        """The settings that shape the data (saved in ``summary.json``; no output paths)."""
        keep = asdict(self)
        for name in ("out", "overwrite", "work_dir", "progress"):
            keep.pop(name)
        if self.responses != "generate":
            for name in ("model", "max_new_tokens", "response_temperature", "batch_size"):
                keep.pop(name)
        keep["commands"] = "builtin" if self.commands is None else str(self.commands)
        keep["phrasings"] = self.resolved_phrasings() or "none"
        return keep


@dataclass
class BuildResult:
    """What :func:`build_control_data` made: the output folder, the rows and the summary."""

    out: Path
    rows: list[dict]
    summary: dict


def _responses(
    config: BuildConfig, prompts: list[Prompt], model, tokenizer, on_batch: Callable[[int, list[str]], None] | None
) -> dict[str, str | None]:
    if config.responses == "none":
        return {p.id: None for p in prompts}
    if config.responses == "given":
        missing = [p for p in prompts if p.completion is None]
        if missing:
            raise ControlDataError(
                f"--responses given: {len(missing)} prompts have no 'completion' (first: {missing[0].id!r} at "
                f"{missing[0].origin}); add completions, or use --responses generate or --responses none"
            )
        return {p.id: p.completion for p in prompts}
    if model is None:
        logger.info("loading the generation model %r", config.model)
        model, tokenizer = load_model(config.model)
    work = config.resolved_work_dir()
    decoding = "greedy" if config.response_temperature == 0 else f"sampled at T={config.response_temperature:g}"
    logger.info("generating responses (%s, max %d new tokens); cache %s", decoding, config.max_new_tokens, work / CACHE_FILE)
    return generate_responses(
        model,
        tokenizer,
        [(p.id, p.conversation()) for p in prompts],
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        temperature=config.response_temperature,
        seed=config.seed,
        cache_file=work / CACHE_FILE,
        settings={"model": str(config.model)},
        progress=config.progress,
        on_batch=on_batch,
    )


def load_library(config: BuildConfig) -> tuple[CommandLibrary, PhrasingGrammar | None]:
    """The command library of a build, with the phrasing grammar's wordings added, and the grammar (or None)."""
    library = load_commands(config.commands)
    phrasings = config.resolved_phrasings()
    if phrasings is None:
        return library, None
    grammar = load_grammar(None if phrasings == "builtin" else phrasings)
    return library.with_commands(grammar.commands(), grammar.source), grammar


def build_control_data(
    config: BuildConfig | None = None,
    *,
    model=None,
    tokenizer=None,
    on_batch: Callable[[int, list[str]], None] | None = None,
) -> BuildResult:
    """Build control data as ``config`` says and write it to ``config.out``.

    Args:
        config: the options (defaults: the project's prompts and commands, no responses).
        model, tokenizer: a ready generation model for ``responses="generate"`` (else
            ``config.model`` is loaded); ``config.model`` still names it in the response cache.
        on_batch: passed to :func:`~steerdeco.control.responses.generate_responses`.

    Raises:
        ControlDataError: bad options or inputs, or an output folder that exists without
            ``overwrite`` (checked before any response is generated).
    """
    config = config or BuildConfig()
    if (model is None) != (tokenizer is None):
        raise ControlDataError("pass both model and tokenizer, or neither")
    check_output_dir(config.out, config.overwrite)
    library, grammar = load_library(config)
    prompts = load_prompts(config.prompts)
    prompts = select_prompts(prompts, config.max_prompts, config.seed)
    logger.info("%d prompts from %s; %d commands from %s", len(prompts), ", ".join(config.prompts), len(library), library.source)

    responses = _responses(config, prompts, model, tokenizer, on_batch)
    dropped = [p.id for p in prompts if config.responses == "generate" and not responses[p.id]]
    if dropped:
        logger.warning("%d prompts got an empty response and are left out: %s", len(dropped), dropped)
        prompts = [p for p in prompts if p.id not in set(dropped)]
        if not prompts:
            raise ControlDataError("every generated response was empty; check --model and --max-new-tokens")

    eval_sources = None if config.eval_sources is None else [s if s in SPECIAL_SOURCES else Path(s).name for s in config.eval_sources]
    splits = assign_splits(prompts, config.eval_fraction, config.seed, eval_sources)
    rows = plan_rows(
        prompts,
        splits,
        library,
        seed=config.seed,
        placement=config.placement,
        commands_per_level=config.commands_per_level,
        train_commands_per_level=config.train_commands_per_level,
        placebos=config.placebos,
        responses=responses,
        grammar=grammar,
        named_per_group=config.named_per_group,
        train_commands=config.train_commands,
    )
    summary = summarize(rows, dropped=dropped, settings=config.recorded())
    out = write_output(rows, summary, config.out, overwrite=config.overwrite)
    log_summary(summary)
    logger.info("wrote %d rows to %s", len(rows), out)
    return BuildResult(out, rows, summary)
