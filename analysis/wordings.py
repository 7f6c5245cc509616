"""Score wordings of your own on the held-out prompts: does each command move T the way it says?

The command library's held-out phrasings are one check of new wordings; this module runs any list
of commands (a YAML file) through trained heads, teacher-forced on the shared response of every
held-out prompt of a control-data build (its no-command rows), and reports the steering issues'
measures for that list:

* ``low`` / ``high``: single-command consistency (the response-mean T under the command below /
  above the prompt alone's) with its 95% Wilson interval, and the median T ratio;
* ``no_randomness``: the share of rows whose response-mean T is at most 0.15 (issue 16.3);
* ``named_temperature`` / ``named_top_p``: the share on target (``|T - X| <= max(0.1, 0.25 X)``,
  ``|P - X| <= 0.1``);

then one line per wording, the least obeyed first.

    python -m analysis.wordings --heads outputs/demo/run-.../train --data outputs/demo/run-.../control_data \\
        --wordings control_data/wordings_example.yaml

The wordings file (every key optional, at least one wording in all)::

    low: ["Keep your answer conventional and predictable.", ...]
    high: ["Surprise me with your answer.", ...]
    no_randomness: ["Always choose the single most likely word.", ...]
    named_temperature: [{command: "Set your temperature to 0.3.", value: 0.3}, ...]
    named_top_p: [{command: "Use a top-p of 0.5.", value: 0.5}, ...]

Each command is placed as the control data places commands; by default the placement cycles
through before the prompt, after it and a system message over wordings and prompts, so every
wording meets each placement (``--placement`` fixes one).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

RELATIVE_KINDS = ("low", "high")
NAMED_KINDS = {"named_temperature": "temperature", "named_top_p": "top_p"}
KINDS = (*RELATIVE_KINDS, "no_randomness", *NAMED_KINDS)
VALUE_RANGES = {"named_temperature": (0.0, 2.0), "named_top_p": (0.0, 1.0)}
#: The columns of :func:`score_wordings`' frame.
COLUMNS = ("prompt_id", "kind", "command", "value", "placement", "temperature", "top_p", "prompt_temperature", "ratio")


def read_wordings(path) -> dict[str, list[dict]]:
    """``{kind: [{"command", "value"}]}`` from a wordings file (see the module docstring).

    Raises:
        ValueError: the file is missing or not valid YAML, or a key, entry or value is not as described;
            the message names the file and the entry (``high[3]``) and says what is expected.
    """
    from steerdeco.io import read_yaml_file

    raw = read_yaml_file(path, what="--wordings")
    where = f"--wordings {path}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping with keys among {', '.join(KINDS)}")
    unknown = sorted(set(raw) - set(KINDS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; use {', '.join(KINDS)}")
    out: dict[str, list[dict]] = {}
    for kind, entries in raw.items():
        if not isinstance(entries, list):
            raise ValueError(f"{where}: {kind} must be a list, got {type(entries).__name__}")
        out[kind] = [_entry(where, kind, i, entry) for i, entry in enumerate(entries)]
    if not any(out.values()):
        raise ValueError(f"{where}: no wordings; give at least one under {', '.join(KINDS)}")
    return out


def _entry(where: str, kind: str, index: int, entry) -> dict:
    label = f"{where}: {kind}[{index}]"
    if kind not in NAMED_KINDS:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"{label}: expected a non-empty command text, got {entry!r}")
        return {"command": entry.strip(), "value": None}
    if not isinstance(entry, Mapping) or set(entry) != {"command", "value"}:
        raise ValueError(f"{label}: expected {{command: TEXT, value: NUMBER}}, got {entry!r}")
    command, value = entry["command"], entry["value"]
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"{label}: command must be a non-empty text, got {command!r}")
    low, high = VALUE_RANGES[kind]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{label}: value must be a number in [{low:g}, {high:g}], got {value!r}")
    return {"command": command.strip(), "value": float(value)}


def held_out_prompts(rows: Sequence[Mapping], max_prompts: int | None = None) -> list[dict]:
    """The eval split's no-command rows (one per prompt, with its shared response), at most ``max_prompts``."""
    prompts = [dict(r) for r in rows if r["split"] == "eval" and r["variant"] == "none" and str(r["response"]).strip()]
    return prompts[:max_prompts] if max_prompts else prompts


