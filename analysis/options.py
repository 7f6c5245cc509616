"""The options of an analysis run: :class:`AnalysisConfig` (every option of ``python -m analysis``, checked once) and its vocabularies."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from steerdeco.errors import AnalysisError
from steerdeco.options import check_int, field_names, option_name

from .collect import DEFAULT_FREE_RUNNING_VARIANTS, parse_variant_selection

PROTOCOLS = ("teacher_forced", "free_running")
PROTOCOL_LABELS = {"teacher_forced": "Teacher-forced", "free_running": "Free-running"}
SPLITS = ("eval", "train", "all")
RESPONSE_MODES = ("given", "generate", "none")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_OUT = "results"
#: Options that only shape a control-data build from --prompts.
BUILD_OPTIONS = ("prompts", "commands", "responses", "response_tokens", "max_prompts", "eval_fraction", "work_dir")
WORK_DIR = "work"


def _split_list(value, name: str) -> list:
    """A list from a list/tuple or a comma-separated string (``"0,1,2"``)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    raise AnalysisError(f"{option_name(name)} must be a comma-separated list, got {value!r}")


def normalise_protocols(value) -> list[str]:
    """``"teacher_forced,free_running"`` (or a list; ``-`` for ``_`` allowed) -> a checked list."""
    protocols = []
    for item in _split_list(value, "protocols"):
        name = str(item).strip().replace("-", "_")
        if name not in PROTOCOLS:
            raise AnalysisError(f"--protocols: unknown protocol {item!r}; choose from {', '.join(PROTOCOLS)}")
        if name not in protocols:
            protocols.append(name)
    if not protocols:
        raise AnalysisError(f"--protocols must name at least one of {', '.join(PROTOCOLS)}")
    return protocols


def normalise_seeds(value) -> list[int]:
    """``"0,1,2"`` (or a list) -> a checked list of distinct integers >= 0."""
    seeds = []
    for item in _split_list(value, "seeds"):
        try:
            seed = int(item)
        except (TypeError, ValueError):
            raise AnalysisError(f"--seeds must be comma-separated integers >= 0, got {value!r}") from None
        if isinstance(item, bool) or seed < 0 or (isinstance(item, float) and item != seed):
            raise AnalysisError(f"--seeds must be comma-separated integers >= 0, got {value!r}")
        if seed not in seeds:
            seeds.append(seed)
    if not seeds:
        raise AnalysisError("--seeds must name at least one seed")
    return seeds


@dataclass(frozen=True)
class ScoringOptions:
    """How control rows are scored: what :func:`analysis.scoring.score_rows` reads, as one object.

    ``free_running_groups``: generate for a seeded random subset (``seed``) of at most that many
    groups only (generation costs far more than teacher forcing); ``free_running_variants``: and
    only their rows that this selection names (:func:`analysis.collect.select_variant_rows`).
    ``prompt_only_temperature``: also generate those rows with the base model without heads at
    this temperature (None: no baseline). ``backbone_cache``, ``max_response_tokens``:
    teacher-forced scoring from the training's backbone cache (see
    :func:`analysis.collect.teacher_forced_scores`).
    """

    protocols: Sequence[str] = PROTOCOLS
    seeds: Sequence[int] = (0, 1, 2)
    max_new_tokens: int = 48
    batch_size: int = 8
    progress: bool = True
    free_running_groups: int | None = None
    seed: int = 0
    free_running_variants: str | Sequence[str] = DEFAULT_FREE_RUNNING_VARIANTS
    prompt_only_temperature: float | None = None
    backbone_cache: object = None
    max_response_tokens: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "protocols", tuple(normalise_protocols(list(self.protocols))))


