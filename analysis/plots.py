"""Figures (PNG) of the analysis tables; the only module of ``analysis`` that uses matplotlib.

matplotlib is imported inside the functions and figures are plain :class:`matplotlib.figure.Figure`
objects (Agg canvas), so importing this module changes no backend and opens no window. Every
``plot_*`` function returns the figure and, given ``path``, saves it with :func:`save_figure`:
written to a temporary file next to the target and moved into place with :func:`os.replace`, and
an existing file is refused unless ``overwrite=True``.

Styles: baseline (``none``) solid black, commanded variants dotted (low blue, high red, placebo grey).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from steerdeco.io import atomic_write_with

logger = logging.getLogger(__name__)

COLORS = {"none": "black", "low": "tab:blue", "high": "tab:red", "placebo": "tab:gray"}
LINESTYLES = {"none": "-", "low": ":", "high": ":", "placebo": ":"}
NAMES = {"none": "Baseline", "low": "Low", "high": "High", "placebo": "Placebo"}
METRIC_NAMES = {"temperature": "temperature T", "top_p": "top-p P"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def save_figure(fig, path: str | os.PathLike, overwrite: bool = False, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (:func:`steerdeco.io.atomic_write_with`; an existing file needs ``overwrite``)."""
    path = atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"), overwrite)
    logger.info("wrote %s", path)
    return path


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _finish(fig, path, overwrite: bool):
    if path is not None:
        save_figure(fig, path, overwrite=overwrite)
    return fig


def plot_trajectory(
    trajectory: pd.DataFrame, path: str | os.PathLike | None = None, overwrite: bool = False, title: str | None = None
):
    """Per-token T and P of one prompt (from :func:`analysis.trajectories.select_trajectory`).

    Three stacked panels: T, P, and the per-token T difference to the baseline (commanded minus
    no-command, over the common positions); baseline solid, commanded dotted, with a legend.
    """
    fig, axes = _figure(3, 1, (8, 8))
    ax_t, ax_p, ax_d = axes[:, 0]
    base = trajectory[trajectory["variant"] == "none"]
    for (variant, label), cell in trajectory.groupby(["variant", "label"], sort=False):
        style = {"color": COLORS.get(variant, None), "linestyle": LINESTYLES.get(variant, ":"), "label": label}
        ax_t.plot(cell["position"], cell["temperature"], **style, linewidth=1.8 if variant == "none" else 2.2)
        ax_p.plot(cell["position"], cell["top_p"], **style, linewidth=1.8 if variant == "none" else 2.2)
        if variant != "none" and not base.empty:
            n = min(len(cell), len(base))
            ax_d.plot(cell["position"].to_numpy()[:n], cell["temperature"].to_numpy()[:n] - base["temperature"].to_numpy()[:n],
                      **style, linewidth=2.2)
    ax_d.axhline(0.0, color="black", linewidth=1.0)
    ax_t.set_ylabel("temperature T")
    ax_p.set_ylabel("top-p P")
    ax_d.set_ylabel("T − T(baseline)")
    ax_d.set_xlabel("response token position")
    for ax in (ax_t, ax_p, ax_d):
        ax.grid(alpha=0.3)
    ax_t.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    return _finish(fig, path, overwrite)


def plot_binned_trajectories(
    binned: pd.DataFrame, path: str | os.PathLike | None = None, overwrite: bool = False, title: str | None = None
):
    """Binned mean T and P with 95% bands (from :func:`analysis.trajectories.binned_trajectories`)."""
    metrics = list(dict.fromkeys(binned["metric"]))
    fig, axes = _figure(len(metrics), 1, (8, 3.2 * len(metrics)))
    relative = bool((binned["bin_end"] <= 1.0 + 1e-9).all())
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for variant, cell in binned[binned["metric"] == metric].groupby("variant", sort=False):
            color = COLORS.get(variant)
            ax.plot(cell["bin_center"], cell["mean"], color=color, linestyle=LINESTYLES.get(variant, ":"),
                    marker="o", markersize=3, label=NAMES.get(variant, variant))
            ax.fill_between(cell["bin_center"], cell["lo"], cell["hi"], color=color, alpha=0.15, linewidth=0)
        ax.set_ylabel(METRIC_NAMES.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1, 0].set_xlabel("relative position in the response" if relative else "response token position")
    fig.suptitle(title or "Mean along the response (95% band over prompts)")
    return _finish(fig, path, overwrite)


