"""Do the predicted T and P move the way a command asks? Paired statistics over prompt groups.

Input schema: *variant scores*
-------------------------------
Every function here takes a pandas DataFrame with one row per measured variant instance (one
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

Pairing and averaging
---------------------
A commanded row is paired with the ``none`` row(s) of the same ``(group_id, seed)`` (teacher
forced: seed 0 only; free running: the same seed), and ``delta = value - baseline``. Deltas are then
averaged *within the group* over all rows of the same cell (phrasings, levels, placements and seeds
of one direction, or of one breakdown value), giving one paired difference per group. Every
statistic treats the groups as the independent units:

* ``consistency``: share of groups whose delta has the commanded sign (low: < 0, high: > 0; a
  delta of exactly 0 is not consistent); undefined (NaN) for placebo;
* ``delta`` and ``consistency`` 95% percentile bootstrap CIs (groups resampled with replacement,
  ``numpy.random.default_rng(seed)`` for every cell, so a cell's CI does not depend on the others);
* two-sided paired sign test (:func:`scipy.stats.binomtest` on the non-zero deltas) and Wilcoxon
  signed-rank test (:func:`scipy.stats.wilcoxon`; p = 1.0 when every delta is 0);
* effect sizes: Cohen's ``d_z = mean(delta) / sd(delta)`` (NaN when sd = 0) and the matched-pairs
  rank-biserial correlation ``(R+ - R-) / (R+ + R-)`` (NaN when every delta is 0).

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
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from steerdeco.rows import VARIANTS, signed_level

logger = logging.getLogger(__name__)

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
STAT_COLUMNS = (
    "n_groups",
    "mean_value",
    "mean_baseline",
    "delta",
    "delta_lo",
    "delta_hi",
    "abs_delta",
    "abs_delta_lo",
    "abs_delta_hi",
    "consistency",
    "consistency_lo",
    "consistency_hi",
    "p_sign",
    "p_wilcoxon",
    "d_z",
    "rank_biserial",
)
EFFECT_COLUMNS = ("metric", "variant") + STAT_COLUMNS
BREAKDOWNS = ("command_id", "command_split", "placement", "level")


# --------------------------------------------------------------------------------------------- input


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


def _ensure_metric(scores: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
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


# ------------------------------------------------------------------------------------------- pairing


def baseline_values(scores: pd.DataFrame, metric: str = "temperature") -> pd.DataFrame:
    """No-command value per ``(group_id, seed)``: columns ``group_id, seed, baseline``."""
    validate_scores(scores)
    scores, column = _ensure_metric(scores, metric)
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
    scores, column = _ensure_metric(scores, metric)
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


# ------------------------------------------------------------------------------------------ statistics


def _bootstrap_means(columns: np.ndarray, n_boot: int, rng: np.random.Generator, chunk_cells: int = 2_000_000) -> np.ndarray:
    """Bootstrap means of each column of ``columns [n, k]`` -> ``[n_boot, k]`` (rows resampled)."""
    n = columns.shape[0]
    out = np.empty((n_boot, columns.shape[1]))
    step = max(1, chunk_cells // max(n, 1))
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = columns[idx].mean(axis=1)
    return out


def sign_test_p(d: np.ndarray) -> float:
    """Two-sided paired sign test on the non-zero differences; 1.0 when every difference is 0."""
    d = np.asarray(d, dtype=float)
    nonzero = int(np.count_nonzero(d))
    if nonzero == 0:
        return 1.0
    return float(stats.binomtest(int((d > 0).sum()), nonzero, 0.5, alternative="two-sided").pvalue)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every difference is 0 (scipy would raise).

    Exact null distribution for up to 50 non-zero differences without ties, else the normal
    approximation (zeros dropped, tie-corrected); never scipy's slow permutation fallback.
    """
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return 1.0
    exact = nonzero.size <= 50 and np.unique(np.abs(nonzero)).size == nonzero.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(stats.wilcoxon(nonzero, alternative="two-sided", method="exact" if exact else "asymptotic").pvalue)
        except ValueError:
            return 1.0


