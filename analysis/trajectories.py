"""Per-token T and P along the response: one prompt's trajectories, and position-binned means.

Input: variant scores (schema in :mod:`analysis.schema`). Outputs are long DataFrames that
:mod:`analysis.plots` draws:

* :func:`select_trajectory` -> one row per ``(variant, position)`` of one group and seed:
  ``variant, label, command_id, level, placement, position, temperature, top_p``;
* :func:`binned_trajectories` -> one row per ``(metric, variant, bin)``:
  ``metric, variant, bin, bin_start, bin_end, bin_center, mean, lo, hi, n_groups``, where the
  mean is over groups (rows of one group and variant averaged first) and ``lo`` / ``hi`` a 95%
  band (t interval or percentile bootstrap over groups).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .schema import LABELS, validate_scores

logger = logging.getLogger(__name__)


def _pick(candidates: pd.DataFrame, column: str, wanted, default: str):
    """Filter ``candidates`` to ``column == wanted`` (or the max/first value when ``wanted`` is None)."""
    if wanted is not None:
        return candidates[candidates[column] == wanted]
    values = candidates[column].dropna()
    if values.empty:
        return candidates
    if default == "max":
        return candidates[candidates[column] == values.max()]
    first = sorted(values.astype(str).unique())[0]
    return candidates[candidates[column].astype(str) == first]


def select_trajectory(
    scores: pd.DataFrame,
    group_id,
    seed: int | None = None,
    variants: Sequence[str] = ("none", "low", "high"),
    level: int | dict | None = None,
    command_id: str | dict | None = None,
    placement: str | dict | None = None,
) -> pd.DataFrame:
    """Per-token T and P of one variant instance per direction of one group.

    Args:
        scores: variant scores.
        group_id: the group to show.
        seed: which seed (default: the smallest seed of the group).
        variants: directions to include, in order.
        level, command_id, placement: choose the instance, either one value for all directions
            or a ``{variant: value}`` dict; by default the highest level, then the first
            ``command_id`` and ``placement`` in sorted order.

    Returns:
        Long DataFrame ``variant, label, command_id, level, placement, position, temperature,
        top_p`` (position 0..L-1 per variant).

    Raises:
        ValueError: unknown group, or none of ``variants`` present for it.
    """
    validate_scores(scores, required=("group_id", "variant", "seed", "temperature", "top_p"))
    group = scores[scores["group_id"] == group_id]
    if group.empty:
        raise ValueError(f"group {group_id!r} is not in the variant scores")
    if seed is None:
        seed = int(group["seed"].min())
    group = group[group["seed"] == seed]

    def wanted(option, variant):
        return option.get(variant) if isinstance(option, dict) else option

    frames = []
    for variant in variants:
        candidates = group[group["variant"] == variant]
        if variant != "none":
            for column, option, default in (("level", level, "max"), ("command_id", command_id, "first"),
                                            ("placement", placement, "first")):
                if column in candidates.columns:
                    candidates = _pick(candidates, column, wanted(option, variant), default)
        if candidates.empty:
            logger.warning("group %r seed %s has no %r row matching the selection; left out", group_id, seed, variant)
            continue
        row = candidates.iloc[0]
        t = np.asarray(row["temperature"], dtype=float).ravel()
        p = np.asarray(row["top_p"], dtype=float).ravel()
        n = min(t.size, p.size)
        command = row.get("command_id")
        lvl = row.get("level")
        label = LABELS.get(variant, variant)
        if variant != "none":
            label = f"{label} (level {lvl}, {command})"
        frames.append(
            pd.DataFrame(
                {
                    "variant": variant,
                    "label": label,
                    "command_id": command,
                    "level": lvl,
                    "placement": row.get("placement"),
                    "position": np.arange(n),
                    "temperature": t[:n],
                    "top_p": p[:n],
                }
            )
        )
    if not frames:
        raise ValueError(f"group {group_id!r} (seed {seed}) has none of the variants {list(variants)}")
    return pd.concat(frames, ignore_index=True)


def example_group(scores: pd.DataFrame, variants: Sequence[str] = ("none", "low", "high"), split: str | None = "eval"):
    """First group (sorted) that has every one of ``variants`` at its smallest seed; None if none has."""
    frame = scores
    if split is not None and "split" in frame.columns and (frame["split"] == split).any():
        frame = frame[frame["split"] == split]
    for group_id, group in frame.groupby("group_id", sort=True):
        first = group[group["seed"] == group["seed"].min()]
        if set(variants) <= set(first["variant"]):
            return group_id
    return None


def _bin_means(values, n_bins: int, bin_width: int | None) -> np.ndarray:
    """Mean of ``values`` in each of ``n_bins`` position bins (NaN for an empty bin)."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        return np.full(n_bins, np.nan)
    positions = np.arange(arr.size)
    if bin_width is None:
        bins = np.minimum((positions * n_bins) // arr.size, n_bins - 1)
    else:
        bins = positions // bin_width
    keep = (bins < n_bins) & np.isfinite(arr)
    sums = np.bincount(bins[keep], weights=arr[keep], minlength=n_bins)
    counts = np.bincount(bins[keep], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _band(values: np.ndarray, method: str, n_boot: int, rng: np.random.Generator, ci: float) -> tuple[float, float, float]:
    values = values[np.isfinite(values)]
    n = values.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    if method == "t":
        half = stats.t.ppf(0.5 + ci / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
        return mean, mean - half, mean + half
    idx = rng.integers(0, n, size=(n_boot, n))
    lo, hi = np.percentile(values[idx].mean(axis=1), [50 * (1 - ci), 50 * (1 + ci)])
    return mean, float(lo), float(hi)


def binned_trajectories(
    scores: pd.DataFrame,
    n_bins: int = 10,
    bin_width: int | None = None,
    variants: Sequence[str] = ("none", "low", "high"),
    metrics: Sequence[str] = ("temperature", "top_p"),
    band: str = "t",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Position-binned mean T / P per variant over groups, with a 95% band.

    Args:
        scores: variant scores.
        n_bins: number of bins.
        bin_width: None: bins are fractions of each response (bin k holds positions with
            ``k/n_bins <= pos/L < (k+1)/n_bins``; ``bin_*`` columns are fractions 0..1); an int:
            bins of that many tokens from the start (``bin_*`` in tokens; later positions dropped).
        variants, metrics: what to include.
        band: ``"t"`` (t interval over groups) or ``"bootstrap"`` (percentile, groups resampled).
        n_boot, seed, ci: band settings.

    Returns:
        Long DataFrame ``metric, variant, bin, bin_start, bin_end, bin_center, mean, lo, hi, n_groups``.
    """
    if band not in ("t", "bootstrap"):
        raise ValueError(f"band must be 't' or 'bootstrap', got {band!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    validate_scores(scores, required=("group_id", "variant", *metrics))
    frame = scores[scores["variant"].isin(list(variants))]
    if frame.empty:
        raise ValueError(f"no rows of variants {list(variants)}")
    rng = np.random.default_rng(seed)
    width = 1.0 / n_bins if bin_width is None else float(bin_width)
    rows = []
    for metric in metrics:
        binned = np.vstack([_bin_means(a, n_bins, bin_width) for a in frame[metric]])
        per_row = pd.DataFrame(binned, columns=range(n_bins))
        per_row["group_id"] = frame["group_id"].to_numpy()
        per_row["variant"] = frame["variant"].to_numpy()
        with np.errstate(invalid="ignore"):
            per_group = per_row.groupby(["variant", "group_id"]).mean()
        for variant in variants:
            if variant not in per_group.index.get_level_values(0):
                continue
            matrix = per_group.loc[variant].to_numpy(dtype=float)
            for k in range(n_bins):
                column = matrix[:, k]
                mean, lo, hi = _band(column, band, n_boot, rng, ci)
                rows.append(
                    {
                        "metric": metric,
                        "variant": variant,
                        "bin": k,
                        "bin_start": k * width,
                        "bin_end": (k + 1) * width,
                        "bin_center": (k + 0.5) * width,
                        "mean": mean,
                        "lo": lo,
                        "hi": hi,
                        "n_groups": int(np.isfinite(column).sum()),
                    }
                )
    return pd.DataFrame(rows, columns=["metric", "variant", "bin", "bin_start", "bin_end", "bin_center", "mean", "lo", "hi", "n_groups"])
