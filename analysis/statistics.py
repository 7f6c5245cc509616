"""Paired statistics of one cell's per-group differences: bootstrap CIs, sign and Wilcoxon tests, effect sizes, Spearman
(and the Wilson interval of a share of counted rows, :func:`share_interval`).

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
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

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


def bootstrap_means(columns: np.ndarray, n_boot: int, rng: np.random.Generator, chunk_cells: int = 2_000_000) -> np.ndarray:
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
    boot = bootstrap_means(np.column_stack([d, np.abs(d), hits]), n_boot, rng)
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


def spearman(x: np.ndarray, y: np.ndarray) -> dict:
    """``{"n", "rho", "p"}`` of :func:`scipy.stats.spearmanr` over the finite pairs; NaN rho with < 3 pairs or a constant side."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return {"n": int(x.size), "rho": math.nan, "p": math.nan}
    result = stats.spearmanr(x, y)
    return {"n": int(x.size), "rho": float(result.statistic), "p": float(result.pvalue)}


def share_interval(share: float, count: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson interval of a share of ``count`` rows (``scipy.stats.binomtest(k, count).proportion_ci``)."""
    ci = stats.binomtest(int(round(share * count)), count).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)