@dataclass
class AnalysisConfig:
    """Every option of ``python -m analysis``; the command line and ``--config`` fill one of these."""

    heads: str | None = None
    reference_heads: str | None = None
    model: str | None = None
    data: str | None = None
    prompts: list[str] | None = None
    commands: str | None = None
    responses: str = "generate"
    response_tokens: int = 96
    max_prompts: int | None = None
    eval_fraction: float = 0.2
    work_dir: str | None = None
    out: str = DEFAULT_OUT
    overwrite: bool = False
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_new_tokens: int = 48
    max_groups: int | None = None
    free_running_groups: int | None = None
    free_running_variants: str = ",".join(DEFAULT_FREE_RUNNING_VARIANTS)
    prompt_only: bool = True
    prompt_only_temperature: float = 1.0
    split: str = "eval"
    n_boot: int = 2000
    seed: int = 0
    batch_size: int = 8
    figures: bool = True
    progress: bool = True
    device: str = "auto"
    lm_guard: int = 0
    lm_guard_source: str = "gsm8k"

    def __post_init__(self):
        for name in ("heads", "reference_heads", "model", "data", "commands", "work_dir", "out", "lm_guard_source"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str | os.PathLike) or not str(value)):
                raise AnalysisError(f"{option_name(name)} must be a non-empty path or name, got {value!r}")
            if value is not None:
                setattr(self, name, str(value))
        if self.heads is None:
            raise AnalysisError("--heads is required: a training output folder or a heads checkpoint")
        if self.prompts is not None:
            prompts = [self.prompts] if isinstance(self.prompts, str) else self.prompts
            if not isinstance(prompts, list | tuple) or not prompts or not all(isinstance(p, str) and p for p in prompts):
                raise AnalysisError(f"--prompts must be one or more prompt files (or builtin/mtbench/gsm8k), got {self.prompts!r}")
            self.prompts = list(prompts)
        if self.data is not None and self.prompts is not None:
            raise AnalysisError("give either --data (built control data) or --prompts/--commands (built on the fly), not both")
        if self.data is None and self.prompts is None:
            if self.commands is not None:
                raise AnalysisError("--commands needs --prompts (the prompts to build control data from)")
            raise AnalysisError("give --data DIR (control data built by python -m steerdeco.build_control_data) "
                                "or --prompts FILE [--commands FILE] to build it on the fly")
        self.protocols = normalise_protocols(self.protocols)
        self.seeds = normalise_seeds(self.seeds)
        for name, minimum in (("response_tokens", 1), ("max_new_tokens", 1), ("n_boot", 1), ("seed", 0), ("batch_size", 1),
                              ("lm_guard", 0)):
            self._check_int(name, minimum)
        for name, minimum in (("max_prompts", 1), ("max_groups", 2), ("free_running_groups", 2)):
            if getattr(self, name) is not None:
                self._check_int(name, minimum)
        try:
            self.free_running_variants = ",".join(parse_variant_selection(self.free_running_variants))
        except (ValueError, AttributeError, TypeError) as error:
            raise AnalysisError(f"--free-running-variants: {error}") from None
        temperature = self.prompt_only_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature <= 0:
            raise AnalysisError(f"--prompt-only-temperature must be a number > 0, got {temperature!r}")
        self.prompt_only_temperature = float(temperature)
        for name in ("overwrite", "figures", "progress", "prompt_only"):
            if not isinstance(getattr(self, name), bool):
                raise AnalysisError(f"{option_name(name)} must be true or false, got {getattr(self, name)!r}")
        for name, choices in (("split", SPLITS), ("responses", RESPONSE_MODES), ("device", DEVICES)):
            if getattr(self, name) not in choices:
                raise AnalysisError(f"{option_name(name)} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        fraction = self.eval_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction) or not 0 <= fraction < 1:
            raise AnalysisError(f"--eval-fraction must be a number in [0, 1), got {fraction!r}")
        self.eval_fraction = float(fraction)
        if self.prompts is not None and self.responses == "none" and "teacher_forced" in self.protocols:
            raise AnalysisError("--responses none builds rows without responses, but the teacher_forced protocol needs "
                                "them: use --responses given or generate, or --protocols free_running")

    def _check_int(self, name: str, minimum: int) -> None:
        check_int(getattr(self, name), name, minimum, AnalysisError)

    field_names = classmethod(field_names)

    def scoring(self) -> ScoringOptions:
        """The scoring part of these options (:func:`analysis.scoring.score_rows`)."""
        return ScoringOptions(
            protocols=self.protocols, seeds=self.seeds, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
            progress=self.progress, free_running_groups=self.free_running_groups, seed=self.seed,
            free_running_variants=self.free_running_variants,
            prompt_only_temperature=self.prompt_only_temperature if self.prompt_only else None,
        )
