"""Is a command's effect a constant shift of T, or token-level change?

Teacher-forced variant scores only (schema in :mod:`analysis.schema`): every variant of a
group scores the same response, so the per-token values align. For each commanded row and its
group's no-command row of the same seed, the per-token difference ``d = x_cmd - x_none`` (length
L, ``x`` = T or P) splits exactly into

    SS_total = sum(d**2) = SS_shift + SS_residual,   SS_shift = L * mean(d)**2,
                                                     SS_residual = sum((d - mean(d))**2)

``share_shift = SS_shift / SS_total`` is the share explained by a constant shift (1: a pure
offset; 0: zero-mean token-level change). The *MeanShift* baseline predicts the commanded values
as ``x_none + shift``; with the row's own mean change as the shift (an oracle constant) its
per-token RMSE is ``sqrt(SS_residual / L)``; ``rmse_meanshift_global`` uses one shift per variant
(the mean over groups of the per-group mean change, fitted in-sample), the offset a fixed
"command = add c" rule would apply; ``rmse_unchanged = sqrt(SS_total / L)`` predicts no change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from steerdeco.rows import VARIANTS

from .schema import COMMANDED, validate_scores
from .statistics import bootstrap_means

logger = logging.getLogger(__name__)

INSTANCE_COLUMNS = (
    "metric",
    "group_id",
    "variant",
    "level",
    "command_id",
    "command_split",
    "placement",
    "seed",
    "n_tokens",
    "mean_shift",
    "ss_total",
    "ss_shift",
    "ss_residual",
    "share_shift",
    "rmse_unchanged",
    "rmse_meanshift",
    "rmse_meanshift_global",
)
SUMMARY_COLUMNS = (
    "n_groups",
    "n_instances",
    "mean_shift",
    "pooled_share_shift",
    "share_shift",
    "share_shift_lo",
    "share_shift_hi",
    "rmse_unchanged",
    "rmse_meanshift",
    "rmse_meanshift_global",
)


def split_sum_of_squares(d) -> dict[str, float]:
    """``n_tokens, mean_shift, ss_total, ss_shift, ss_residual, share_shift`` of one difference array.

    ``share_shift`` is NaN when ``ss_total == 0`` (no change at all) or the array is empty.
    """
    d = np.asarray(d, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return {"n_tokens": 0, "mean_shift": math.nan, "ss_total": math.nan, "ss_shift": math.nan,
                "ss_residual": math.nan, "share_shift": math.nan}
    mean = float(d.mean())
    ss_total = float(np.sum(d * d))
    ss_shift = n * mean * mean
    ss_residual = float(np.sum((d - mean) ** 2))
    return {
        "n_tokens": int(n),
        "mean_shift": mean,
        "ss_total": ss_total,
        "ss_shift": ss_shift,
        "ss_residual": ss_residual,
        "share_shift": ss_shift / ss_total if ss_total > 0 else math.nan,
    }


def _baselines(none: pd.DataFrame, metric: str) -> dict[tuple, np.ndarray]:
    """Per ``(group_id, seed)`` the no-command array (rows of equal length averaged)."""
    out = {}
    for key, rows in none.groupby(["group_id", "seed"], sort=True):
        arrays = [np.asarray(a, dtype=float).ravel() for a in rows[metric]]
        lengths = {a.size for a in arrays}
        if len(lengths) > 1:
            raise ValueError(
                f"group {key[0]!r} seed {key[1]} has no-command rows of different lengths {sorted(lengths)}: the "
                "decomposition needs teacher-forced rows (every variant scores the same response)"
            )
        out[key] = np.mean(arrays, axis=0)
    return out


def _check_teacher_forced(scores: pd.DataFrame) -> None:
    if "text" not in scores.columns:
        return
    texts = scores[scores["text"].notna()]
    if texts.empty:
        return
    varied = texts.groupby(["group_id", "seed"])["text"].nunique()
    if (varied > 1).any():
        group_id, seed = varied[varied > 1].index[0]
        raise ValueError(
            f"group {group_id!r} seed {seed} has different texts per variant: these look like free-running rows; "
            "the decomposition needs teacher-forced rows (every variant scores the same response)"
        )


def decompose_shift(
    scores: pd.DataFrame, metric: str = "temperature", variants: Iterable[str] = COMMANDED
) -> pd.DataFrame:
    """Per commanded row: the shift / token-level split of its difference from the no-command row.

    Args:
        scores: teacher-forced variant scores.
        metric: ``temperature`` or ``top_p`` (an array column).
        variants: commanded variants to decompose.

    Returns:
        DataFrame with :data:`INSTANCE_COLUMNS`, one row per commanded row that has a no-command
        row of the same group and seed (others dropped, logged).

    Raises:
        ValueError: a commanded row and its no-command row differ in length, or the rows carry
        different texts within a group (free-running data); no row could be paired.
    """
    validate_scores(scores, required=("group_id", "variant", "seed", metric))
    _check_teacher_forced(scores)
    base = _baselines(scores[scores["variant"] == "none"], metric)
    commanded = scores[scores["variant"].isin(list(variants))]
    records, diffs, missing = [], [], 0
    for _, row in commanded.iterrows():
        key = (row["group_id"], row["seed"])
        if key not in base:
            missing += 1
            continue
        x = np.asarray(row[metric], dtype=float).ravel()
        if x.size != base[key].size:
            raise ValueError(
                f"group {key[0]!r} seed {key[1]}: the {row['variant']!r} row has {x.size} tokens but the no-command "
                f"row has {base[key].size}; the decomposition needs teacher-forced rows (every variant scores the "
                "same response), not free-running ones"
            )
        d = x - base[key]
        record = {"metric": metric, **{c: row.get(c) for c in ("group_id", "variant", "level", "command_id",
                                                                   "command_split", "placement", "seed")}}
        record.update(split_sum_of_squares(d))
        n = record["n_tokens"]
        record["rmse_unchanged"] = math.sqrt(record["ss_total"] / n) if n else math.nan
        record["rmse_meanshift"] = math.sqrt(record["ss_residual"] / n) if n else math.nan
        records.append(record)
        diffs.append(d[np.isfinite(d)])
    if missing:
        logger.warning("%d commanded rows have no no-command row of the same group and seed; dropped", missing)
    if not records:
        raise ValueError("no commanded row could be paired with a no-command row of the same group and seed")
    out = pd.DataFrame.from_records(records)
    global_shift = out.groupby(["variant", "group_id"])["mean_shift"].mean().groupby("variant").mean()
    out["rmse_meanshift_global"] = [
        math.sqrt(float(np.mean((d - global_shift[v]) ** 2))) if d.size else math.nan
        for d, v in zip(diffs, out["variant"], strict=True)
    ]
    return out[list(INSTANCE_COLUMNS)]


def decomposition_summary(
    instances: pd.DataFrame, by: Sequence[str] | str = (), n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> pd.DataFrame:
    """Summary of :func:`decompose_shift` rows per ``(metric, variant, *by)``.

    Instance values are averaged within each group first; ``share_shift`` is the mean over groups
    (with a percentile bootstrap CI over groups), ``pooled_share_shift = sum SS_shift / sum
    SS_total`` over all instances; RMSEs and ``mean_shift`` are means over groups.

    Returns:
        DataFrame ``metric, variant, *by`` + :data:`SUMMARY_COLUMNS`.
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    order = {v: i for i, v in enumerate(VARIANTS)}
    value_cols = ["mean_shift", "share_shift", "rmse_unchanged", "rmse_meanshift", "rmse_meanshift_global"]
    for keys, cell in instances.groupby(["metric", "variant", *by], sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        per_group = cell.groupby("group_id")[value_cols].mean()
        shares = per_group["share_shift"].dropna().to_numpy()
        lo = hi = math.nan
        if shares.size >= 2:
            rng = np.random.default_rng(seed)
            boot = bootstrap_means(shares[:, None], n_boot, rng)[:, 0]
            lo, hi = (float(v) for v in np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)]))
        ss_total = cell["ss_total"].sum()
        row = dict(zip(["metric", "variant", *by], keys, strict=True))
        row.update(
            n_groups=int(len(per_group)),
            n_instances=int(len(cell)),
            mean_shift=float(per_group["mean_shift"].mean()),
            pooled_share_shift=float(cell["ss_shift"].sum() / ss_total) if ss_total > 0 else math.nan,
            share_shift=float(shares.mean()) if shares.size else math.nan,
            share_shift_lo=lo,
            share_shift_hi=hi,
            rmse_unchanged=float(per_group["rmse_unchanged"].mean()),
            rmse_meanshift=float(per_group["rmse_meanshift"].mean()),
            rmse_meanshift_global=float(per_group["rmse_meanshift_global"].mean()),
        )
        rows.append(row)
    table = pd.DataFrame(rows, columns=["metric", "variant", *by, *SUMMARY_COLUMNS])
    if table.empty:
        return table
    table["_o"] = table["variant"].map(order)
    return table.sort_values(["metric", "_o", *by], kind="stable").drop(columns="_o").reset_index(drop=True)


