"""Numbers, confidence intervals, p-values and effect tables as text: the Markdown tables of the report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .schema import LABELS, METRIC_LABELS


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
