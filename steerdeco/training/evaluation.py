"""Does a model obey randomness commands? Ordering metrics on control data.

For every group (a prompt under several command variants, all sharing one response) and every
command split present in it (``train`` / ``heldout`` phrasings), a *unit* compares the response-mean
temperature (and top-p) of its variants: the unit is *ordered* when
``mean(low) < none < mean(high)`` (levels of one direction averaged; the no-command rows of the
group are the reference of every split; when one direction is missing only the other inequality
is checked). :func:`summarize_ordering` does the arithmetic on per-row means;
:func:`evaluate_ordering` scores rows teacher-forced through a model first. The trainer logs the
same numbers during training and evaluation.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence

logger = logging.getLogger(__name__)

NO_SPLIT = "none"
QUANTITIES = ("temperature", "top_p")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def unit_is_ordered(low: float, none: float, high: float) -> bool | None:
    """``low < none < high`` over the values present (NaN: absent); None when nothing can be compared."""
    present = [v for v in (low, none, high) if not math.isnan(v)]
    if len(present) < 2:
        return None
    return all(a < b for a, b in zip(present, present[1:], strict=False))


def summarize_ordering(records: Sequence[dict]) -> dict:
    """Ordering metrics from per-row means.

    Args:
        records: one dict per control row with ``group_id``, ``variant`` (none/low/high/placebo),
            ``command_split`` (ignored for none rows; None allowed) and the row's response-mean
            ``temperature`` and ``top_p``; extra keys (``prompt_id``, ``split``, ...) are copied into
            the per-unit records.

    Returns:
        ``{"by_command_split": {split: {"units", "temperature_ordered", "top_p_ordered",
        "temperature": {variant: mean}, "top_p": {variant: mean}}}, "units": [...]}``. Shares are in
        [0, 1] (NaN when no unit of that split can be compared); the variant means average the rows
        of the units of that split (the none rows of a group count once per split it has). Each unit
        record holds ``group_id``, ``command_split``, the per-variant means and
        ``temperature_ordered``/``top_p_ordered`` (bool or None).
    """
    by_group: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_group[str(record["group_id"])].append(record)
    units = []
    for group_id, rows in by_group.items():
        references = [r for r in rows if r["variant"] == "none"]
        splits = sorted({str(r.get("command_split")) for r in rows if r["variant"] != "none"})
        for split in splits:
            members = references + [r for r in rows if r["variant"] != "none" and str(r.get("command_split")) == split]
            unit = {"group_id": group_id, "command_split": split}
            for key in ("prompt_id", "split"):
                if key in rows[0]:
                    unit[key] = rows[0][key]
            for quantity in QUANTITIES:
                means = {
                    variant: _mean([float(r[quantity]) for r in members if r["variant"] == variant])
                    for variant in ("low", "none", "high", "placebo")
                }
                unit[quantity] = means
                unit[f"{quantity}_ordered"] = unit_is_ordered(means["low"], means["none"], means["high"])
            units.append(unit)
    summary: dict[str, dict] = {}
    for split in sorted({u["command_split"] for u in units}):
        chosen = [u for u in units if u["command_split"] == split]
        entry: dict = {"units": len(chosen)}
        for quantity in QUANTITIES:
            outcomes = [u[f"{quantity}_ordered"] for u in chosen if u[f"{quantity}_ordered"] is not None]
            entry[f"{quantity}_ordered"] = _mean([float(o) for o in outcomes])
            entry[quantity] = {
                variant: _mean([u[quantity][variant] for u in chosen if not math.isnan(u[quantity][variant])])
                for variant in ("low", "none", "high", "placebo")
            }
        summary[split] = entry
    return {"by_command_split": summary, "units": units}


def evaluate_ordering(
    model,
    tokenizer,
    rows,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Teacher-force every row's response through ``model`` and summarise the ordering.

    Args:
        model: an :class:`~steerdeco.AutoDecoModel` (heads on any base model, peft included).
        tokenizer: its tokenizer (with chat template).
        rows: control-data rows (a ``datasets.Dataset`` or a list of dicts) with ``group_id``,
            ``variant``, ``command_split``, ``messages`` and ``response``; usually the held-out rows
            (``split == "eval"``).
        batch_size: rows per forward.
        progress: show a progress bar.

    Returns:
        :func:`summarize_ordering`'s dict, plus ``"rows"``: one record per row with its metadata and
        response-mean ``temperature``/``top_p``. For example
        ``report["by_command_split"]["train"]["temperature_ordered"]`` is the share of groups whose
        train-phrasing commands order T correctly.
    """
    from ..chat import teacher_forced_parameters

    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("evaluate_ordering needs at least one row")
    missing = [c for c in ("group_id", "variant", "messages", "response") if c not in rows[0]]
    if missing:
        raise ValueError(f"control rows lack the columns {missing}")
    responses = [r["response"] for r in rows]
    was_training = model.training
    model.eval()
    try:
        params = teacher_forced_parameters(model, tokenizer, [r["messages"] for r in rows], responses, batch_size, progress)
    finally:
        model.train(was_training)
    records = []
    for row, (temperature, top_p) in zip(rows, params, strict=True):
        record = {
            key: row.get(key)
            for key in ("group_id", "prompt_id", "variant", "level", "command_id", "command_split", "split")
            if key in row
        }
        record["temperature"] = float(temperature.mean())
        record["top_p"] = float(top_p.mean())
        records.append(record)
    report = summarize_ordering(records)
    report["rows"] = records
    return report