def wording_rows(prompts: Sequence[Mapping], wordings: Mapping[str, Sequence[Mapping]],
                 placement: str | None = None) -> list[dict]:
    """Per prompt: its no-command conversation, then the conversation under every wording (``kind``, ``command``,
    ``value``, ``placement``, ``messages``, ``response``); placements cycle when ``placement`` is None."""
    from steerdeco.control.insertion import PLACEMENTS, insert_command

    listed = [(kind, entry) for kind in KINDS for entry in wordings.get(kind, [])]
    out = []
    for p, prompt in enumerate(prompts):
        base = {"prompt_id": prompt["prompt_id"], "response": prompt["response"]}
        out.append({**base, "kind": "none", "command": None, "value": None, "placement": None,
                    "messages": list(prompt["messages"])})
        for w, (kind, entry) in enumerate(listed):
            where = placement or PLACEMENTS[(p + w) % len(PLACEMENTS)]
            out.append({**base, "kind": kind, "command": entry["command"], "value": entry["value"], "placement": where,
                        "messages": insert_command(list(prompt["messages"]), entry["command"], where)})
    return out


def score_wordings(model, tokenizer, rows: Sequence[Mapping], batch_size: int = 16,
                   max_response_tokens: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Teacher-forced response-mean T and P of every row of :func:`wording_rows` (columns :data:`COLUMNS`);
    ``ratio`` is T against the same prompt's no-command row."""
    from tqdm.auto import tqdm

    from steerdeco.chat import teacher_forced_parameters

    values = []
    for start in tqdm(range(0, len(rows), batch_size), desc="wordings, teacher-forced", disable=not progress):
        chunk = rows[start:start + batch_size]
        params = teacher_forced_parameters(model, tokenizer, [r["messages"] for r in chunk], [r["response"] for r in chunk],
                                           batch_size=batch_size, max_response_tokens=max_response_tokens)
        values += [(float(t.mean()), float(p.mean())) for t, p in params]
    frame = pd.DataFrame([{k: r[k] for k in ("prompt_id", "kind", "command", "value", "placement")} for r in rows])
    frame["temperature"], frame["top_p"] = [v[0] for v in values], [v[1] for v in values]
    alone = frame[frame["kind"] == "none"].set_index("prompt_id")["temperature"]
    frame["prompt_temperature"] = frame["prompt_id"].map(alone)
    frame["ratio"] = frame["temperature"] / frame["prompt_temperature"]
    return frame[list(COLUMNS)]


def _obeyed(frame: pd.DataFrame) -> pd.Series:
    """Per row: did it do what its command asks (the measure of its kind)?"""
    from .steering import NO_RANDOMNESS_MAX_T, TOP_P_TOLERANCE, temperature_tolerance

    kind, value = frame["kind"], pd.to_numeric(frame["value"], errors="coerce")  # relative rows: no value (NaN)
    out = pd.Series(False, index=frame.index)
    out[kind == "low"] = frame["ratio"] < 1
    out[kind == "high"] = frame["ratio"] > 1
    out[kind == "no_randomness"] = frame["temperature"] <= NO_RANDOMNESS_MAX_T
    named_t = kind == "named_temperature"
    out[named_t] = (frame["temperature"] - value).abs() <= temperature_tolerance(value.where(named_t, 0))
    named_p = kind == "named_top_p"
    out[named_p] = (frame["top_p"] - value).abs() <= TOP_P_TOLERANCE
    return out


def _median_ratio(ratios: pd.Series) -> float:
    """The median T ratio, taken in log (for an even count: the geometric mean of the middle two)."""
    return float(np.exp(np.log(ratios.astype(float)).median()))


def wording_measures(frame: pd.DataFrame) -> dict:
    """``{"by_kind": {kind: {n_wordings, n_rows, share, lo, hi, median_ratio}}, "by_wording": [...]}`` from
    :func:`score_wordings`' frame; ``share`` is the measure of the kind (module docstring), ``median_ratio``
    the median T ratio (relative kinds), and each wording's entry has its share, median ratio and mean T / P."""
    from .statistics import share_interval

    commanded = frame[frame["kind"] != "none"].copy()
    commanded["obeyed"] = _obeyed(commanded)
    by_kind = {}
    for kind in KINDS:
        rows = commanded[commanded["kind"] == kind]
        if rows.empty:
            continue
        share = float(rows["obeyed"].mean())
        lo, hi = share_interval(share, len(rows))
        by_kind[kind] = {"n_wordings": int(rows["command"].nunique()), "n_rows": len(rows), "share": share,
                         "lo": lo, "hi": hi,
                         "median_ratio": _median_ratio(rows["ratio"]) if kind in RELATIVE_KINDS else None}
    by_wording = []
    for (kind, command), rows in commanded.groupby(["kind", "command"], sort=False):
        value = rows["value"].iloc[0]
        by_wording.append({"kind": kind, "command": command, "value": None if pd.isna(value) else float(value),
                           "n_rows": len(rows),
                           "share": float(rows["obeyed"].mean()), "median_ratio": _median_ratio(rows["ratio"]),
                           "mean_temperature": float(rows["temperature"].mean()), "mean_top_p": float(rows["top_p"].mean())})
    by_wording.sort(key=lambda w: (w["share"], KINDS.index(w["kind"])))
    return {"n_prompts": int(frame["prompt_id"].nunique()), "by_kind": by_kind, "by_wording": by_wording}


MEASURE_NAMES = {"low": "single-command consistency, low", "high": "single-command consistency, high",
                 "no_randomness": "no randomness: T <= 0.15", "named_temperature": "named temperature on target",
                 "named_top_p": "named top-p within 0.1"}


def format_measures(measures: Mapping, weakest: int = 10) -> list[str]:
    """Console lines: one per kind, then the ``weakest`` wordings."""
    lines = [f"{measures['n_prompts']} held-out prompts, teacher-forced on each prompt's shared response:"]
    width = max(len(MEASURE_NAMES[k]) for k in measures["by_kind"])
    for kind, m in measures["by_kind"].items():
        ratio = "" if m["median_ratio"] is None else f", median T ratio {m['median_ratio']:.2f}"
        lines.append(f"  {MEASURE_NAMES[kind]:<{width}}  {m['share']:.0%} of {m['n_rows']} rows "
                     f"[{m['lo']:.0%}, {m['hi']:.0%}] over {m['n_wordings']} wordings{ratio}")
    shown = [w for w in measures["by_wording"] if w["share"] < 1][:weakest]
    if shown:
        lines.append(f"The {len(shown)} least obeyed wordings (share of prompts; relative: median T ratio, named: mean value):")
        for w in shown:
            if w["kind"] in RELATIVE_KINDS:
                detail = f"x{w['median_ratio']:.2f}"
            elif w["kind"] == "named_top_p":
                detail = f"P {w['mean_top_p']:.2f} for {w['value']:g}"
            elif w["kind"] == "named_temperature":
                detail = f"T {w['mean_temperature']:.2f} for {w['value']:g}"
            else:
                detail = f"T {w['mean_temperature']:.2f}"
            lines.append(f"  {w['share']:4.0%}  {w['kind']:<17} {detail:<16} {w['command']}")
    else:
        lines.append("Every wording did what it says on every prompt.")
    return lines


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m analysis.wordings``."""
    from steerdeco.control.insertion import PLACEMENTS

    parser = argparse.ArgumentParser(prog="python -m analysis.wordings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", required=True, metavar="DIR", help="trained heads: a training output folder or a checkpoint")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a control-data build whose eval prompts and shared responses are scored (its folder or file)")
    parser.add_argument("--wordings", required=True, metavar="FILE", help="the wordings file (YAML; see the module docstring)")
    parser.add_argument("--max-prompts", type=int, help="score only the first N held-out prompts (default: all)")
    parser.add_argument("--placement", choices=PLACEMENTS,
                        help="put every command here (default: cycle through before, after and system)")
    parser.add_argument("--max-response-tokens", type=int,
                        help="score each shared response's first N tokens, as the training's max_response_tokens (default: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward (default: 16)")
    parser.add_argument("--model", help="base model: embedded, tiny or a local folder (default: the heads config's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: auto)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the base model's dtype; auto: bfloat16 where it is fast (a GPU, a CPU with AMX), else float32")
    parser.add_argument("--out", metavar="FILE", help="also write the measures as JSON here (an existing file is not replaced)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse, check the inputs, load the heads, score the wordings and print the measures."""
    from pathlib import Path

    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for flag, value in (("--max-prompts", args.max_prompts), ("--max-response-tokens", args.max_response_tokens),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag} must be >= 1, got {value}")
    if args.out and Path(args.out).exists():
        raise SystemExit(f"--out {args.out} exists; remove it or pass another path")
    from steerdeco.errors import AnalysisError, ControlDataError
    from steerdeco.rows import load_control_data

    try:
        wordings = read_wordings(args.wordings)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    try:
        rows = load_control_data(args.data, required=("split", "variant", "prompt_id", "messages", "response"))
    except ControlDataError as error:
        raise SystemExit(f"--data: {error}") from None
    prompts = held_out_prompts(rows, args.max_prompts)
    if not prompts:
        raise SystemExit(f"--data {args.data}: no eval prompt with a no-command row and a response to score")
    from steerdeco.training.config import resolve_dtype

    from .model import load_heads_model

    try:
        model, tokenizer = load_heads_model(args.heads, args.model, args.device, resolve_dtype(args.dtype))
    except AnalysisError as error:
        raise SystemExit(str(error)) from None
    try:
        scored = score_wordings(model, tokenizer, wording_rows(prompts, wordings, args.placement), args.batch_size,
                                args.max_response_tokens, progress=not args.no_progress)
    except ControlDataError as error:  # a command that cannot be placed (insert_command names it)
        raise SystemExit(f"--wordings {args.wordings}: {error}") from None
    measures = wording_measures(scored)
    print("\n".join(format_measures(measures)))
    if args.out:
        from steerdeco.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(measures, indent=2) + "\n")
    return measures


if __name__ == "__main__":
    main()
