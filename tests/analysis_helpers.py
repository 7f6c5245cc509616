"""What the analysis tests share (not a test module): hand-made variant-score rows, table lookups, a PNG check."""

from __future__ import annotations

import numpy as np

from analysis import plots
from analysis.synthetic import synthetic_scores

#: Settings of a small synthetic score set: one phrasing, one placement, 8 tokens.
SMALL = {"phrasings": 1, "placements": ("after",), "n_tokens": 8}


def row(group, variant, t, p=None, seed=0, level=0, command_id=None, command_split=None, placement=None, split="eval",
        **extra):
    """One variant-score row with per-token T ``t`` (and P ``p``, default 0.9 everywhere)."""
    t = np.asarray(t, dtype=float)
    return {
        "group_id": group, "prompt_id": group, "variant": variant, "level": level, "command_id": command_id,
        "command_split": command_split, "placement": placement, "split": split, "seed": seed,
        "temperature": t, "top_p": np.asarray(p if p is not None else np.full(t.size, 0.9), dtype=float), **extra,
    }


def cell(table, variant, metric="temperature", **keys):
    """The one row of an effect table for ``variant``, ``metric`` and the breakdown ``keys``."""
    mask = (table["variant"] == variant) & (table["metric"] == metric)
    for k, v in keys.items():
        mask &= table[k] == v
    assert mask.sum() == 1, (variant, metric, keys)
    return table[mask].iloc[0]


def planted_scores():
    """Low shifts T by -0.3, high by +0.3, placebo by 0 (noise sd 0.05), 60 groups."""
    return synthetic_scores(n_groups=60, shifts={"low": -0.3, "high": 0.3, "placebo": 0.0}, noise=0.05, seed=1, **SMALL)


def assert_png(path):
    """``path`` is a PNG file."""
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.is_png(path)
