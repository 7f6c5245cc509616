"""The parameter-level steering measures of ``MEASURES.md`` on teacher-forced scores, per command split.

Input: teacher-forced *variant scores* (schema in :mod:`analysis.schema`) of held-out prompts,
optionally with ``target_temperature`` / ``target_top_p`` (a command that names a value; NaN or
None otherwise). Every measure is computed separately for each command split (``train`` wordings
and ``heldout`` wordings); the no-command rows of a prompt are the reference of both.

Per row, ``ratio = T / T(none)`` against the same prompt's (and seed's) no-command row and
``log_ratio = log(ratio)``; effects are compared as log ratios so that "half" and "double" weigh
the same. Per command split:

* ``level_ratio[d][k]``: median over prompts of the direction-``d`` level-``k`` T ratio; each prompt
  first averages its level-``k`` rows in log space (a geometric mean of the ratios);
* ``mean_log_ratio[s]``: mean over prompts of the per-prompt mean log ratio at signed level ``s``
  (low 3..1 = -3..-1, none = 0, high 1..3); ``levels_strictly_ordered``: the seven values strictly
  increase (False when a level is missing);
* ``consistency[metric][d]``: share of prompts whose mean over the direction's rows moves T (P) the
  commanded way (:func:`analysis.effects.paired_differences`; ties fail);
* ``single_command_consistency[d]``: share of command rows that on their own move T the commanded way;
* ``full_ordering``: share of prompts with mean T of low rows < none < mean T of high rows;
* ``dose_response_median_rho``: median over prompts of the Spearman correlation of the signed level
  with log T over the prompt's none / low / high rows;
* ``placebo_median_log_ratio``: median over prompts of the per-prompt mean placebo log ratio;
* ``effect[d]``: mean over prompts of the per-prompt mean log ratio of direction ``d``, signed so that
  the commanded way is positive (``|log ratio|`` when the effect goes the commanded way);
  :func:`effect_ratio` divides held-out by train wordings;
* ``named_temperature`` / ``named_top_p``: rows whose command names a value ``X``: share of rows
  (a prompt under one naming command) with ``|T - X| <= max(0.1, 0.25 X)`` (top-p: ``|P - X| <= 0.1``),
  for values seen on train prompts (``seen``), the others (``unseen``) and ``all``, and per number
  format the command writes the value in (``by_number_format``: plain 0.3, padded 0.30, bare .3,
  words "zero point three", percent 30%). The "no
  randomness" level (low level 3, asked T = 0 whatever its wording) is left to ``no_randomness``;
  a command naming temperature 0 as a value (the ``named`` variant) stays here;
* ``no_randomness``: rows naming temperature 0: share with ``T <= 0.15``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .effects import baseline_values, paired_differences
from .schema import DIRECTIONS, METRICS, add_signed_level, prepare_scores, validate_scores
from .statistics import spearman

logger = logging.getLogger(__name__)

COMMAND_SPLITS = ("train", "heldout")
GRADED = ("low", "high")
LEVELS = (1, 2, 3)
SIGNED_LEVELS = (-3, -2, -1, 0, 1, 2, 3)
#: Named-value columns -> the metric they name.
TARGET_COLUMNS = {"target_temperature": "temperature", "target_top_p": "top_p"}
NO_RANDOMNESS_MAX_T = 0.15  # a "no randomness" row counts as near-greedy at or below this T
TOP_P_TOLERANCE = 0.1


def temperature_tolerance(target) -> np.ndarray:
    """``max(0.1, 0.25 X)``: how far a response-mean T may lie from a named temperature ``X``."""
    return np.maximum(0.1, 0.25 * np.asarray(target, dtype=float))


def top_p_tolerance(target) -> np.ndarray:
    """``0.1`` for every named top-p value."""
    return np.full(np.shape(target), TOP_P_TOLERANCE, dtype=float)


TOLERANCES = {"target_temperature": temperature_tolerance, "target_top_p": top_p_tolerance}


# ---------------------------------------------------------------------------------------- seen values


def seen_values(rows: Iterable[Mapping] | pd.DataFrame, column: str = "target_temperature", split: str = "train") -> list[float] | None:
    """Sorted distinct finite values of ``column`` on the rows of prompt split ``split`` (control rows or scores).

    None (unknown) when no row belongs to ``split``; ``[]`` when its rows name no value.
    """
    if isinstance(rows, pd.DataFrame):
        if "split" not in rows.columns or not (rows["split"] == split).any():
            return None
        if column not in rows.columns:
            return []
        values = pd.to_numeric(rows.loc[rows["split"] == split, column], errors="coerce")
    else:
        chosen = [r for r in rows if r.get("split") == split]
        if not chosen:
            return None
        values = pd.to_numeric(pd.Series([r.get(column) for r in chosen], dtype=object), errors="coerce")
    values = values[np.isfinite(values.to_numpy(dtype=float))]
    return sorted({round(float(v), 6) for v in values})


def seen_targets(rows: Iterable[Mapping] | pd.DataFrame, split: str = "train") -> dict[str, list[float] | None]:
    """``{target column: seen_values(rows, column)}`` for both named-value columns."""
    rows = rows if isinstance(rows, pd.DataFrame) else list(rows)
    return {column: seen_values(rows, column, split) for column in TARGET_COLUMNS}


# ------------------------------------------------------------------------------------------ row tables


def row_ratios(scores: pd.DataFrame, metric: str = "temperature") -> pd.DataFrame:
    """Every commanded row against its prompt's no-command value (same group and seed).

    Returns:
        The commanded rows with ``value``, ``baseline``, ``delta``, ``log_ratio`` and ``signed_level``
        added; rows without a positive finite value or baseline are dropped.
    """
    validate_scores(scores, required=("group_id", "variant", "seed", "level"))
    scores = prepare_scores(scores)
    column = METRICS.get(metric, metric)
    base = baseline_values(scores, metric)
    rows = add_signed_level(scores[scores["variant"] != "none"]).merge(base, on=["group_id", "seed"], how="inner")
    rows["value"] = rows[column].astype(float)
    rows["delta"] = rows["value"] - rows["baseline"]
    with np.errstate(divide="ignore", invalid="ignore"):
        rows["log_ratio"] = np.log(rows["value"].to_numpy(float) / rows["baseline"].to_numpy(float))
    keep = np.isfinite(rows["log_ratio"].to_numpy(float))
    if (~keep).any():
        logger.warning("%d commanded rows have no positive finite %s or baseline; left out", int((~keep).sum()), metric)
    return rows[keep].reset_index(drop=True)


def _split_rows(rows: pd.DataFrame, split: str) -> pd.DataFrame:
    return rows[rows["command_split"].astype(str) == split]


def _share(hits: np.ndarray) -> float:
    hits = np.asarray(hits, dtype=bool)
    return float(hits.mean()) if hits.size else math.nan


def _commanded_way(delta, direction: int) -> np.ndarray:
    """Strictly the commanded sign (ties fail)."""
    delta = np.asarray(delta, dtype=float)
    return delta < 0 if direction < 0 else delta > 0


# -------------------------------------------------------------------------------------------- measures


def level_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per ``(command_split, variant, level)``: ``signed_level, n_prompts, median_ratio, mean_log_ratio``.

    ``rows``: :func:`row_ratios` of T. Each prompt averages its rows of one cell in log space first.
    """
    columns = ["command_split", "variant", "level", "signed_level", "n_prompts", "median_ratio", "mean_log_ratio"]
    graded = rows[rows["variant"].isin(GRADED)]
    if graded.empty:
        return pd.DataFrame(columns=columns)
    per_prompt = (graded.groupby(["command_split", "variant", "level", "signed_level", "group_id"])["log_ratio"].mean()
                  .reset_index())
    out = (per_prompt.groupby(["command_split", "variant", "level", "signed_level"])["log_ratio"]
           .agg(n_prompts="size", median_log="median", mean_log_ratio="mean").reset_index())
    out["median_ratio"] = np.exp(out.pop("median_log"))
    out["level"] = out["level"].astype(int)
    return out.sort_values(["command_split", "signed_level"], kind="stable")[columns].reset_index(drop=True)