def decomposition(
    scores: pd.DataFrame, metrics: Sequence[str] = ("temperature", "top_p"), n_boot: int = 2000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(instances, summary)`` of :func:`decompose_shift` / :func:`decomposition_summary` for ``metrics``."""
    instances = pd.concat([decompose_shift(scores, m) for m in metrics], ignore_index=True)
    return instances, decomposition_summary(instances, n_boot=n_boot, seed=seed)


def decomposition_display(summary: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Strings table of :func:`decomposition_summary`."""
    from .formatting import format_ci, format_number
    from .schema import LABELS, METRIC_LABELS

    rows = []
    for _, row in summary.iterrows():
        rows.append(
            {
                "Variant": LABELS.get(row["variant"], row["variant"]),
                "Metric": METRIC_LABELS.get(row["metric"], row["metric"]),
                "n": str(int(row["n_groups"])),
                "Mean shift": format_number(row["mean_shift"], digits),
                "Share of SS from shift": format_ci(row["share_shift"], row["share_shift_lo"], row["share_shift_hi"], digits),
                "Pooled share": format_number(row["pooled_share_shift"], digits),
                "RMSE unchanged": format_number(row["rmse_unchanged"], digits),
                "RMSE MeanShift (own)": format_number(row["rmse_meanshift"], digits),
                "RMSE MeanShift (global)": format_number(row["rmse_meanshift_global"], digits),
            }
        )
    return pd.DataFrame(rows)
