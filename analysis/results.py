"""The results folder of an analysis: report, tables, figures, raw scores and ``run.json``, assembled aside and swapped in whole."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from steerdeco.errors import AnalysisError
from steerdeco.io import atomic_write_text

from .options import PROTOCOLS

logger = logging.getLogger(__name__)


TOOL = "analysis"
RUN_FILE = "run.json"


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path; refuses a file, and a non-empty folder unless ``overwrite`` and written by this tool.

    Raises:
        AnalysisError: ``out`` is a file, or a non-empty folder without ``overwrite`` or without the
            marker of a results folder (``.steerdeco-output`` naming ``analysis``).
    """
    from steerdeco.io import check_output_folder

    return check_output_folder(out, TOOL, overwrite, "--overwrite (overwrite=True)", AnalysisError)


def analyse_scores(
    scores: Mapping[str, pd.DataFrame], n_boot: int = 2000, seed: int = 0, eval_only: bool = True,
    seen: Mapping | None = None, extra_measures: Mapping | None = None,
) -> tuple[str, dict[str, pd.DataFrame]]:
    """``(markdown, tables)`` of the given protocols (and ``prompt_only`` scores) without writing anything (no
    figures); ``extra_measures``: see :func:`analysis.report.analyse_protocols`."""
    from .report import analyse_protocols, render_markdown

    given = {p: s for p, s in scores.items() if p in PROTOCOLS}
    tables, meta = analyse_protocols(given, n_boot=n_boot, seed=seed, eval_only=eval_only,
                                     prompt_only=scores.get("prompt_only"), seen=seen, extra_measures=extra_measures)
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
    from steerdeco.io import mark_output, staged_folder

    from .report import analyse_protocols, write_report_files
    from .scores_io import SCORE_FILES, save_scores

    unknown = sorted(set(scores) - set(PROTOCOLS) - {"prompt_only"})
    if unknown or not set(scores) & set(PROTOCOLS):
        raise AnalysisError(f"scores must be keyed by protocols of {list(PROTOCOLS)}, got {sorted(scores)}")
    out = check_out_dir(out_dir, overwrite)
    given = {p: s for p, s in scores.items() if p in PROTOCOLS}
    tables, meta = analyse_protocols(given, n_boot=n_boot, seed=seed, eval_only=eval_only,
                                     prompt_only=scores.get("prompt_only"), seen=seen, extra_measures=extra_measures)
    with staged_folder(out, recheck=lambda: check_out_dir(out, overwrite)) as staging:  # it may have appeared meanwhile
        appendix = _run_section(run_info) if run_info is not None else None
        markdown = write_report_files(staging, given, tables, meta, figures=figures, eval_only=eval_only, appendix=appendix)
        if run_info is not None:
            atomic_write_text(staging / RUN_FILE, json.dumps(dict(run_info), indent=1, default=_json_default) + "\n")
        for protocol, frame in scores.items():
            save_scores(frame, staging / SCORE_FILES[protocol])
        for name, folder in (extra_dirs or {}).items():
            os.replace(folder, staging / name)
        mark_output(staging, TOOL)
    logger.info("wrote %s", out)
    return markdown, tables
