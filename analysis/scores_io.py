"""Save and load *variant scores* (the DataFrames of :mod:`analysis.collect`) as JSON Lines.

One JSON object per row; the per-token ``temperature`` / ``top_p`` arrays are written as lists of
numbers rounded to :data:`DECIMALS` decimals (float32 carries about 7 significant digits, and the
values lie in ``[0, 2]``), non-finite values as ``null``. :func:`load_scores` turns the lists back
into float32 numpy arrays, so ``load_scores(path)`` is ready for every function of ``analysis``.

``python -m analysis`` writes ``<protocol>_scores.jsonl`` into its results folder
(:data:`SCORE_FILES`); :func:`load_results` reads them back.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from steerdeco.io import read_jsonl, write_jsonl

from .schema import validate_scores

logger = logging.getLogger(__name__)

ARRAY_COLUMNS = ("temperature", "top_p")
DECIMALS = 7
#: Protocol -> file name inside a results folder.
SCORE_FILES = {"teacher_forced": "teacher_forced_scores.jsonl", "free_running": "free_running_scores.jsonl",
               "prompt_only": "prompt_only_scores.jsonl"}


def _array_to_list(values) -> list:
    arr = np.round(np.asarray(values, dtype=np.float64).ravel(), DECIMALS)
    if np.isfinite(arr).all():
        return arr.tolist()
    return [float(v) if math.isfinite(v) else None for v in arr.tolist()]


def _plain(value):
    """A JSON-ready version of a scalar cell (numpy scalars unwrapped, NaN -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def score_records(scores: pd.DataFrame) -> Iterator[dict]:
    """The rows of ``scores`` as JSON-ready dicts (arrays as lists)."""
    columns = list(scores.columns)
    for values in scores.itertuples(index=False, name=None):
        record = {}
        for column, value in zip(columns, values, strict=True):
            if column in ARRAY_COLUMNS or isinstance(value, np.ndarray | list | tuple):
                record[column] = None if value is None else _array_to_list(value)
            else:
                record[column] = _plain(value)
        yield record


def save_scores(scores: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``scores`` as JSON Lines at ``path``, atomically.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        TypeError, ValueError: ``scores`` is not a variant-scores DataFrame.
    """
    validate_scores(scores)
    path = write_jsonl(path, score_records(scores), overwrite=overwrite)
    logger.info("wrote %d score rows to %s", len(scores), path)
    return path


def load_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read a file written by :func:`save_scores`; arrays come back as float32 numpy arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a JSON object (file and line named), or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no variant-scores file at {path}")
    records = []
    for _, record in read_jsonl(path, "variant scores", ValueError):
        for column in ARRAY_COLUMNS:
            if column in record:
                values = record[column]
                record[column] = (
                    None if values is None else np.array([math.nan if v is None else v for v in values], dtype=np.float32)
                )
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no score rows")
    scores = pd.DataFrame.from_records(records)
    validate_scores(scores)
    return scores


def load_results(folder: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """``{protocol: scores}`` for every ``<protocol>_scores.jsonl`` in a ``python -m analysis`` results folder.

    Raises:
        FileNotFoundError: the folder does not exist or holds no score file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist")
    found = {protocol: load_scores(folder / name) for protocol, name in SCORE_FILES.items() if (folder / name).is_file()}
    if not found:
        raise FileNotFoundError(
            f"{folder} holds no score files ({', '.join(SCORE_FILES.values())}); it is not a results folder of "
            "python -m analysis"
        )
    return found


def has_results(folder: str | os.PathLike | None) -> bool:
    """True when ``folder`` is a folder with at least one score file."""
    if folder is None:
        return False
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).is_file() for name in SCORE_FILES.values())
