"""Effect tables: do the predicted T and P move the way a command asks? Commanded rows paired with the no-command row, per cell.

Pairing and the statistics: :mod:`analysis.statistics`; the input: :mod:`analysis.schema`.

Tidy output
-----------
:func:`effect_table` returns one row per ``(metric, variant, *by)`` with the columns of
:data:`EFFECT_COLUMNS`; the ``none`` (Baseline) row carries only ``mean_value`` and ``n_groups``.
:func:`format_consistency_table` lays it out as the paper's table and :func:`markdown_table` is a
small dependency-free Markdown formatter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from steerdeco.rows import VARIANTS, signed_level

from .schema import (
    BREAKDOWNS,
    COMMANDED,
    DIRECTIONS,
    add_signed_level,
    ensure_metric,
    prepare_scores,
    validate_scores,
)
from .statistics import STAT_COLUMNS, paired_stats, spearman

logger = logging.getLogger(__name__)


EFFECT_COLUMNS = ("metric", "variant") + STAT_COLUMNS


def baseline_values(scores: pd.DataFrame, metric: str = "temperature") -> pd.DataFrame:
    """No-command value per ``(group_id, seed)``: columns ``group_id, seed, baseline``."""
    validate_scores(scores)
    scores, column = ensure_metric(scores, metric)
    none = scores[scores["variant"] == "none"]
    return none.groupby(["group_id", "seed"], sort=True)[column].mean().rename("baseline").reset_index()


def paired_differences(
    scores: pd.DataFrame,
    metric: str = "temperature",
    by: Sequence[str] = (),
    variants: Iterable[str] = COMMANDED,
) -> pd.DataFrame:
    """One paired difference per ``(group_id, variant, *by)`` cell.

    Each commanded row is paired with the group's no-command value of the same seed; the row
    differences are then averaged within the cell.

    Returns:
        DataFrame with columns ``group_id, variant, *by, value`` (mean commanded value),
        ``baseline`` (mean paired no-command value), ``delta`` (mean paired difference) and
        ``n_rows`` (rows averaged). Rows without a finite value or a baseline are dropped (logged).
    """
    by = [by] if isinstance(by, str) else list(by)
    validate_scores(scores, required=("group_id", "variant", "seed", *by))
    scores, column = ensure_metric(scores, metric)
    base = baseline_values(scores, metric)
    commanded = scores[scores["variant"].isin(list(variants))]
    merged = commanded.merge(base, on=["group_id", "seed"], how="left")
    no_base = merged["baseline"].isna()
    if no_base.any():
        logger.warning(
            "%d commanded rows (%d groups) have no no-command row of the same group and seed; dropped",
            int(no_base.sum()),
            merged.loc[no_base, "group_id"].nunique(),
        )
    finite = np.isfinite(merged[column].to_numpy(dtype=float))
    if (~finite & ~no_base.to_numpy()).any():
        logger.warning("%d commanded rows have no finite %s (empty response?); dropped",
                       int((~finite & ~no_base.to_numpy()).sum()), metric)
    keep = finite & ~no_base.to_numpy()
    merged = merged[keep].copy()
    merged["value"] = merged[column].astype(float)
    merged["delta"] = merged["value"] - merged["baseline"]
    keys = ["group_id", "variant", *by]
    if merged.empty:
        return pd.DataFrame(columns=keys + ["value", "baseline", "delta", "n_rows"])
    out = (
        merged.groupby(keys, sort=True, dropna=False)
        .agg(value=("value", "mean"), baseline=("baseline", "mean"), delta=("delta", "mean"), n_rows=("delta", "size"))
        .reset_index()
    )
    return out


def _variant_order(values: pd.Series) -> pd.Series:
    return values.map({v: i for i, v in enumerate(VARIANTS)}).fillna(len(VARIANTS))


def effect_table(
    scores: pd.DataFrame,
    by: Sequence[str] | str = (),
    metrics: Sequence[str] = ("temperature", "top_p"),
    variants: Iterable[str] = COMMANDED,
    n_boot: int = 2000,
    seed: int = 0,
    min_groups: int = 2,
    include_baseline: bool = True,
    strict: bool = False,
) -> pd.DataFrame:
    """Paired effect of each commanded variant against the no-command baseline, per ``by`` cell.

    Args:
        scores: variant scores (module docstring).
        by: breakdown columns, e.g. ``"command_id"`` or ``("command_split",)``; ``()`` for the
            main table (all phrasings / levels / placements of a direction averaged per group).
        metrics: ``temperature``, ``top_p`` or any numeric column of ``scores``.
        variants: commanded variants to compare with ``none``.
        n_boot, seed: bootstrap settings (:func:`paired_stats`).
        min_groups: cells with fewer paired groups are left out (logged), or raise if ``strict``.
        include_baseline: add the ``none`` row (``mean_value`` = mean no-command value over groups).
        strict: raise instead of skipping small cells.

    Returns:
        Tidy DataFrame: ``metric, variant, *by`` + :data:`STAT_COLUMNS`, variants ordered
        none / low / high / placebo.

    Raises:
        ValueError: no commanded cell with at least ``min_groups`` groups, or a small cell when
        ``strict``.
    """
    by = [by] if isinstance(by, str) else list(by)
    min_groups = max(2, int(min_groups))
    validate_scores(scores, required=("group_id", "variant", "seed", *by))
    scores = prepare_scores(scores)
    rows: list[dict] = []
    n_cells = skipped = 0
    for metric in metrics:
        if include_baseline:
            base = baseline_values(scores, metric)
            per_group = base.groupby("group_id")["baseline"].mean().dropna()
            if len(per_group):
                row = {"metric": metric, "variant": "none", **{b: None for b in by}}
                row.update({c: math.nan for c in STAT_COLUMNS})
                row.update(n_groups=int(len(per_group)), mean_value=float(per_group.mean()))
                rows.append(row)
        pairs = paired_differences(scores, metric, by=by, variants=variants)
        if pairs.empty:
            continue
        for keys, cell in pairs.groupby(["variant", *by], sort=True, dropna=False):
            keys = keys if isinstance(keys, tuple) else (keys,)
            variant, cell_keys = keys[0], dict(zip(by, keys[1:], strict=True))
            if len(cell) < min_groups:
                where = ", ".join(f"{k}={v!r}" for k, v in cell_keys.items())
                message = (
                    f"{variant}{f' ({where})' if where else ''}, {metric}: only {len(cell)} group(s) with a paired "
                    f"no-command baseline, need at least {min_groups} groups"
                )
                if strict:
                    raise ValueError(message)
                logger.debug("%s; cell left out", message)
                skipped += 1
                continue
            row = {"metric": metric, "variant": variant, **cell_keys}
            row.update(paired_stats(cell["delta"].to_numpy(), DIRECTIONS.get(variant, 0), n_boot, seed))
            row.update(mean_value=float(cell["value"].mean()), mean_baseline=float(cell["baseline"].mean()))
            rows.append(row)
            n_cells += 1
    if skipped:
        logger.info(
            "%d cell(s) of the table by %s have fewer than %d groups and are left out", skipped, by or "variant", min_groups
        )
    if n_cells == 0:
        n_groups = scores["group_id"].nunique() if "group_id" in scores.columns else 0
        raise ValueError(
            f"no commanded cell has at least {min_groups} groups with a paired no-command baseline "
            f"({n_groups} group(s) in the data; by={by or 'nothing'})"
        )
    table = pd.DataFrame(rows, columns=["metric", "variant", *by, *STAT_COLUMNS])
    table["_order"] = _variant_order(table["variant"])
    metric_order = {m: i for i, m in enumerate(metrics)}
    table["_metric"] = table["metric"].map(metric_order)
    table = table.sort_values(["_metric", "_order", *by], kind="stable").drop(columns=["_order", "_metric"])
    return table.reset_index(drop=True)


def consistency_table(scores: pd.DataFrame, n_boot: int = 2000, seed: int = 0, by: Sequence[str] | str = ()) -> pd.DataFrame:
    """The paper's main table (Baseline / Low / High / Placebo), tidy; see :func:`effect_table`.

    Strict: raises ``ValueError`` when any direction has fewer than 2 paired groups.
    """
    return effect_table(scores, by=by, n_boot=n_boot, seed=seed, strict=not by)


def breakdowns(
    scores: pd.DataFrame, columns: Sequence[str] = BREAKDOWNS, n_boot: int = 2000, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """``{"by_<column>": effect_table(scores, by=column)}`` for each breakdown column present."""
    out = {}
    for column in columns:
        if column not in scores.columns:
            logger.warning("no %r column; breakdown skipped", column)
            continue
        try:
            out[f"by_{column}"] = effect_table(scores, by=column, n_boot=n_boot, seed=seed, include_baseline=False)
        except ValueError as err:
            logger.warning("breakdown by %s skipped: %s", column, err)
    return out


def dose_response(
    scores: pd.DataFrame, metrics: Sequence[str] = ("temperature", "top_p"), n_boot: int = 2000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Effect per command level and Spearman dose-response.

    Returns:
        ``(levels, spearman)``. ``levels``: :func:`effect_table` by ``level`` for low/high with a
        ``signed_level`` column. ``spearman``: one row per ``(metric, on)`` with ``n, rho, p``,
        where ``on == "delta"`` correlates the signed level (low k -> -k, high k -> +k) with the
        per-group paired difference, and ``on == "mean"`` correlates the signed level (none -> 0)
        with the per-group mean value of that level.
    """
    scores = prepare_scores(scores)
    levels = effect_table(scores, by="level", metrics=metrics, variants=("low", "high"), n_boot=n_boot, seed=seed,
                          include_baseline=False)
    levels.insert(2, "signed_level", [signed_level(v, lv) for v, lv in zip(levels["variant"], levels["level"], strict=True)])
    rows = []
    for metric in metrics:
        pairs = paired_differences(scores, metric, by="level", variants=("low", "high"))
        x = np.array([signed_level(v, lv) for v, lv in zip(pairs["variant"], pairs["level"], strict=True)], dtype=float)
        rows.append({"metric": metric, "on": "delta", **spearman(x, pairs["delta"].to_numpy(dtype=float))})
        scored, column = ensure_metric(scores[scores["variant"].isin(["none", "low", "high"])], metric)
        scored = add_signed_level(scored)
        cell = scored.groupby(["group_id", "signed_level"])[column].mean().reset_index()
        rows.append({"metric": metric, "on": "mean", **spearman(cell["signed_level"].to_numpy(float), cell[column].to_numpy(float))})
    return levels, pd.DataFrame(rows, columns=["metric", "on", "n", "rho", "p"])


def target_tracking(scores: pd.DataFrame) -> pd.DataFrame:
    """How predicted mean T follows absolute commands (rows with a ``target_temperature``).

    Returns:
        One row per target value: ``target_temperature, n_rows, mean_temperature, sd, mae``
        (mean absolute error of the row means against the target); empty when no row has a target.
    """
    columns = ["target_temperature", "n_rows", "mean_temperature", "sd", "mae"]
    if "target_temperature" not in scores.columns:
        return pd.DataFrame(columns=columns)
    scored, column = ensure_metric(scores, "temperature")
    target = pd.to_numeric(scored["target_temperature"], errors="coerce")
    scored = scored.assign(target_temperature=target)[target.notna()]
    if scored.empty:
        return pd.DataFrame(columns=columns)
    err = (scored[column] - scored["target_temperature"]).abs()
    out = (
        scored.assign(_err=err)
        .groupby("target_temperature")
        .agg(n_rows=(column, "size"), mean_temperature=(column, "mean"), sd=(column, "std"), mae=("_err", "mean"))
        .reset_index()
    )
    return out[columns]
