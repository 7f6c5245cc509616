"""The control-row contract shared by the data build, training and analysis: columns, variants, signed level, splits, and the one reader.

A control row is one prompt under one variant (no command, a low or high command at a level, a
placebo, a command naming a value); the rows of a prompt share a ``group_id`` and a ``response``.
``docs/control_data.md`` describes every column. :func:`load_control_data` is the one reader of a
built control-data folder or JSONL file; :func:`select_split` the one split selection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ControlDataError
from .io import read_jsonl

PROMPT_SPLITS = ("train", "eval")
VARIANTS = ("none", "low", "high", "placebo", "named")
COLUMNS = (
    "group_id",
    "prompt_id",
    "source",
    "category",
    "split",
    "variant",
    "level",
    "command_id",
    "command_split",
    "command",
    "target_temperature",
    "target_top_p",
    "placement",
    "messages",
    "response",
)
#: The columns training reads (a hand-made row set may omit the others).
TRAINING_COLUMNS = ("group_id", "variant", "level", "messages", "response", "split", "command_split")


def features():
    """The ``datasets.Features`` of a control row (fixed, so that all-null columns keep their type)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features(
        {
            "group_id": string,
            "prompt_id": string,
            "source": string,
            "category": string,
            "split": string,
            "variant": string,
            "level": datasets.Value("int64"),
            "command_id": string,
            "command_split": string,
            "command": string,
            "target_temperature": datasets.Value("float64"),
            "target_top_p": datasets.Value("float64"),
            "placement": string,
            "messages": datasets.List({"role": string, "content": string}),
            "response": string,
        }
    )


def rows_to_dataset(rows: Sequence[Mapping]):
    """Rows as a ``datasets.Dataset`` with :func:`features` (columns in :data:`COLUMNS` order)."""
    import datasets

    return datasets.Dataset.from_list([{c: row[c] for c in COLUMNS} for row in rows], features=features())


def signed_level(variant: str, level) -> float:
    """Position of a variant on the randomness scale: low k -> -k, none -> 0, high k -> +k, placebo/named -> NaN.

    A ``named`` command names a value ("temperature 0.3"), whose place against no command depends on
    the prompt; it takes part in no ranking.

    Raises:
        ValueError: an unknown variant, or a low/high variant without an intensity level >= 1.
    """
    if variant == "none":
        return 0.0
    if variant in ("placebo", "named"):
        return math.nan
    if variant not in ("low", "high"):
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if level is None or (isinstance(level, float) and math.isnan(level)) or int(level) < 1:
        raise ValueError(f"a {variant!r} variant needs an intensity level >= 1, got {level!r}")
    return float(-int(level) if variant == "low" else int(level))


def column_names(rows) -> list[str]:
    """The columns of a ``datasets.Dataset`` or of the first row of a list of dicts."""
    if hasattr(rows, "column_names"):
        return list(rows.column_names)
    return list(rows[0]) if len(rows) else []


def check_columns(rows, required: Sequence[str] = TRAINING_COLUMNS, source: str = "the rows",
                  error: type[Exception] = ControlDataError) -> None:
    """Refuse rows (a Dataset or a list of dicts) lacking any of the ``required`` columns.

    Raises:
        error: naming ``source``, the missing columns and how to build control data.
    """
    columns = column_names(rows)
    missing = [c for c in required if c not in columns]
    if missing:
        raise error(
            f"{source}: not control data, it lacks the columns {missing} (has {sorted(columns)}); build it with "
            "python -m steerdeco.build_control_data"
        )


def select_split(rows, split: str):
    """The rows whose ``split`` column equals ``split`` (``"all"``: every row), in data order.

    ``rows``: a ``datasets.Dataset`` (a Dataset comes back) or a list of dicts (a list comes back).
    """
    check_columns(rows, ("split",))
    if split == "all":
        return rows
    if hasattr(rows, "select"):
        return rows.select([i for i, value in enumerate(rows["split"]) if value == split])
    return [row for row in rows if row["split"] == split]


def load_control_data(path: str | os.PathLike, split: str | None = None, required: Sequence[str] = COLUMNS):
    """Built control data as a ``datasets.Dataset``: a ``save_to_disk`` folder (a ``DatasetDict`` is
    concatenated), a JSONL file, or a folder with exactly one JSONL file.

    Args:
        path: the ``--out`` folder of ``python -m steerdeco.build_control_data``, or its ``control_data.jsonl``.
        split: ``"train"`` or ``"eval"`` to keep only those prompts' rows; ``None``: all rows.
        required: the columns the rows must have (training needs :data:`TRAINING_COLUMNS` only).

    Raises:
        ControlDataError: nothing there, a malformed JSONL line (file and line named), no rows, rows
            of mixed schemas, or rows that lack ``required`` columns.
    """
    import datasets

    path = Path(path)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = datasets.concatenate_datasets(list(dataset.values()))
    elif path.is_dir() and len(jsonl := sorted(path.glob("*.jsonl"))) == 1:
        dataset = _read_jsonl(jsonl[0])
    elif path.is_file():
        dataset = _read_jsonl(path)
    elif path.exists():
        raise ControlDataError(f"no control data at {path} (neither a datasets save_to_disk folder nor a folder with "
                               f"exactly one .jsonl file): build it with python -m steerdeco.build_control_data --out {path}")
    else:
        raise ControlDataError(f"control data {path} does not exist; build it with python -m steerdeco.build_control_data")
    check_columns(dataset, required, str(path))
    if split is not None:
        if split not in PROMPT_SPLITS:
            raise ControlDataError(f"split must be 'train', 'eval' or None, got {split!r}")
        dataset = select_split(dataset, split)
    return dataset


def _read_jsonl(path: Path):
    import datasets

    records = [record for _, record in read_jsonl(path, "control data", ControlDataError)]
    if not records:
        raise ControlDataError(f"control data {path} holds no rows")
    typed = all(set(record) == set(COLUMNS) for record in records)
    try:
        return datasets.Dataset.from_list(records, features=features() if typed else None)
    except (TypeError, ValueError) as error:  # pyarrow refusing mixed types in a column
        raise ControlDataError(f"control data {path}: its rows do not share one schema ({error})") from None
