"""Write a build atomically: a ``datasets`` folder, a JSONL file, ``summary.json`` (read back by :func:`steerdeco.rows.load_control_data`).

An output folder holds ``data-00000-of-00001.arrow``, ``dataset_info.json`` and ``state.json``
(``datasets.Dataset.save_to_disk``), ``control_data.jsonl`` (the same rows, one JSON object per
line), ``summary.json`` (counts and the build settings) and the marker ``.steerdeco-output`` naming
this tool. Everything is written into a temporary sibling folder that is renamed into place at the
end; with ``overwrite`` the old folder is only removed once the new one is complete, and only when
its marker says this tool wrote it (never a folder of anything else).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import ControlDataError
from ..io import check_output_folder, mark_output, staged_folder, to_jsonl
from ..rows import COLUMNS, rows_to_dataset

logger = logging.getLogger(__name__)

JSONL_NAME = "control_data.jsonl"
SUMMARY_NAME = "summary.json"
NONE_KEY = "none"
TOOL = "steerdeco.build_control_data"


def rows_to_jsonl(rows: Iterable[Mapping]) -> str:
    """One JSON object per row, keys in :data:`~steerdeco.rows.COLUMNS` order, UTF-8 kept as is."""
    return to_jsonl({c: row[c] for c in COLUMNS} for row in rows)


def _key(value: object) -> str:
    return NONE_KEY if value is None else str(value)


def _count(rows: Sequence[Mapping], *columns: str) -> dict:
    """Nested counts ``{value of column 1: {value of column 2: n}}``, keys sorted."""
    if len(columns) == 1:
        counts = Counter(_key(row[columns[0]]) for row in rows)
        return {k: counts[k] for k in sorted(counts)}
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(_key(row[columns[0]]), []).append(row)
    return {k: _count(groups[k], *columns[1:]) for k in sorted(groups)}


def summarize(rows: Sequence[Mapping], dropped: Sequence[str] = (), settings: Mapping | None = None) -> dict:
    """Counts by direction (variant), level, prompt split, phrasing split and placement, and more."""
    groups = [row for row in rows if row["variant"] == "none"]
    return {
        "rows": len(rows),
        "groups": len(groups),
        "prompts_by_split": _count(groups, "split"),
        "prompts_by_source": _count(groups, "source"),
        "prompts_by_category_and_split": _count(groups, "category", "split"),
        "rows_by_variant": _count(rows, "variant"),
        "rows_by_variant_and_level": _count(rows, "variant", "level"),
        "rows_by_split": _count(rows, "split"),
        "rows_by_command_split": _count(rows, "command_split"),
        "rows_by_split_and_command_split": _count(rows, "split", "command_split"),
        "rows_by_placement": _count(rows, "placement"),
        "rows_with_target_temperature": sum(row["target_temperature"] is not None for row in rows),
        "rows_with_target_top_p": sum(row.get("target_top_p") is not None for row in rows),
        "rows_with_response": sum(row["response"] is not None for row in rows),
        "distinct_commands": len({row["command_id"] for row in rows if row["command_id"] is not None}),
        "dropped_prompts": list(dropped),
        "settings": dict(settings or {}),
    }


def log_summary(summary: Mapping) -> None:
    """Log a build's counts: rows and groups, then rows per variant, split and placement, and dropped prompts."""
    logger.info(
        "%d rows in %d groups; prompts by split %s", summary["rows"], summary["groups"], summary["prompts_by_split"]
    )
    for name in ("rows_by_variant_and_level", "rows_by_split_and_command_split", "rows_by_placement"):
        logger.info("%s: %s", name, json.dumps(summary[name]))
    if summary["dropped_prompts"]:
        logger.warning("dropped %d prompts: %s", len(summary["dropped_prompts"]), summary["dropped_prompts"])


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path; refuses a folder with content unless ``overwrite`` and it was built by this tool.

    Raises:
        ControlDataError: ``out`` is a file, or a non-empty folder without ``overwrite`` or not written
            by ``build_control_data`` (no marker naming it).
    """
    return check_output_folder(out, TOOL, overwrite, "--overwrite", ControlDataError)


def write_output(rows: Sequence[Mapping], summary: Mapping, out: str | Path, overwrite: bool = False) -> Path:
    """Write the dataset, the JSONL file and ``summary.json`` into ``out``, atomically.

    Raises:
        ControlDataError: ``out`` exists and ``overwrite`` is false.
    """
    import datasets

    out = check_output_dir(out, overwrite)
    with staged_folder(out, recheck=lambda: check_output_dir(out, overwrite)) as tmp:  # it may have appeared meanwhile
        dataset = rows_to_dataset(rows)
        enabled = not datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a bar for a sub-second save is noise
        try:
            dataset.save_to_disk(str(tmp))
        finally:
            if enabled:
                datasets.enable_progress_bars()
        (tmp / JSONL_NAME).write_text(rows_to_jsonl(rows), encoding="utf-8")
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        mark_output(tmp, TOOL)
    return out