def cohens_dz(d: np.ndarray) -> float:
    """Paired Cohen's d_z = mean / sd (ddof 1); NaN with fewer than 2 values or sd = 0."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    return float(d.mean() / sd) if sd > 0 else math.nan


def rank_biserial(d: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-) over non-zero differences."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return math.nan
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def paired_stats(delta, direction: int = 0, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Statistics of one set of per-group paired differences.

    Args:
        delta: per-group differences (NaNs dropped).
        direction: -1 (should go down), +1 (up) or 0 (no direction: consistency is NaN).
        n_boot: bootstrap resamples of the groups.
        seed: seed of the ``numpy.random.default_rng`` used for the bootstrap.
        ci: confidence level of the percentile intervals.

    Returns:
        dict with the :data:`STAT_COLUMNS` except ``mean_value`` / ``mean_baseline``.

    Raises:
        ValueError: fewer than 2 finite differences.
    """
    d = np.asarray(delta, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise ValueError(
            f"need paired differences from at least 2 groups (prompts with both a commanded and a "
            f"no-command variant), got {d.size}"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    hits = (np.sign(d) == direction).astype(float) if direction else np.zeros_like(d)
    boot = _bootstrap_means(np.column_stack([d, np.abs(d), hits]), n_boot, rng)
    q = [50 * (1 - ci), 50 * (1 + ci)]
    (d_lo, d_hi), (a_lo, a_hi), (c_lo, c_hi) = (np.percentile(boot[:, k], q) for k in range(3))
    nan = math.nan
    return {
        "n_groups": int(d.size),
        "delta": float(d.mean()),
        "delta_lo": float(d_lo),
        "delta_hi": float(d_hi),
        "abs_delta": float(np.abs(d).mean()),
        "abs_delta_lo": float(a_lo),
        "abs_delta_hi": float(a_hi),
        "consistency": float(hits.mean()) if direction else nan,
        "consistency_lo": float(c_lo) if direction else nan,
        "consistency_hi": float(c_hi) if direction else nan,
        "p_sign": sign_test_p(d),
        "p_wilcoxon": wilcoxon_p(d),
        "d_z": cohens_dz(d),
        "rank_biserial": rank_biserial(d),
    }


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
        scored, column = _ensure_metric(scores[scores["variant"].isin(["none", "low", "high"])], metric)
        scored = add_signed_level(scored)
        cell = scored.groupby(["group_id", "signed_level"])[column].mean().reset_index()
        rows.append({"metric": metric, "on": "mean", **spearman(cell["signed_level"].to_numpy(float), cell[column].to_numpy(float))})
    return levels, pd.DataFrame(rows, columns=["metric", "on", "n", "rho", "p"])


def spearman(x: np.ndarray, y: np.ndarray) -> dict:
    """``{"n", "rho", "p"}`` of :func:`scipy.stats.spearmanr` over the finite pairs; NaN rho with < 3 pairs or a constant side."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return {"n": int(x.size), "rho": math.nan, "p": math.nan}
    result = stats.spearmanr(x, y)
    return {"n": int(x.size), "rho": float(result.statistic), "p": float(result.pvalue)}


def target_tracking(scores: pd.DataFrame) -> pd.DataFrame:
    """How predicted mean T follows absolute commands (rows with a ``target_temperature``).

    Returns:
        One row per target value: ``target_temperature, n_rows, mean_temperature, sd, mae``
        (mean absolute error of the row means against the target); empty when no row has a target.
    """
    columns = ["target_temperature", "n_rows", "mean_temperature", "sd", "mae"]
    if "target_temperature" not in scores.columns:
        return pd.DataFrame(columns=columns)
    scored, column = _ensure_metric(scores, "temperature")
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


# ------------------------------------------------------------------------------------------ formatting


def format_number(x, digits: int = 2) -> str:
    """``0.62``; an em dash for NaN / None."""
    if x is None or (isinstance(x, float | np.floating) and not np.isfinite(x)):
        return "—"
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def format_ci(estimate, lo, hi, digits: int = 2) -> str:
    """``"0.62 [0.55, 0.70]"``; an em dash when the estimate is NaN, the bare estimate without a CI."""
    est = format_number(estimate, digits)
    if est == "—":
        return est
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return est
    return f"{est} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def format_p(p) -> str:
    """``"<0.001"``, ``"0.034"``, ``"0.52"``; an em dash for NaN."""
    if p is None or not np.isfinite(p):
        return "—"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def markdown_table(df: pd.DataFrame, digits: int = 3, index: bool = False) -> str:
    """GitHub Markdown table of ``df`` without the ``tabulate`` package.

    Floats are written with ``digits`` decimals, NaN / None as an em dash, ``|`` escaped.
    """
    frame = df.reset_index() if index else df

    def cell(value) -> str:
        if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
            return "—"
        if isinstance(value, float | np.floating):
            return f"{float(value):.{digits}f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [cell(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell_key(row: pd.Series, by: Sequence[str]) -> tuple:
    return tuple(row[b] for b in by) + (row["variant"],)


def consistency_display(tidy: pd.DataFrame, by: Sequence[str] | str = (), digits: int = 2) -> pd.DataFrame:
    """The paper's layout of an :func:`effect_table` result, as strings.

    Columns: ``*by, Variant, n, Avg T, Delta T, Consistency (T), Avg top-p, Delta top-p,
    Consistency (P)``; CIs as ``"0.62 [0.55, 0.70]"``.
    """
    by = [by] if isinstance(by, str) else list(by)
    keys: list[tuple] = []
    cells: dict[tuple, dict[str, pd.Series]] = {}
    for _, row in tidy.iterrows():
        key = _cell_key(row, by)
        if key not in cells:
            keys.append(key)
            cells[key] = {}
        cells[key][row["metric"]] = row
    out = []
    for key in keys:
        record = {b: ("—" if pd.isna(v) else str(v)) for b, v in zip(by, key[:-1], strict=True)}
        variant = key[-1]
        record["Variant"] = LABELS.get(variant, str(variant))
        record["n"] = "—"
        for metric, short, cons in (("temperature", "T", "T"), ("top_p", "top-p", "P")):
            row = cells[key].get(metric)
            if row is None:
                record.update({f"Avg {short}": "—", f"Delta {short}": "—", f"Consistency ({cons})": "—"})
                continue
            record["n"] = format_number(int(row["n_groups"]), digits)
            record[f"Avg {short}"] = format_number(row["mean_value"], digits)
            record[f"Delta {short}"] = format_ci(row["delta"], row["delta_lo"], row["delta_hi"], digits)
            record[f"Consistency ({cons})"] = format_ci(row["consistency"], row["consistency_lo"], row["consistency_hi"], digits)
        out.append(record)
    columns = [*by, "Variant", "n", "Avg T", "Delta T", "Consistency (T)", "Avg top-p", "Delta top-p", "Consistency (P)"]
    return pd.DataFrame(out, columns=columns)


def format_consistency_table(tidy: pd.DataFrame, by: Sequence[str] | str = (), digits: int = 2) -> str:
    """Markdown of :func:`consistency_display`."""
    return markdown_table(consistency_display(tidy, by=by, digits=digits))


def stats_display(tidy: pd.DataFrame, by: Sequence[str] | str = (), digits: int = 3) -> pd.DataFrame:
    """Tests and effect sizes of an :func:`effect_table` result as strings (commanded rows only).

    Columns: ``*by, Variant, Metric, n, Delta, |Delta|, p (sign), p (Wilcoxon), d_z, r (rank-biserial)``.
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for _, row in tidy[tidy["variant"] != "none"].iterrows():
        record = {b: ("—" if pd.isna(row[b]) else str(row[b])) for b in by}
        record.update(
            {
                "Variant": LABELS.get(row["variant"], str(row["variant"])),
                "Metric": METRIC_LABELS.get(row["metric"], str(row["metric"])),
                "n": str(int(row["n_groups"])),
                "Delta": format_ci(row["delta"], row["delta_lo"], row["delta_hi"], digits),
                "|Delta|": format_ci(row["abs_delta"], row["abs_delta_lo"], row["abs_delta_hi"], digits),
                "p (sign)": format_p(row["p_sign"]),
                "p (Wilcoxon)": format_p(row["p_wilcoxon"]),
                "d_z": format_number(row["d_z"], 2),
                "r (rank-biserial)": format_number(row["rank_biserial"], 2),
            }
        )
        rows.append(record)
    columns = [*by, "Variant", "Metric", "n", "Delta", "|Delta|", "p (sign)", "p (Wilcoxon)", "d_z", "r (rank-biserial)"]
    return pd.DataFrame(rows, columns=columns)


def format_stats_table(tidy: pd.DataFrame, by: Sequence[str] | str = (), digits: int = 3) -> str:
    """Markdown of :func:`stats_display`."""
    return markdown_table(stats_display(tidy, by=by, digits=digits))


# ------------------------------------------------------------------------------------------ synthetic


def synthetic_scores(
    n_groups: int = 40,
    shifts: dict | None = None,
    top_p_shifts: dict | None = None,
    noise: float = 0.05,
    token_noise: float = 0.02,
    levels: Sequence[int] = (1,),
    dose: bool = False,
    phrasings: int = 2,
    placements: Sequence[str] = ("before", "after"),
    seeds: Sequence[int] = (0,),
    n_tokens: int | tuple[int, int] = 24,
    texts: bool = False,
    eval_share: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Seeded synthetic variant scores with planted effects (tests, demos, notebooks).

    Per group a baseline level ``b ~ U(0.6, 1.2)`` and a per-token profile; a commanded row is the
    group's no-command profile of the same seed plus ``shift`` (``shifts[variant]``, times the
    level when ``dose``), a per-row constant ``N(0, noise)`` and per-token ``N(0, token_noise)``.
    ``top_p`` likewise around ``0.85`` with ``top_p_shifts``. Each commanded direction gets
    ``phrasings`` phrasings (``<variant>_0`` is a ``train`` phrasing, the others ``heldout``),
    every level and every placement. ``n_tokens``: a fixed length (teacher-forced-like: all rows
    of a group share the length) or ``(lo, hi)``: each row draws its own length (free-running-like;
    with ``texts`` each row also gets a text whose vocabulary grows with the planted shift).

    Returns:
        DataFrame with the columns of the module docstring (+ ``text`` when ``texts``).
    """
    shifts = {"low": -0.3, "high": 0.3, "placebo": 0.0} if shifts is None else shifts
    top_p_shifts = {"low": -0.1, "high": 0.05, "placebo": 0.0} if top_p_shifts is None else top_p_shifts
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)]
    variable = not isinstance(n_tokens, int | np.integer)
    max_len = int(n_tokens[1]) if variable else int(n_tokens)
    records = []
    n_eval = int(round(eval_share * n_groups))
    for g in range(n_groups):
        split = "eval" if g < n_eval else "train"
        b_t, b_p = rng.uniform(0.6, 1.2), rng.uniform(0.75, 0.95)
        for s in seeds:
            profile_t = b_t + 0.1 * np.sin(np.linspace(0, 3, max_len) + g) + rng.normal(0, token_noise, max_len)
            profile_p = b_p + 0.03 * np.cos(np.linspace(0, 3, max_len) + g) + rng.normal(0, token_noise, max_len)
            cells = [("none", 0, None, None, None)]
            for variant in shifts:
                for k in range(phrasings):
                    for level in levels:
                        for placement in placements:
                            split_name = "train" if k == 0 else "heldout"
                            cells.append((variant, int(level), f"{variant}_{k}", split_name, placement))
            for variant, level, command_id, command_split, placement in cells:
                length = int(rng.integers(n_tokens[0], n_tokens[1] + 1)) if variable else max_len
                factor = level if dose else 1
                shift_t = shifts.get(variant, 0.0) * factor if variant != "none" else 0.0
                shift_p = top_p_shifts.get(variant, 0.0) * factor if variant != "none" else 0.0
                row_t = rng.normal(0, noise) if variant != "none" else 0.0
                row_p = rng.normal(0, noise) if variant != "none" else 0.0
                t = profile_t[:length] + shift_t + row_t
                p = profile_p[:length] + shift_p + row_p
                if variant != "none":
                    t = t + rng.normal(0, token_noise, length)
                    p = p + rng.normal(0, token_noise, length)
                record = {
                    "group_id": f"g{g:04d}",
                    "prompt_id": f"p{g:04d}",
                    "variant": variant,
                    "level": level,
                    "command_id": command_id,
                    "command_split": command_split,
                    "placement": placement,
                    "split": split,
                    "seed": int(s),
                    "target_temperature": None,
                    "temperature": np.clip(t, 0.01, 2.0).astype(np.float32),
                    "top_p": np.clip(p, 0.01, 1.0).astype(np.float32),
                }
                if texts:
                    size = int(np.clip(40 * (1 + 2 * shift_t), 4, len(vocab)))
                    record["text"] = " ".join(rng.choice(vocab[:size], size=max(length, 1)))
                records.append(record)
    return pd.DataFrame.from_records(records)
