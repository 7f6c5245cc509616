"""``python -m analysis``: measure trained heads on control data and write a results folder.

    python -m analysis --heads outputs/demo --data outputs/control_data --out results
    python -m analysis --heads outputs/demo --prompts my_prompts.jsonl --commands my_commands.yaml
    python -m analysis --config my_analysis.yaml --max-groups 8 --seeds 0 --overwrite

Loads the base model (``--model``: ``embedded``, ``tiny`` or a local Hugging Face folder; default:
the base model named in the heads' ``heads_config.json``, else ``embedded``) with the trained heads
of ``--heads`` (a training output folder, one of its ``checkpoint-N`` folders, or any folder saved
by ``AutoDecoModel.save_pretrained``; a LoRA adapter in ``adapter/`` is attached too). The rows come
either from ``--data`` (a folder or JSONL file built by ``python -m steerdeco.build_control_data``)
or are built on the fly from ``--prompts`` and ``--commands`` (responses generated greedily by the
plain base model by default, into ``work/`` inside the results). Then, per protocol:

* ``teacher_forced``: every variant of a group scores the group's shared response (needs responses);
* ``free_running``: every variant generates its own response, once per ``--seeds`` seed.

The results folder (``--out``) holds what :func:`analysis.report.write_report` writes (``report.md``,
``summary.json``, ``tables/``, ``figures/``), the raw per-row scores (``<protocol>_scores.jsonl``,
read them with :func:`analysis.scores_io.load_results`), ``run.json`` (the options and where
everything came from) and, for data built on the fly, ``work/``. It is assembled in a hidden
temporary sibling folder and renamed into place at the end; an existing non-empty ``--out`` is
refused unless ``--overwrite``.

Every option can also be set in a YAML file (``--config``; keys are the option names with ``_`` or
``-``); flags on the command line override it.

From Python (e.g. with a model already in memory)::

    from analysis.cli import run_analysis
    markdown, tables = run_analysis(model, tokenizer, rows, "results", seeds=(0,), max_groups=8)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import DEFAULT_FREE_RUNNING_VARIANTS, parse_variant_selection

logger = logging.getLogger(__name__)

PROTOCOLS = ("teacher_forced", "free_running")
PROTOCOL_LABELS = {"teacher_forced": "Teacher-forced", "free_running": "Free-running"}
SPLITS = ("eval", "train", "all")
RESPONSE_MODES = ("given", "generate", "none")
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CLI_ONLY_KEYS = ("log_level",)
DEFAULT_OUT = "results"
RUN_FILE = "run.json"
TOOL = "analysis"
#: Options that only shape a control-data build from --prompts.
BUILD_OPTIONS = ("prompts", "commands", "responses", "response_tokens", "max_prompts", "eval_fraction", "work_dir")
WORK_DIR = "work"


class AnalysisError(ValueError):
    """Bad options or inputs of an analysis run; the message names the option."""


def option_name(name: str) -> str:
    """``max_groups`` -> ``--max-groups``."""
    return "--" + name.replace("_", "-")


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


@dataclass
class AnalysisConfig:
    """Every option of ``python -m analysis``; the command line and ``--config`` fill one of these."""

    heads: str | None = None
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
        for name in ("heads", "model", "data", "commands", "work_dir", "out", "lm_guard_source"):
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
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise AnalysisError(f"{option_name(name)} must be an integer >= {minimum}, got {value!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# -- command line ---------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    """The argument parser; only options given on the command line end up in the namespace."""
    d = AnalysisConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="Every option can also be set in the --config YAML file; command-line flags override it.",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the options below (keys like max_groups)")

    group = parser.add_argument_group("model")
    group.add_argument("--heads", metavar="DIR", help="trained heads: a training output folder, a checkpoint-N folder or a "
                       "save_pretrained folder (a LoRA adapter in DIR/adapter is attached too); required")
    group.add_argument("--model", metavar="NAME", help="base model: embedded, tiny or a local Hugging Face folder "
                       "(default: the base_model of the heads config, else embedded)")
    group.add_argument("--device", choices=DEVICES, help="where to run the model (default: auto = cuda when available)")

    group = parser.add_argument_group("data (either --data, or --prompts [--commands] to build it on the fly)")
    group.add_argument("--data", metavar="DIR_OR_JSONL", help="control data built by python -m steerdeco.build_control_data")
    group.add_argument("--prompts", action="append", metavar="SOURCE",
                       help="build control data on the fly from these prompts (repeatable): a JSONL file, builtin, mtbench or gsm8k")
    group.add_argument("--commands", metavar="FILE", help="command library for the on-the-fly build (default: the project's)")
    group.add_argument("--responses", choices=RESPONSE_MODES,
                       help="shared responses of the on-the-fly build: the prompts' completion (given), greedy output of the "
                       f"base model (generate) or none (free_running only) (default: {d['responses'].default})")
    group.add_argument("--response-tokens", type=int, metavar="N",
                       help=f"length limit of generated shared responses (default: {d['response_tokens'].default})")
    group.add_argument("--max-prompts", type=int, metavar="N", help="on-the-fly build: a seeded subset of at most N prompts")
    group.add_argument("--eval-fraction", type=float, metavar="F",
                       help=f"on-the-fly build: share of prompts held out as eval (default: {d['eval_fraction'].default})")
    group.add_argument("--work-dir", metavar="DIR",
                       help="on-the-fly build: keep the control data and the resumable response cache here "
                       f"(default: {WORK_DIR}/ inside the results)")

    group = parser.add_argument_group("analysis")
    group.add_argument("--protocols", metavar="LIST",
                       help=f"comma-separated protocols (default: {','.join(PROTOCOLS)})")
    group.add_argument("--seeds", metavar="LIST", help="comma-separated free-running sampling seeds (default: 0,1,2)")
    group.add_argument("--max-new-tokens", type=int, metavar="N",
                       help=f"free-running response length (default: {d['max_new_tokens'].default})")
    group.add_argument("--split", choices=SPLITS,
                       help="prompts to analyse: eval (held out; default), train, or all (then the tables cover every prompt "
                       "and the report adds a train-vs-eval breakdown)")
    group.add_argument("--max-groups", type=int, metavar="N",
                       help="analyse a seeded random subset of at most N prompt groups (quick runs; >= 2)")
    group.add_argument("--free-running-groups", type=int, metavar="N",
                       help="generate free-running responses for a seeded subset of at most N of those groups only (>= 2)")
    group.add_argument("--free-running-variants", metavar="LIST",
                       help="rows that generate free-running text: none, placebo, zero (commands naming temperature 0), "
                       "low/high (every level) or lowK/highK, comma-separated, or all "
                       f"(default: {d['free_running_variants'].default})")
    group.add_argument("--prompt-only", action=argparse.BooleanOptionalAction,
                       help="also generate the free-running rows with the base model without heads at one fixed temperature, "
                       "the command in the prompt (the baseline steering must beat; default: on)")
    group.add_argument("--prompt-only-temperature", type=float, metavar="T",
                       help=f"sampling temperature of the prompt-only baseline (default: {d['prompt_only_temperature'].default})")
    group.add_argument("--n-boot", type=int, metavar="N", help=f"bootstrap resamples (default: {d['n_boot'].default})")
    group.add_argument("--seed", type=int, metavar="N",
                       help="seed of the bootstrap, the --max-groups subset and the on-the-fly build (default: 0)")
    group.add_argument("--batch-size", type=int, metavar="N", help=f"rows per model batch (default: {d['batch_size'].default})")
    group.add_argument("--lm-guard", type=int, metavar="N", help="LM guard (issue 12.5): LM loss of N human-written answers, "
                       "model vs base model (analysis.lm_guard; default 0: off)")
    group.add_argument("--lm-guard-source", metavar="SOURCE", help="the LM guard's answers: gsm8k or a JSONL file whose lines "
                       f"carry 'completion' (default: {d['lm_guard_source'].default})")

    group = parser.add_argument_group("output")
    group.add_argument("--out", metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})")
    group.add_argument("--overwrite", action=argparse.BooleanOptionalAction,
                       help="replace an existing non-empty results folder (once the new one is complete; default: refuse)")
    group.add_argument("--figures", action=argparse.BooleanOptionalAction, help="draw the PNG figures (default: on)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, help="show progress bars (default: on)")
    group.add_argument("--log-level", choices=LOG_LEVELS, help="logging level (default: INFO)")
    return parser


def read_config_file(path: str | os.PathLike) -> dict:
    """Options from a YAML file, keys normalised to field names.

    Raises:
        AnalysisError: a missing or malformed file, or an unknown key (named in the message).
    """
    from steerdeco.io import read_yaml_options  # lazy: importing analysis does not import torch

    return read_yaml_options(path, AnalysisConfig.field_names() + CLI_ONLY_KEYS, AnalysisError)


def resolve_config(args: argparse.Namespace) -> tuple[AnalysisConfig, str]:
    """Merge ``--config`` (if any) under the command-line options; returns the config and the log level."""
    options = dict(vars(args))
    config_file = options.pop("config", None)
    merged = read_config_file(config_file) if config_file else {}
    merged.update(options)
    log_level = merged.pop("log_level", None) or "INFO"
    if log_level not in LOG_LEVELS:
        raise AnalysisError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    return AnalysisConfig(**merged), log_level


# -- model ----------------------------------------------------------------------------------------
def _checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def resolve_heads(path: str | os.PathLike) -> Path:
    """The folder holding ``heads.safetensors``: ``path`` itself, else its latest ``checkpoint-N``.

    Raises:
        AnalysisError: no such folder, or no heads in it.
    """
    from steerdeco.config import HEADS_CONFIG_NAME, HEADS_WEIGHTS_NAME

    path = Path(path)
    if not path.is_dir():
        raise AnalysisError(f"--heads {path}: no such folder (give a training output folder or a heads checkpoint)")
    if (path / HEADS_WEIGHTS_NAME).is_file():
        if not (path / HEADS_CONFIG_NAME).is_file():
            raise AnalysisError(f"--heads {path}: {HEADS_CONFIG_NAME} is missing next to {HEADS_WEIGHTS_NAME}")
        return path
    checkpoints = sorted((p for p in path.iterdir() if _checkpoint_step(p) >= 0 and (p / HEADS_WEIGHTS_NAME).is_file()),
                         key=_checkpoint_step)
    if checkpoints:
        logger.warning("--heads %s has no %s of its own; using its latest checkpoint %s", path, HEADS_WEIGHTS_NAME,
                       checkpoints[-1].name)
        return checkpoints[-1]
    raise AnalysisError(f"--heads {path}: no {HEADS_WEIGHTS_NAME} there nor in a checkpoint-N subfolder; give a training "
                        "output folder or a folder saved by AutoDecoModel.save_pretrained")


def heads_config(heads_dir: Path):
    from steerdeco.config import HEADS_CONFIG_NAME, HeadsConfig

    try:
        return HeadsConfig.from_json_file(heads_dir / HEADS_CONFIG_NAME)
    except (FileNotFoundError, ValueError) as error:
        raise AnalysisError(f"--heads {heads_dir}: {error}") from error


def default_model(heads_dir: Path) -> str:
    """The base model the heads config names (the embedded model's cache folder -> ``embedded``); else ``embedded``."""
    name = heads_config(heads_dir).base_model
    if not name:
        logger.info("the heads config names no base model; using the embedded model (pass --model to choose)")
        return "embedded"
    from steerdeco.embedded import embedded_model_dir

    if Path(name) == embedded_model_dir():
        return "embedded"
    return str(name)


def load_base(name: str, from_heads: bool = False):
    """``(model, tokenizer)`` of ``embedded``, ``tiny`` or a local folder (:func:`steerdeco.training.load_base_model`)."""
    from steerdeco.training import load_base_model

    if name not in ("embedded", "tiny") and not Path(name).is_dir():
        where = f"the heads config names base model {name!r}" if from_heads else f"--model {name!r}"
        raise AnalysisError(f"{where}, which is not 'embedded', 'tiny' or a local model folder; pass --model")
    try:
        return load_base_model(name)
    except (OSError, ValueError) as error:
        raise AnalysisError(f"--model {name!r} could not be loaded: {error}") from error


def check_hidden_size(heads_dir: Path, base, model_name: str) -> None:
    """Refuse heads that do not fit the base model: hidden size, then every check of
    :func:`steerdeco.modeling.read_heads` (config, tensors, base-model fingerprint), before any expensive step."""
    from steerdeco.modeling import base_hidden_size, read_heads

    expected = heads_config(heads_dir).hidden_size
    actual = base_hidden_size(base)
    if expected != actual:
        raise AnalysisError(f"--heads {heads_dir} expects hidden size {expected} but --model {model_name!r} has hidden size "
                            f"{actual}: pass the base model the heads were trained on")
    try:  # the one validating loader: config, tensors, base-model fingerprint
        read_heads(heads_dir, base, source=f"--heads {heads_dir}")
    except (FileNotFoundError, ValueError) as error:
        raise AnalysisError(f"{error} (--model {model_name!r})") from None


def attach_heads(heads_dir: Path, base, model_name: str):
    """The trained model: heads (and the LoRA adapter, if any) of ``heads_dir`` on ``base``."""
    from steerdeco.training import load_trained_model

    check_hidden_size(heads_dir, base, model_name)
    try:
        model = load_trained_model(heads_dir, base)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as error:
        raise AnalysisError(f"--heads {heads_dir} does not fit --model {model_name!r}: {error}") from error
    return model.eval()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("--device cuda: no CUDA device is available")
    return device


# -- rows -----------------------------------------------------------------------------------------
def as_row_list(rows) -> list[dict]:
    """A list of dicts from a ``datasets.Dataset``, a DataFrame or any iterable of mappings."""
    if hasattr(rows, "to_list"):  # datasets.Dataset
        rows = rows.to_list()
    elif isinstance(rows, pd.DataFrame):
        rows = rows.to_dict(orient="records")
    rows = [dict(r) for r in rows]
    if not rows:
        raise AnalysisError("no control-data rows given")
    return rows


def select_rows(rows, split: str = "eval", max_groups: int | None = None, seed: int = 0, source: str = "the data") -> list[dict]:
    """Rows of the prompts to analyse: one prompt split (or ``all``), then at most ``max_groups`` groups.

    The group subset is a seeded random choice (``numpy.random.default_rng(seed)``) kept in data order.

    Raises:
        AnalysisError: an unknown split, no rows of that split, or rows without ``split`` / ``group_id``.
    """
    if split not in SPLITS:
        raise AnalysisError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    rows = as_row_list(rows)
    lacking = [c for c in ("group_id", "split") if any(c not in r for r in rows)]
    if lacking:
        raise AnalysisError(f"{source}: rows lack the columns {lacking}; build the data with python -m steerdeco.build_control_data")
    if split != "all":
        present = sorted({str(r["split"]) for r in rows})
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise AnalysisError(f"{source} has no rows with split {split!r} (splits present: {present}); choose --split "
                                f"{' or '.join(s for s in SPLITS if s != split)}")
    groups = list(dict.fromkeys(r["group_id"] for r in rows))
    if max_groups is not None and len(groups) > max_groups:
        if max_groups < 2:
            raise AnalysisError(f"--max-groups must be >= 2 (the statistics pair groups), got {max_groups}")
        rng = np.random.default_rng(seed)
        chosen = {groups[i] for i in rng.permutation(len(groups))[:max_groups]}
        rows = [r for r in rows if r["group_id"] in chosen]
        logger.info("analysing %d of %d prompt groups (--max-groups %d, seed %d)", max_groups, len(groups), max_groups, seed)
    return rows


def check_responses(rows: Sequence[Mapping], source: str = "the data") -> None:
    """Refuse rows without a shared response (teacher forcing scores that response)."""
    without = [r.get("group_id") for r in rows if not r.get("response")]
    if without:
        raise AnalysisError(
            f"{source}: {len(without)} of {len(rows)} rows have no response (first group {without[0]!r}); the teacher_forced "
            "protocol needs data built with --responses given or --responses generate, or use --protocols free_running"
        )


def build_rows(config: AnalysisConfig, base, tokenizer, work: Path, model_name: str | None = None) -> list[dict]:
    """Build control data from ``config.prompts`` / ``config.commands`` into ``work/control_data``.

    Responses (``--responses generate``) come from ``base`` (greedy, so the seed only shapes the
    split, the commands and the placements); the response cache is ``work/responses.jsonl``.
    """
    from steerdeco.control import BuildConfig, ControlDataError, build_control_data

    out = work / "control_data"
    overwrite = False
    if out.exists():
        if not (out / "summary.json").is_file():
            raise AnalysisError(f"--work-dir {work}: {out} exists and is not control data built by steerdeco; choose another "
                                "--work-dir")
        overwrite = True  # our own earlier build; the response cache next to it is reused
    try:
        build = BuildConfig(
            prompts=list(config.prompts),
            commands=config.commands,
            out=str(out),
            seed=config.seed,
            responses=config.responses,
            overwrite=overwrite,
            max_prompts=config.max_prompts,
            eval_fraction=config.eval_fraction,
            model=str(model_name or config.model or "embedded"),  # names the generator in the response cache
            max_new_tokens=config.response_tokens,
            batch_size=config.batch_size,
            work_dir=str(work),
            progress=config.progress,
        )
        generate = config.responses == "generate"
        result = build_control_data(build, model=base if generate else None, tokenizer=tokenizer if generate else None)
    except ControlDataError as error:
        message = str(error).replace("--max-new-tokens", "--response-tokens")  # the build's name for our option
        raise AnalysisError(f"building control data from --prompts {', '.join(config.prompts)}: {message}") from error
    return list(result.rows)


# -- scoring and writing --------------------------------------------------------------------------
def score_rows(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    protocols: Iterable[str] = PROTOCOLS,
    seeds: Iterable[int] = (0, 1, 2),
    max_new_tokens: int = 48,
    batch_size: int = 8,
    progress: bool = True,
    free_running_groups: int | None = None,
    seed: int = 0,
    free_running_variants: str | Sequence[str] = DEFAULT_FREE_RUNNING_VARIANTS,
    prompt_only_temperature: float | None = None,
    backbone_cache=None,
    max_response_tokens: int | None = None,
    timings: dict | None = None,
) -> dict[str, pd.DataFrame]:
    """``{protocol: variant scores}`` of ``model`` (an AutoDecoModel) on control-data ``rows``.

    ``free_running_groups``: generate for a seeded random subset (``seed``) of at most that many
    groups only (generation costs far more than teacher forcing); ``free_running_variants``: and
    only their rows that this selection names (:func:`analysis.collect.select_variant_rows`).
    ``prompt_only_temperature``: also generate those rows with the base model without heads at
    this temperature (key ``prompt_only``, :func:`analysis.collect.prompt_only_scores`). Generation
    pads on the left; the tokenizer's ``padding_side`` is restored afterwards. ``backbone_cache``,
    ``max_response_tokens``: teacher-forced scoring from the training's backbone cache (see
    :func:`analysis.collect.teacher_forced_scores`). ``timings``: filled with seconds per protocol.
    """
    from .collect import free_running_scores, prompt_only_scores, select_variant_rows, teacher_forced_scores

    protocols = normalise_protocols(list(protocols))
    rows = as_row_list(rows)
    if "teacher_forced" in protocols:
        check_responses(rows)
    model.eval()
    scores: dict[str, pd.DataFrame] = {}
    for protocol in protocols:
        start = time.perf_counter()
        if protocol == "teacher_forced":
            scores[protocol] = teacher_forced_scores(model, tokenizer, rows, batch_size=batch_size, progress=progress,
                                                     backbone_cache=backbone_cache,
                                                     max_response_tokens=max_response_tokens)
        else:
            subset = rows
            if free_running_groups is not None:
                if isinstance(free_running_groups, bool) or not isinstance(free_running_groups, int) or free_running_groups < 2:
                    raise AnalysisError(f"--free-running-groups must be an integer >= 2, got {free_running_groups!r}")
                subset = select_rows(rows, "all", free_running_groups, seed)
            try:
                subset = select_variant_rows(subset, free_running_variants)
            except ValueError as error:
                raise AnalysisError(f"--free-running-variants: {error}") from None
            if not subset:
                raise AnalysisError(f"--free-running-variants {free_running_variants!r} selects none of the rows; name "
                                    "variants the data has (e.g. none,low3,high3,placebo,zero) or all")
            padding_side = tokenizer.padding_side
            tokenizer.padding_side = "left"
            try:
                scores[protocol] = free_running_scores(model, tokenizer, subset, seeds=normalise_seeds(list(seeds)),
                                                       max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
                if prompt_only_temperature is not None:
                    # the base model reads every wording alike: the train wordings' rows make the baseline
                    baseline_rows = [r for r in subset if r.get("command_split") != "heldout"]
                    scores["prompt_only"] = prompt_only_scores(
                        model, tokenizer, baseline_rows, seeds=normalise_seeds(list(seeds)), temperature=prompt_only_temperature,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
            finally:
                tokenizer.padding_side = padding_side
        elapsed = time.perf_counter() - start
        logger.info("%s: %d score rows in %.1f s", protocol, len(scores[protocol]), elapsed)
        if timings is not None:
            timings[protocol] = elapsed
    return scores


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path; refuses a file, and a non-empty folder unless ``overwrite`` and written by this tool.

    Raises:
        AnalysisError: ``out`` is a file, or a non-empty folder without ``overwrite`` or without the
            marker of a results folder (``.steerdeco-output`` naming ``analysis``).
    """
    from steerdeco.io import check_replaceable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {out} is a file, not a folder; choose another --out")
    try:
        check_replaceable(out, TOOL, overwrite, "--overwrite (overwrite=True)", AnalysisError)
    except AnalysisError as error:
        raise AnalysisError(f"--out: {error}") from None
    return out


def analyse_scores(
    scores: Mapping[str, pd.DataFrame], n_boot: int = 2000, seed: int = 0, eval_only: bool = True,
    seen: Mapping | None = None,
) -> tuple[str, dict[str, pd.DataFrame]]:
    """``(markdown, tables)`` of the given protocols (and ``prompt_only`` scores) without writing anything (no figures)."""
    from .report import analyse_protocols, render_markdown

    given = {p: s for p, s in scores.items() if p in PROTOCOLS}
    tables, meta = analyse_protocols(given, n_boot=n_boot, seed=seed, eval_only=eval_only,
                                     prompt_only=scores.get("prompt_only"), seen=seen)
    return render_markdown(tables, None, meta), tables


def _run_section(run_info: Mapping) -> str:
    lines = ["## Run", ""]
    for key in ("heads", "model", "data", "protocols", "seeds", "split", "max_groups", "max_new_tokens",
                "free_running_groups", "free_running_variants", "prompt_only_temperature"):
        if run_info.get(key) is not None:
            value = run_info[key]
            value = ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else value
            lines.append(f"* {key.replace('_', ' ')}: `{value}`")
    scored = list(run_info.get("n_rows") or run_info.get("protocols") or PROTOCOLS)
    lines += ["", "Raw per-row scores: " + ", ".join(f"`{n}`" for n in _score_files(scored)) +
              " (arrays as lists; `analysis.scores_io.load_results(folder)` reads them back); options in `run.json`.", ""]
    return "\n".join(lines)


def _score_files(protocols) -> list[str]:
    from .scores_io import SCORE_FILES

    return [SCORE_FILES[p] for p in (protocols or PROTOCOLS) if p in SCORE_FILES]  # prompt_only too, when scored


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_results(
    out_dir: str | os.PathLike,
    scores: Mapping[str, pd.DataFrame],
    *,
    overwrite: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    eval_only: bool = True,
    figures: bool = True,
    run_info: Mapping | None = None,
    extra_dirs: Mapping[str, str | os.PathLike] | None = None,
    seen: Mapping | None = None,
    extra_measures: Mapping | None = None,
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Write a results folder: :func:`~analysis.report.write_report`'s files, the raw scores, ``run.json``.

    Everything is assembled in a hidden temporary sibling of ``out_dir`` and renamed into place at
    the end. ``extra_dirs`` (``{name: folder}``) are *moved* into the results under ``name``.
    ``scores`` may also hold ``prompt_only`` (the prompt-only baseline); ``seen``: the named values of
    the train prompts (:func:`analysis.steering.seen_targets`); ``extra_measures``: see
    :func:`analysis.report.analyse_protocols`.

    Raises:
        AnalysisError: ``out_dir`` is a non-empty folder and ``overwrite`` is False, or an unknown protocol.
        ValueError: a main table cannot be computed (e.g. fewer than 2 groups).
    """
    from .plots import atomic_write
    from .report import write_report
    from .scores_io import SCORE_FILES, save_scores

    unknown = sorted(set(scores) - set(PROTOCOLS) - {"prompt_only"})
    if unknown or not set(scores) & set(PROTOCOLS):
        raise AnalysisError(f"scores must be keyed by protocols of {list(PROTOCOLS)}, got {sorted(scores)}")
    out = check_out_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        report_dir = staging / "report"
        markdown, tables = write_report(report_dir, teacher_forced=scores.get("teacher_forced"),
                                        free_running=scores.get("free_running"), n_boot=n_boot, seed=seed,
                                        eval_only=eval_only, figures=figures, prompt_only=scores.get("prompt_only"),
                                        seen=seen, extra_measures=extra_measures)
        for entry in report_dir.iterdir():
            os.replace(entry, staging / entry.name)
        report_dir.rmdir()
        if run_info is not None:
            markdown = markdown.rstrip("\n") + "\n\n" + _run_section(run_info)
            atomic_write(staging / "report.md", lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"), overwrite=True)
            text = json.dumps(dict(run_info), indent=1, default=_json_default) + "\n"
            atomic_write(staging / RUN_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        for protocol, frame in scores.items():
            save_scores(frame, staging / SCORE_FILES[protocol])
        for name, folder in (extra_dirs or {}).items():
            os.replace(folder, staging / name)
        from steerdeco.io import folder_mode, mark_output

        mark_output(staging, TOOL)
        os.chmod(staging, folder_mode())  # mkdtemp makes it private; a results folder should not be
        check_out_dir(out, overwrite)  # it may have appeared meanwhile
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, backup / out.name)
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(backup / out.name, out)
                raise
            finally:
                shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s", out)
    return markdown, tables


def run_analysis(
    model,
    tokenizer,
    rows,
    out_dir: str | os.PathLike | None = None,
    *,
    protocols: Iterable[str] = PROTOCOLS,
    seeds: Iterable[int] = (0, 1, 2),
    max_new_tokens: int = 48,
    batch_size: int = 8,
    split: str = "eval",
    max_groups: int | None = None,
    free_running_groups: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    figures: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    run_info: Mapping | None = None,
    free_running_variants: str | Sequence[str] = DEFAULT_FREE_RUNNING_VARIANTS,
    prompt_only_temperature: float | None = 1.0,
    seen: Mapping | None = None,
    backbone_cache=None,
    max_response_tokens: int | None = None,
    timings: dict | None = None,
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Score an in-memory model on control-data rows and analyse (what ``python -m analysis`` does after loading).

    Args:
        model: an :class:`~steerdeco.AutoDecoModel` (heads attached; its device is used).
        tokenizer: its tokenizer (with a chat template and a pad token).
        rows: control-data rows (a ``datasets.Dataset``, e.g. from
            :func:`steerdeco.control.load_control_data`, or a list of row dicts).
        out_dir: results folder to write (see :func:`write_results`); ``None``: nothing is written and
            the markdown has no figures.
        protocols, seeds, max_new_tokens, batch_size, free_running_groups: scoring (see :func:`score_rows`).
        split, max_groups, seed: which rows (see :func:`select_rows`); ``seed`` also seeds the bootstrap
            and the ``free_running_groups`` subset.
        n_boot, figures, overwrite: the report (see :func:`analysis.report.write_report`).
        run_info: written as ``run.json`` (and summarised in ``report.md``) when given.
        free_running_variants, prompt_only_temperature: which rows generate text, and the
            prompt-only baseline's temperature (None: no baseline); see :func:`score_rows`.
        seen: named values of the train prompts (:func:`analysis.steering.seen_targets`); None:
            taken from the ``train`` rows among ``rows`` (pass every row, ``split`` picks the analysed ones).
        backbone_cache, max_response_tokens: teacher-forced scores from the training's backbone cache
            (see :func:`analysis.collect.teacher_forced_scores`).
        timings: filled with seconds per protocol (``teacher_forced``, ``free_running``) and for the
            statistics and report (``report``).

    Returns:
        ``(markdown, tables)``: the report text and ``{"<protocol>.<name>": DataFrame}``;
        ``tables["teacher_forced.main"]`` is the consistency table (format it with
        :func:`analysis.consistency.format_consistency_table`). The raw variant scores are included
        too, as ``tables["scores.<protocol>"]`` (one row per scored row and seed, arrays per token).

    Raises:
        AnalysisError: bad options or rows (no responses for teacher forcing, no rows of ``split``),
            or a non-empty ``out_dir`` without ``overwrite``.
        ValueError: too few groups for the statistics.
    """
    protocols = normalise_protocols(list(protocols))
    if out_dir is not None:
        check_out_dir(out_dir, overwrite)  # fail before the expensive part
    from .steering import seen_targets

    rows = as_row_list(rows)
    if seen is None:
        seen = seen_targets(rows)
    selected = select_rows(rows, split=split, max_groups=max_groups, seed=seed)
    scores = score_rows(model, tokenizer, selected, protocols, seeds, max_new_tokens, batch_size, progress,
                        free_running_groups=free_running_groups, seed=seed, free_running_variants=free_running_variants,
                        prompt_only_temperature=prompt_only_temperature, backbone_cache=backbone_cache,
                        max_response_tokens=max_response_tokens, timings=timings)
    started = time.perf_counter()
    eval_only = split == "eval"
    if out_dir is None:
        markdown, tables = analyse_scores(scores, n_boot=n_boot, seed=seed, eval_only=eval_only, seen=seen)
    else:
        markdown, tables = write_results(out_dir, scores, overwrite=overwrite, n_boot=n_boot, seed=seed,
                                         eval_only=eval_only, figures=figures, run_info=run_info, seen=seen)
    tables.update({f"scores.{protocol}": frame for protocol, frame in scores.items()})
    if timings is not None:
        timings["report"] = time.perf_counter() - started
    return markdown, tables


# -- the command ----------------------------------------------------------------------------------
@dataclass
class AnalysisResult:
    """What :func:`main` made: the results folder, the report text, the tables and the raw scores."""

    out: Path
    markdown: str
    tables: dict[str, pd.DataFrame]
    scores: dict[str, pd.DataFrame]


def _load_data(config: AnalysisConfig) -> list[dict]:
    from steerdeco.control import ControlDataError, load_control_data

    if not Path(config.data).exists():
        raise AnalysisError(f"--data {config.data}: no such folder or file (build it with python -m steerdeco.build_control_data)")
    try:
        dataset = load_control_data(config.data)
    except ControlDataError as error:
        raise AnalysisError(f"--data {config.data}: {error}") from error
    except (KeyError, TypeError, ValueError) as error:  # datasets refusing rows of another schema
        raise AnalysisError(f"--data {config.data}: not control data built by python -m steerdeco.build_control_data "
                            f"({type(error).__name__}: {error})") from error
    return as_row_list(dataset)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("steerdeco", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run(config: AnalysisConfig) -> AnalysisResult:
    """One analysis run as ``config`` says (what :func:`main` runs after parsing)."""
    out = check_out_dir(config.out, config.overwrite)
    heads_dir = resolve_heads(config.heads)
    model_name = config.model or default_model(heads_dir)
    device = resolve_device(config.device)
    from .steering import seen_targets

    rows = None
    seen = None
    if config.data is not None:
        loaded = _load_data(config)
        seen = seen_targets(loaded)
        rows = select_rows(loaded, config.split, config.max_groups, config.seed, source=f"--data {config.data}")
        if "teacher_forced" in config.protocols:
            check_responses(rows, source=f"--data {config.data}")

    guard_texts = None
    if config.lm_guard:  # before the model: a bad source fails fast
        from .lm_guard import guard_examples, lm_guard

        try:
            trained_on = {r.get("prompt_id") for r in loaded} if config.data is not None else ()  # never score data prompts
            guard_texts = guard_examples(config.lm_guard_source, config.lm_guard, config.seed, exclude_ids=trained_on)
        except ValueError as error:
            raise AnalysisError(f"--lm-guard-source: {error}") from None

    started = time.time()
    logger.info("loading base model %r", model_name)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()  # transformers' weight-loading bar
    try:
        base, tokenizer = load_base(model_name, from_heads=config.model is None)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    check_hidden_size(heads_dir, base, model_name)

    work = None
    owned_work = False
    try:
        if rows is None:
            if config.work_dir is not None:
                work = Path(config.work_dir)
                work.mkdir(parents=True, exist_ok=True)
            else:  # one hidden folder per --out, reused when an interrupted run is started again
                work = out.parent / f".{out.name}.work"
                work.mkdir(parents=True, exist_ok=True)
                owned_work = True
            built = build_rows(config, base, tokenizer, work, model_name)
            seen = seen_targets(built)
            source = f"control data built from --prompts {', '.join(config.prompts)}"
            rows = select_rows(built, config.split, config.max_groups, config.seed, source=source)
        model = attach_heads(heads_dir, base, model_name).to(device)
        logger.info("scoring %d rows (%d groups) with %s", len(rows), len({r["group_id"] for r in rows}), ", ".join(config.protocols))
        scores = score_rows(model, tokenizer, rows, config.protocols, config.seeds, config.max_new_tokens,
                            config.batch_size, config.progress, free_running_groups=config.free_running_groups,
                            seed=config.seed, free_running_variants=config.free_running_variants,
                            prompt_only_temperature=config.prompt_only_temperature if config.prompt_only else None)
        guard = None if guard_texts is None else lm_guard(model, tokenizer, guard_texts, source=config.lm_guard_source,
                                                          seed=config.seed, batch_size=config.batch_size).to_dict()
        options = asdict(config)
        if config.data is not None:  # options of the on-the-fly build did not apply
            for name in BUILD_OPTIONS:
                options.pop(name)
        run_info = {
            **options,
            "heads": str(heads_dir),
            "model": model_name,
            "data": config.data if config.data is not None else (
                f"{WORK_DIR}/control_data" if owned_work else str(work / "control_data")),
            "device": device,
            "n_rows": {p: int(len(s)) for p, s in scores.items()},
            "n_groups": int(len({r["group_id"] for r in rows})),
            "n_groups_scored": {p: int(s["group_id"].nunique()) for p, s in scores.items()},
            "seconds": round(time.time() - started, 1),
            "versions": _versions(),
        }
        try:
            markdown, tables = write_results(
                out, scores, overwrite=config.overwrite, n_boot=config.n_boot, seed=config.seed,
                eval_only=config.split == "eval", figures=config.figures, run_info=run_info,
                extra_dirs={WORK_DIR: work} if owned_work else None, seen=seen,
                extra_measures=None if guard is None else {"lm_guard": guard},
            )
        except AnalysisError:
            raise
        except ValueError as error:
            raise AnalysisError(f"the statistics of {run_info['n_groups']} prompt groups (--split {config.split}) failed: "
                                f"{error}; analyse more groups (--max-groups, --split all, more prompts)") from error
        owned_work = False  # moved into the results
    except BaseException:
        if owned_work and work is not None and work.exists():
            from steerdeco.control.responses import CACHE_FILE

            if (work / CACHE_FILE).is_file():
                logger.warning("kept the generated responses in %s: the same command resumes from them (delete the "
                               "folder to start afresh)", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
        raise
    return AnalysisResult(out, markdown, tables, scores)


def summary_text(result: AnalysisResult) -> str:
    """The consistency table of each protocol, as printed at the end of a run."""
    from .consistency import format_consistency_table

    parts = []
    for protocol in PROTOCOLS:
        key = f"{protocol}.main"
        if key in result.tables:
            parts += [f"{PROTOCOL_LABELS[protocol]} consistency:", format_consistency_table(result.tables[key]), ""]
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in result.out.iterdir()) if result.out.is_dir() else []
    parts.append(f"Wrote {result.out}: {', '.join(entries)}")
    return "\n".join(parts)


def main(args: argparse.Namespace | Sequence[str] | None = None) -> AnalysisResult:
    """Run an analysis from parsed arguments (or an argv list; ``None``: ``sys.argv``) and print its tables."""
    if not isinstance(args, argparse.Namespace):
        args = make_parser().parse_args(args)
    config, log_level = resolve_config(args)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("analysis", "steerdeco"):
        logging.getLogger(name).setLevel(log_level)
    result = run(config)
    print(summary_text(result))
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m analysis``: bad options and inputs exit with status 2 and one line."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        main(args)
    except AnalysisError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