def wording_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per relative command wording (low/high rows without a named value): how often it moved T the commanded way.

    ``rows``: :func:`row_ratios` of T with a ``command`` column (the command's text). Columns
    ``command_split, variant, level, command, n_rows, commanded_way, median_ratio``, the least obeyed
    first; empty without a ``command`` column.
    """
    columns = ["command_split", "variant", "level", "command", "n_rows", "commanded_way", "median_ratio"]
    if "command" not in rows.columns:
        return pd.DataFrame(columns=columns)
    relative = rows[rows["variant"].isin(GRADED) & rows["command"].notna()]
    if "target_temperature" in relative.columns:
        relative = relative[relative["target_temperature"].isna()]
    if relative.empty:
        return pd.DataFrame(columns=columns)
    sign = relative["variant"].map(DIRECTIONS).to_numpy(float)
    relative = relative.assign(hit=relative["delta"].to_numpy(float) * sign > 0)  # the commanded sign; ties fail
    out = (relative.groupby(["command_split", "variant", "level", "command"])
           .agg(n_rows=("hit", "size"), commanded_way=("hit", "mean"), median_log=("log_ratio", "median"))
           .reset_index())
    out["median_ratio"] = np.exp(out.pop("median_log"))
    out["level"] = out["level"].astype(int)
    return out.sort_values(["commanded_way", "n_rows"], ascending=[True, False], kind="stable")[columns].reset_index(drop=True)


def strictly_ordered(mean_log_ratio: Mapping[int, float]) -> bool:
    """True when the values at the seven signed levels (none = 0) strictly increase; False if one is missing."""
    values = [0.0 if s == 0 else mean_log_ratio.get(s, math.nan) for s in SIGNED_LEVELS]
    if not all(np.isfinite(values)):
        return False
    return bool(all(a < b for a, b in zip(values, values[1:], strict=False)))


def direction_consistency(scores: pd.DataFrame, metric: str, split: str) -> dict[str, float]:
    """``{direction: share of prompts whose mean over the direction's rows moves metric the commanded way}``."""
    split_scores = scores[(scores["variant"] == "none") | (scores["command_split"].astype(str) == split)]
    pairs = paired_differences(split_scores, metric, variants=GRADED)
    return {d: _share(_commanded_way(pairs.loc[pairs["variant"] == d, "delta"], DIRECTIONS[d])) for d in GRADED}


def single_command_consistency(rows: pd.DataFrame) -> dict[str, float]:
    """``{low, high, all: share of command rows moving T the commanded way on their own}`` (``rows`` of one split)."""
    out = {}
    hits_all = []
    for d in GRADED:
        cell = rows[rows["variant"] == d]
        hits = _commanded_way(cell["delta"], DIRECTIONS[d])
        out[d] = _share(hits)
        hits_all.append(hits)
    out["all"] = _share(np.concatenate(hits_all)) if hits_all else math.nan
    return out


def full_ordering(rows: pd.DataFrame) -> float:
    """Share of prompts with mean T of low rows < none < mean T of high rows (prompts with both directions)."""
    graded = rows[rows["variant"].isin(GRADED)]
    means = graded.groupby(["group_id", "variant"])["value"].mean().unstack("variant")
    if means.empty or not set(GRADED) <= set(means.columns):
        return math.nan
    base = graded.groupby("group_id")["baseline"].mean()
    both = means.dropna(subset=list(GRADED))
    ordered = (both["low"] < base.loc[both.index]) & (base.loc[both.index] < both["high"])
    return _share(ordered.to_numpy())


def dose_response_rhos(rows: pd.DataFrame) -> pd.Series:
    """Per prompt: Spearman rho of the signed level (none = 0) with log T over its none / low / high rows."""
    graded = rows[rows["variant"].isin(GRADED)]
    rhos = {}
    for group_id, cell in graded.groupby("group_id", sort=True):
        x = np.concatenate([[0.0], cell["signed_level"].to_numpy(float)])
        y = np.concatenate([[math.log(float(cell["baseline"].iloc[0]))], np.log(cell["value"].to_numpy(float))])
        rhos[group_id] = spearman(x, y)["rho"]
    return pd.Series(rhos, dtype=float, name="rho")


def _per_prompt_log_ratio(rows: pd.DataFrame, variant: str) -> pd.Series:
    return rows[rows["variant"] == variant].groupby("group_id")["log_ratio"].mean()


def commanded_effect(rows: pd.DataFrame) -> dict[str, float]:
    """``{direction: mean over prompts of the per-prompt mean log ratio, commanded way positive}``."""
    out = {}
    for d in GRADED:
        per_prompt = _per_prompt_log_ratio(rows, d)
        out[d] = float(DIRECTIONS[d] * per_prompt.mean()) if len(per_prompt) else math.nan
    return out


def effect_ratio(by_split: Mapping[str, Mapping]) -> dict[str, float]:
    """``{direction: held-out effect / train effect}`` (NaN unless both exist and the train effect is > 0)."""
    out = {}
    for d in GRADED:
        train = by_split.get("train", {}).get("effect", {}).get(d, math.nan)
        heldout = by_split.get("heldout", {}).get("effect", {}).get(d, math.nan)
        out[d] = float(heldout / train) if np.isfinite(train) and np.isfinite(heldout) and train > 0 else math.nan
    return out


def named_value_rows(scores: pd.DataFrame, column: str = "target_temperature", seen: Sequence[float] | None = None) -> pd.DataFrame:
    """Rows whose command names a value in ``column``, with ``value, error, tolerance, on_target, seen``.

    Temperatures leave out the "no randomness" level (``low`` rows asked T = 0: :func:`no_randomness_summary`).

    ``seen``: the values named on train prompts (:func:`seen_values`); None: ``seen`` is None (unknown).
    ``number_format``: how the command writes the value (``plain`` 0.3, ``padded`` 0.30, ``bare`` .3, ``words``
    zero point three, ``percent`` 30%: :func:`steerdeco.control.phrasings.number_style`); None where the
    scores carry no command text or the value is written otherwise.
    """
    from steerdeco.control.phrasings import number_style

    columns = ["group_id", "variant", "level", "command_id", "command_split", "number_format", "target", "value", "error",
               "tolerance", "on_target", "seen"]
    if column not in scores.columns:
        return pd.DataFrame(columns=columns)
    metric = TARGET_COLUMNS[column]
    scores = prepare_scores(scores)
    target = pd.to_numeric(scores[column], errors="coerce")
    keep = np.isfinite(target.to_numpy(float))
    if column == "target_temperature":  # the "no randomness" level is measured by no_randomness_summary
        keep &= ~((scores["variant"] == "low").to_numpy() & (target.to_numpy(float) == 0.0))
    named = scores[keep].copy()
    if named.empty:
        return pd.DataFrame(columns=columns)
    named["target"] = target[named.index].astype(float)
    named["value"] = named[METRICS[metric]].astype(float)
    named["error"] = named["value"] - named["target"]
    named["tolerance"] = TOLERANCES[column](named["target"].to_numpy())
    named["on_target"] = (named["error"].abs() <= named["tolerance"] + 1e-6).to_numpy()  # float32 scores
    if seen is None:
        named["seen"] = None
    else:
        known = np.asarray(list(seen), dtype=float)
        named["seen"] = [bool(np.isclose(x, known, atol=1e-6).any()) for x in named["target"]]
    for key in ("level", "command_id", "command_split"):
        if key not in named.columns:
            named[key] = None
    commands = named["command"] if "command" in named.columns else pd.Series(None, index=named.index)
    named["number_format"] = [number_style(c, x) if isinstance(c, str) else None
                              for c, x in zip(commands, named["target"], strict=True)]
    return named[columns].reset_index(drop=True)


def named_value_summary(named: pd.DataFrame) -> dict[str, dict]:
    """``{seen, unseen, all: {n_rows, n_prompts, share}, by_number_format: {format: {...}}}`` of
    :func:`named_value_rows` (one split's rows); ``by_number_format`` only where a row's format is known."""
    def cell_summary(cell: pd.DataFrame) -> dict:
        return {"n_rows": int(len(cell)), "n_prompts": int(cell["group_id"].nunique()),
                "share": _share(cell["on_target"].to_numpy(bool))}

    cells = {"all": named}
    if named["seen"].notna().any():
        cells["seen"] = named[named["seen"] == True]  # noqa: E712 (object column)
        cells["unseen"] = named[named["seen"] == False]  # noqa: E712
    out = {name: cell_summary(cell) for name, cell in cells.items()}
    formats = named["number_format"].dropna() if "number_format" in named.columns else pd.Series(dtype=object)
    if not formats.empty:
        out["by_number_format"] = {str(f): cell_summary(named[named["number_format"] == f]) for f in sorted(formats.unique())}
    return out


def no_randomness_summary(scores: pd.DataFrame) -> dict:
    """Rows naming temperature 0: ``{n_rows, share}`` with ``T <= NO_RANDOMNESS_MAX_T``."""
    if "target_temperature" not in scores.columns:
        return {"n_rows": 0, "share": math.nan}
    scores = prepare_scores(scores)
    target = pd.to_numeric(scores["target_temperature"], errors="coerce").to_numpy(float)
    zero = scores[np.isfinite(target) & (target == 0.0)]
    return {"n_rows": int(len(zero)), "share": _share(zero["mean_temperature"].to_numpy(float) <= NO_RANDOMNESS_MAX_T)}


def baseline_summary(scores: pd.DataFrame) -> dict:
    """No-command response-mean T and P over prompts: ``{n_prompts, temperature_mean, temperature_median, top_p_mean}``."""
    out: dict = {}
    for metric, key in (("temperature", "temperature"), ("top_p", "top_p")):
        per_prompt = baseline_values(scores, metric).groupby("group_id")["baseline"].mean().dropna()
        out["n_prompts"] = int(len(per_prompt))
        out[f"{key}_mean"] = float(per_prompt.mean()) if len(per_prompt) else math.nan
        out[f"{key}_median"] = float(per_prompt.median()) if len(per_prompt) else math.nan
    return out


def split_measures(scores: pd.DataFrame, split: str, t_rows: pd.DataFrame, levels: pd.DataFrame,
                   seen: Mapping[str, Sequence[float] | None]) -> dict:
    """Every measure of one command split (module docstring) as a JSON-ready dict."""
    rows = _split_rows(t_rows, split)
    cell = levels[levels["command_split"].astype(str) == split]
    level_ratio = {d: {str(k): math.nan for k in LEVELS} for d in GRADED}
    mean_log = {}
    for r in cell.itertuples():
        level_ratio[r.variant][str(int(r.level))] = float(r.median_ratio)
        mean_log[int(r.signed_level)] = float(r.mean_log_ratio)
    rhos = dose_response_rhos(rows)
    placebo = _per_prompt_log_ratio(rows, "placebo")
    split_scores = scores[(scores["variant"] == "none") | (scores["command_split"].astype(str) == split)]
    out = {
        "n_prompts": int(rows["group_id"].nunique()),
        "n_rows": int(len(rows)),
        "level_ratio": level_ratio,
        "mean_log_ratio": {str(s): (0.0 if s == 0 else mean_log.get(s, math.nan)) for s in SIGNED_LEVELS},
        "levels_strictly_ordered": strictly_ordered(mean_log),
        "consistency": {m: direction_consistency(scores, m, split) for m in METRICS if m in scores.columns
                        or METRICS[m] in scores.columns},
        "single_command_consistency": single_command_consistency(rows),
        "full_ordering": full_ordering(rows),
        "dose_response_median_rho": float(rhos.median()) if rhos.notna().any() else math.nan,
        "placebo_median_log_ratio": float(placebo.median()) if len(placebo) else math.nan,
        "effect": commanded_effect(rows),
        "no_randomness": no_randomness_summary(split_scores[split_scores["variant"] != "none"]),
    }
    for column, name in (("target_temperature", "named_temperature"), ("target_top_p", "named_top_p")):
        named = named_value_rows(split_scores, column, seen.get(column))
        out[name] = named_value_summary(named) if not named.empty else {}
    return out


def parameter_measures(
    scores: pd.DataFrame, seen: Mapping[str, Sequence[float] | None] | None = None
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """All parameter-level measures of teacher-forced scores of held-out prompts.

    Args:
        scores: teacher-forced variant scores (the caller keeps the held-out prompts).
        seen: ``{"target_temperature": values, "target_top_p": values}`` named on train prompts
            (:func:`seen_targets` of the control rows); missing keys are taken from the scores'
            own ``split == "train"`` rows when there are any, else seen/unseen is not reported.

    Returns:
        ``(measures, tables)``: ``measures = {"baseline": ..., "by_command_split": {split: ...},
        "effect_ratio": {low, high}}`` (JSON-ready; NaN where undefined) and the tables
        ``levels`` (:func:`level_table`), ``wordings`` (:func:`wording_table`), ``named_temperature`` and
        ``named_top_p`` (per row).
    """
    validate_scores(scores, required=("group_id", "variant", "seed", "level", "command_split"))
    scores = prepare_scores(scores)
    seen = dict(seen or {})
    has_train = "split" in scores.columns and (scores["split"] == "train").any()
    for column in TARGET_COLUMNS:
        if seen.get(column) is None and has_train:
            seen[column] = seen_values(scores, column)
    evaluated = scores[scores["split"] == "eval"] if has_train and (scores["split"] == "eval").any() else scores
    t_rows = row_ratios(evaluated, "temperature")
    levels = level_table(t_rows)
    splits = [s for s in COMMAND_SPLITS if (evaluated["command_split"].astype(str) == s).any()]
    by_split = {s: split_measures(evaluated, s, t_rows, levels, seen) for s in splits}
    measures = {"baseline": baseline_summary(evaluated), "by_command_split": by_split, "effect_ratio": effect_ratio(by_split),
                "seen_values": {k: (None if v is None else list(v)) for k, v in seen.items()}}
    tables = {"levels": levels, "wordings": wording_table(t_rows)}
    for column, name in (("target_temperature", "named_temperature"), ("target_top_p", "named_top_p")):
        named = named_value_rows(evaluated, column, seen.get(column))
        if not named.empty:
            tables[name] = named
    return measures, tables