def plot_dose_response(
    levels: pd.DataFrame, path: str | os.PathLike | None = None, overwrite: bool = False, title: str | None = None
):
    """Mean paired change per signed level with 95% CIs (``levels`` from :func:`analysis.effects.dose_response`)."""
    metrics = list(dict.fromkeys(levels["metric"]))
    fig, axes = _figure(1, len(metrics), (4.5 * len(metrics), 3.6))
    for ax, metric in zip(axes[0, :], metrics, strict=True):
        cell = levels[levels["metric"] == metric].sort_values("signed_level")
        x = np.concatenate([[0.0], cell["signed_level"].to_numpy(float)])
        y = np.concatenate([[0.0], cell["delta"].to_numpy(float)])
        err = np.vstack([np.concatenate([[0.0], (cell["delta"] - cell["delta_lo"]).to_numpy(float)]),
                         np.concatenate([[0.0], (cell["delta_hi"] - cell["delta"]).to_numpy(float)])])
        order = np.argsort(x)
        ax.errorbar(x[order], y[order], yerr=err[:, order], marker="o", capsize=3, color="black", linestyle=":")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("signed level (low −, none 0, high +)")
        ax.set_ylabel(f"Δ {METRIC_NAMES.get(metric, metric)}")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "Dose-response (mean paired change, 95% CI)")
    return _finish(fig, path, overwrite)


def plot_effects(
    table: pd.DataFrame,
    by: str,
    metric: str = "temperature",
    path: str | os.PathLike | None = None,
    overwrite: bool = False,
    title: str | None = None,
    variants: Sequence[str] = ("low", "high", "placebo"),
):
    """Forest plot: mean paired change with 95% CI per ``by`` value and variant (an effect table)."""
    cell = table[(table["metric"] == metric) & table["variant"].isin(list(variants))].copy()
    cell = cell.reset_index(drop=True)
    fig, axes = _figure(1, 1, (7, 0.35 * max(len(cell), 4) + 1.2))
    ax = axes[0, 0]
    y = np.arange(len(cell))[::-1]
    for yi, (_, row) in zip(y, cell.iterrows(), strict=True):
        color = COLORS.get(row["variant"])
        ax.errorbar(row["delta"], yi, xerr=[[row["delta"] - row["delta_lo"]], [row["delta_hi"] - row["delta"]]],
                    marker="o", color=color, capsize=3)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{NAMES.get(r['variant'], r['variant'])}: {r[by]}" for _, r in cell.iterrows()], fontsize="small")
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"Δ {METRIC_NAMES.get(metric, metric)} vs no command (95% CI)")
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title or f"Effect by {by}")
    return _finish(fig, path, overwrite)


def plot_calibration(
    named: pd.DataFrame,
    metric: str = "temperature",
    path: str | os.PathLike | None = None,
    overwrite: bool = False,
    title: str | None = None,
):
    """Named value X vs predicted response-mean value, one point per row, with the identity line and tolerance band.

    ``named``: :func:`analysis.steering.named_value_rows` (``target, value, tolerance, seen, command_split``).
    Train wordings as circles, held-out wordings as triangles; seen values filled, unseen hollow.
    """
    if named.empty:
        raise ValueError("no rows name a value: nothing to plot")
    fig, axes = _figure(1, 1, (5.2, 5.0))
    ax = axes[0, 0]
    targets = np.sort(named["target"].unique().astype(float))
    from .steering import temperature_tolerance, top_p_tolerance

    lo = min(0.0, float(np.nanmin(named["value"])), float(targets.min())) - 0.05
    hi = max(float(np.nanmax(named["value"])), float(targets.max())) * 1.05 + 0.05
    grid = np.linspace(lo, hi, 200)
    band = (temperature_tolerance if metric == "temperature" else top_p_tolerance)(np.maximum(grid, 0.0))
    ax.fill_between(grid, grid - band, grid + band, color="tab:green", alpha=0.12, linewidth=0, label="on target")
    ax.plot(grid, grid, color="black", linewidth=1.0, label="identity")
    rng = np.random.default_rng(0)  # horizontal jitter so that the rows of one value do not hide each other
    jitter = 0.01 * (hi - lo)
    seen = named["seen"].map({True: "seen", False: "unseen"}).fillna("")
    for split, marker, color in (("train", "o", "tab:blue"), ("heldout", "^", "tab:red")):
        for kind in ("seen", "unseen", ""):
            cell = named[(named["command_split"].astype(str) == split) & (seen == kind)]
            if cell.empty:
                continue
            x = cell["target"].to_numpy(float) + rng.uniform(-jitter, jitter, len(cell))
            ax.scatter(x, cell["value"], marker=marker, s=16, alpha=0.7,
                       label=f"{split} wordings" + (f", {kind} value" if kind else ""),
                       facecolors="none" if kind == "unseen" else color, edgecolors=color)
    name = METRIC_NAMES.get(metric, metric)
    ax.set_xlabel(f"named {name}")
    ax.set_ylabel(f"predicted response-mean {name}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.suptitle(title or f"Named {name}: calibration (held-out prompts)")
    return _finish(fig, path, overwrite)


def is_png(path: str | os.PathLike) -> bool:
    """True when the file starts with the PNG signature."""
    with open(path, "rb") as handle:
        return handle.read(len(PNG_MAGIC)) == PNG_MAGIC
