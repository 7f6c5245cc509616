"""What the notebooks in ``notebooks/`` load and how they show it.

:func:`notebook_scores` picks the variant scores a notebook shows, in this order:

1. ``results`` (the notebook's ``RESULTS`` parameter): a results folder of ``python -m analysis``;
2. the ``STEERDECO_RESULTS`` environment variable, the same;
3. ``results/`` or ``../results/`` when it holds saved scores (the CLI's default ``--out``, seen from
   the repository root or from ``notebooks/``);
4. otherwise the ``setting``: ``"tiny"``: seeded synthetic scores with planted effects
   (:func:`analysis.synthetic.synthetic_scores`, no model, a second); ``"tiny-model"``: a random
   tiny model with jittered fresh heads scored on synthetic control rows (torch, a few seconds; the
   heads are untrained, so expect no effects).

:func:`show_figure` displays a matplotlib figure as a PNG (the figures of :mod:`analysis.plots` use
an Agg canvas, not pyplot), :func:`show_table` a formatted table or a note when it could not be
computed.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .formatting import format_consistency_table, format_stats_table, markdown_table
from .scores_io import has_results, load_results
from .synthetic import synthetic_scores

logger = logging.getLogger(__name__)

RESULTS_ENV = "STEERDECO_RESULTS"
DEFAULT_RESULTS = ("results", "../results")
SETTINGS = ("tiny", "tiny-model")
PROTOCOLS = ("teacher_forced", "free_running")


def find_results(results: str | os.PathLike | None = None) -> Path | None:
    """The results folder to use (see the module docstring), or None.

    Raises:
        FileNotFoundError: ``results`` or ``$STEERDECO_RESULTS`` is given but holds no saved scores.
    """
    for given, what in ((results, "RESULTS"), (os.environ.get(RESULTS_ENV) or None, f"${RESULTS_ENV}")):
        if given is not None:
            if not has_results(given):
                raise FileNotFoundError(f"{what} = {str(given)!r} is not a results folder of python -m analysis "
                                        "(no *_scores.jsonl there)")
            return Path(given)
    for candidate in DEFAULT_RESULTS:
        if has_results(candidate):
            return Path(candidate)
    return None


def synthetic_protocol_scores(protocol: str = "teacher_forced", seed: int = 0, n_groups: int = 24) -> pd.DataFrame:
    """Synthetic scores shaped like one protocol: graded levels with a dose effect, 3 placements,
    train and held-out phrasings, placebo; free-running rows have their own lengths, 2 seeds and texts."""
    common = dict(n_groups=n_groups, levels=(1, 2, 3), dose=True, noise=0.12, shifts={"low": -0.06, "high": 0.06, "placebo": 0.0},
                  top_p_shifts={"low": -0.03, "high": 0.02, "placebo": 0.0}, placements=("before", "after", "system"),
                  phrasings=2, seed=seed)
    if protocol == "teacher_forced":
        return synthetic_scores(n_tokens=32, **common)
    if protocol == "free_running":
        return synthetic_scores(n_tokens=(16, 40), seeds=(0, 1), texts=True, **common)
    raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")


def tiny_model_scores(protocol: str = "teacher_forced", seed: int = 0, seeds: Sequence[int] = (0, 1),
                      max_new_tokens: int = 16, num_prompts: int = 8) -> pd.DataFrame:
    """Scores of a random tiny model with fresh heads jittered by ``seed`` on synthetic control rows."""
    import torch

    from steerdeco import AutoDecoModel
    from steerdeco.testing import tiny_model_and_tokenizer
    from steerdeco.training.synthetic import synthetic_control_records

    from .data import select_rows
    from .options import ScoringOptions
    from .scoring import score_rows

    base, tokenizer = tiny_model_and_tokenizer(seed=seed)
    model = AutoDecoModel(base)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for parameter in model.heads.parameters():  # fresh heads predict a constant T and P; jitter them
            parameter.add_(0.05 * torch.randn_like(parameter))
    rows = select_rows(synthetic_control_records(num_prompts, num_prompts // 2), split="all")
    options = ScoringOptions(protocols=[protocol], seeds=seeds, max_new_tokens=max_new_tokens, progress=False)
    return score_rows(model, tokenizer, rows, options)[protocol]


def notebook_scores(
    results: str | os.PathLike | None = None, setting: str = "tiny", protocol: str = "teacher_forced", seed: int = 0
) -> tuple[pd.DataFrame, str]:
    """``(scores, source)``: the variant scores of ``protocol`` a notebook shows and where they came from.

    Raises:
        FileNotFoundError: a given results folder holds no scores.
        ValueError: an unknown protocol or setting, or a results folder without ``protocol``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"PROTOCOL must be one of {list(PROTOCOLS)}, got {protocol!r}")
    folder = find_results(results)
    if folder is not None:
        found = load_results(folder)
        if protocol not in found:
            raise ValueError(f"{folder} has scores of {sorted(found)} only, not {protocol!r}; set PROTOCOL accordingly")
        return found[protocol], f"{protocol} scores of {folder}"
    if setting == "tiny":
        return synthetic_protocol_scores(protocol, seed=seed), f"synthetic {protocol} scores with planted effects (seed {seed})"
    if setting == "tiny-model":
        return tiny_model_scores(protocol, seed=seed), f"{protocol} scores of a random tiny model (seed {seed})"
    raise ValueError(f"SETTING must be one of {list(SETTINGS)} when no results folder is found, got {setting!r}")


def figure_png(fig, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def show_figure(fig, dpi: int = 100) -> None:
    """Display a matplotlib figure in a notebook (as a PNG image)."""
    from IPython.display import Image, display

    display(Image(data=figure_png(fig, dpi=dpi), format="png"))


def show_markdown(text: str) -> None:
    """Display Markdown ``text`` in the running notebook."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def show_table(table: pd.DataFrame | None, kind: str = "consistency", by: str | Sequence[str] = (),
               name: str = "this table") -> None:
    """Display an effect table as a consistency table or a tests table, or any table plainly (``kind``);
    a note instead when it is missing or empty (too few prompt groups to compute it)."""
    if kind not in ("consistency", "stats", "plain"):
        raise ValueError(f"kind must be consistency, stats or plain, got {kind!r}")
    if table is None or table.empty:
        show_markdown(f"*{name}: not computed (too few prompt groups for it; see the log)*")
        return
    if kind == "consistency":
        show_markdown(format_consistency_table(table, by=by))
    elif kind == "stats":
        show_markdown(format_stats_table(table, by=by))
    else:
        show_markdown(markdown_table(table))
