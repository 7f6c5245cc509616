"""The rows an analysis scores: built control data read, or built on the fly from prompts; one prompt split, a seeded group subset."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from steerdeco.errors import AnalysisError
from steerdeco.rows import select_split

from .options import SPLITS, AnalysisConfig

logger = logging.getLogger(__name__)


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
    present = sorted({str(r["split"]) for r in rows})
    rows = select_split(rows, split)
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


def load_data(config: AnalysisConfig) -> list[dict]:
    """Every row of ``--data`` (:func:`steerdeco.rows.load_control_data`); a bad folder or file is an :class:`AnalysisError`."""
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
