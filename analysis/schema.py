"""The variant-scores schema: its columns, labels and checks, and the per-row means every table reads.

Input schema: *variant scores*
-------------------------------
Every table of the analysis takes a pandas DataFrame with one row per measured variant instance (one
conversation, one seed):

=================  ==========  ==============================================================
column             type        meaning
=================  ==========  ==============================================================
``group_id``       str / int   the prompt group; all variants of one prompt share it
``prompt_id``      str / int   the underlying prompt
``variant``        str         ``none`` | ``low`` | ``high`` | ``placebo``
``level``          int         command intensity 1..3 for low/high (0 or anything for none)
``command_id``     str         which phrasing of the command (None for ``none``)
``command_split``  str         ``train`` | ``heldout`` phrasing
``placement``      str         ``before`` | ``after`` | ``system``
``split``          str         prompt-level ``train`` | ``eval``
``seed``           int         sampling seed; 0 for teacher-forced rows
``temperature``    1-D array   per-token predicted T along the response
``top_p``          1-D array   per-token predicted P along the response
``text``           str         optional: the generated text (free-running only)
``target_temperature`` float   optional: the absolute temperature a command asks for
=================  ==========  ==============================================================

:func:`add_means` adds ``mean_temperature``, ``mean_top_p`` (NaN-aware means of the arrays) and
``n_tokens``. The functions below add them when missing, so passing rows that already carry the
scalar means (and no arrays) works too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from steerdeco.rows import VARIANTS, signed_level

COMMANDED = ("low", "high", "placebo")
#: Sign a commanded variant should move the metric (0: placebo, should not move it; a named value's
#: direction depends on the prompt, so ``named`` rows have their own measures in analysis.steering).
DIRECTIONS = {"low": -1, "high": 1, "placebo": 0}
LABELS = {"none": "Baseline", "low": "Low", "high": "High", "placebo": "Placebo", "named": "Named value"}
#: Per-token array column -> scalar mean column.
METRICS = {"temperature": "mean_temperature", "top_p": "mean_top_p"}
METRIC_LABELS = {"temperature": "T", "top_p": "top-p"}
REQUIRED_COLUMNS = (
    "group_id",
    "prompt_id",
    "variant",
    "level",
    "command_id",
    "command_split",
    "placement",
    "split",
    "seed",
    "temperature",
    "top_p",
)
BREAKDOWNS = ("command_id", "command_split", "placement", "level")


def validate_scores(scores: pd.DataFrame, required: Sequence[str] = ("group_id", "variant", "seed")) -> None:
    """Raise a clear error when ``scores`` is not a variant-scores DataFrame.

    Raises:
        TypeError: not a DataFrame.
        ValueError: empty, missing columns, or unknown ``variant`` values.
    """
    if not isinstance(scores, pd.DataFrame):
        raise TypeError(f"variant scores must be a pandas DataFrame, got {type(scores).__name__}")
    if scores.empty:
        raise ValueError("variant scores are empty (no rows)")
    missing = [c for c in required if c not in scores.columns]
    if missing:
        raise ValueError(f"variant scores lack columns {missing}; have {list(scores.columns)}")
    if "variant" in scores.columns:
        unknown = sorted(set(scores["variant"].dropna().astype(str)) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown variant values {unknown}; expected some of {list(VARIANTS)}")


def array_mean(values) -> float:
    """Mean of the finite entries of a 1-D array-like; NaN when it has none (or is None)."""
    if values is None:
        return math.nan
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def add_means(scores: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``scores`` with ``mean_temperature``, ``mean_top_p`` and ``n_tokens`` added.

    Computed from the ``temperature`` / ``top_p`` arrays when those columns exist (existing mean
    columns are then overwritten); ``n_tokens`` is the length of the ``temperature`` array.
    """
    validate_scores(scores, required=())
    out = scores.copy()
    for array_col, mean_col in METRICS.items():
        if array_col in out.columns:
            out[mean_col] = [array_mean(a) for a in out[array_col]]
    if "temperature" in out.columns:
        out["n_tokens"] = [0 if a is None else int(np.asarray(a).size) for a in out["temperature"]]
    return out


def prepare_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with the mean columns added once when they are missing (no copy otherwise)."""
    if any(a in scores.columns and m not in scores.columns for a, m in METRICS.items()):
        return add_means(scores)
    return scores


def ensure_metric(scores: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """Resolve ``metric`` (``temperature``, ``top_p`` or any numeric column) to a scalar column."""
    column = METRICS.get(metric, metric)
    if column not in scores.columns:
        if metric in METRICS and metric in scores.columns:
            scores = add_means(scores)
        else:
            raise ValueError(f"no column for metric {metric!r} (looked for {column!r})")
    return scores, column


def add_signed_level(scores: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``scores`` with a float ``signed_level`` column (see :func:`signed_level`)."""
    out = scores.copy()
    out["signed_level"] = [signed_level(v, lv) for v, lv in zip(out["variant"], out["level"], strict=True)]
    return out
