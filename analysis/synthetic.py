"""Seeded synthetic variant scores with planted effects, for tests, notebooks and demos."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


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
