"""Try commands of your own: one prompt alone and under each command, the heads' T and P and the text they sample.

    python -m analysis.sample --heads outputs/demo/run-YYYYmmdd-HHMMSS/train --prompt "Write a haiku about rain." \\
        --command "be wildly creative" --command "Use a temperature of 0.3."

Each command is placed into the conversation as the control data places it (``--placement``: before
the prompt, after it, or as a system message). For the prompt alone and under each command it prints

* teacher-forced: the response-mean T and P along one shared response (the prompt alone's sample of
  the first seed) and the T ratio against the prompt alone: the steering issues' measure, on your
  wording;
* free-running: one sample per seed with its response-mean T and P, and whether the seeds' texts are
  identical (what "no randomness" should give).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

NO_COMMAND = "(no command)"


def sample_rows(prompt: str, commands: Sequence[str], placement: str) -> list[dict]:
    """Rows for :func:`analysis.collect.free_running_scores`: the prompt alone, then once under each command.

    Raises:
        ValueError: an empty prompt, or a command or placement :func:`steerdeco.control.insert_command` refuses.
    """
    from steerdeco.control.insertion import insert_command
    from steerdeco.errors import ControlDataError

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("--prompt must be a non-empty text")
    conversation = [{"role": "user", "content": prompt}]
    rows = []
    for index, command in enumerate([None, *commands]):
        try:
            messages = conversation if command is None else insert_command(conversation, command, placement)
        except ControlDataError as error:
            raise ValueError(f"--command {command!r}: {error}") from None
        rows.append({"group_id": "sample", "prompt_id": "sample", "variant": "none" if command is None else "command",
                     "level": 0, "command_id": f"command-{index}", "command_split": None, "placement": placement,
                     "split": "eval", "messages": messages, "command": command})
    return rows


def try_commands(model, tokenizer, rows: Sequence[dict], seeds: Sequence[int], max_new_tokens: int) -> list[dict]:
    """Per row (the prompt alone first): ``command``, teacher-forced ``temperature``, ``top_p`` and ``ratio``
    (T against the prompt alone; None where the shared response is empty), and ``samples`` (``seed``,
    ``temperature``, ``top_p``, ``text``) with ``identical`` (every seed wrote the same text)."""
    from steerdeco.chat import teacher_forced_parameters

    from .collect import free_running_scores

    results = []
    for row in rows:  # one row and seed at a time: a sample does not depend on the other commands or seeds asked for
        own = [free_running_scores(model, tokenizer, [row], seeds=[seed], max_new_tokens=max_new_tokens, batch_size=1,
                                   progress=False).iloc[0] for seed in seeds]
        samples = [{"seed": int(s.seed), "temperature": _mean(s.temperature), "top_p": _mean(s.top_p), "text": s.text}
                   for s in own]
        results.append({"command": row["command"], "samples": samples,
                        "identical": len({s["text"] for s in samples}) == 1,
                        "temperature": None, "top_p": None, "ratio": None})
    shared = results[0]["samples"][0]["text"]
    if shared.strip():
        params = teacher_forced_parameters(model, tokenizer, [r["messages"] for r in rows], [shared] * len(rows),
                                           batch_size=len(rows))
        for result, (t, p) in zip(results, params, strict=True):
            result["temperature"], result["top_p"] = float(t.mean()), float(p.mean())
        base = results[0]["temperature"]
        for result in results:
            result["ratio"] = result["temperature"] / base if base > 0 else None
    else:
        logger.warning("the prompt alone sampled an empty response at the first seed: no teacher-forced values")
    return results


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def format_results(results: Sequence[dict]) -> list[str]:
    """Console lines: per command its teacher-forced T, ratio and P, then each seed's sample."""
    lines = []
    for result in results:
        label = NO_COMMAND if result["command"] is None else repr(result["command"])
        if result["temperature"] is None:
            forced = "teacher-forced: -"
        else:
            ratio = "" if result["command"] is None or result["ratio"] is None else f" (x{result['ratio']:.2f})"
            forced = f"teacher-forced T {result['temperature']:.2f}{ratio}, P {result['top_p']:.2f}"
        same = "; the seeds' texts are identical" if result["identical"] and len(result["samples"]) > 1 else ""
        lines.append(f"{label}: {forced}{same}")
        for s in result["samples"]:
            text = " ".join(s["text"].split())
            lines.append(f"  seed {s['seed']}: T {s['temperature']:.2f}, P {s['top_p']:.2f} | {text}")
        lines.append("")
    return lines


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m analysis.sample``."""
    from steerdeco.control.insertion import PLACEMENTS

    parser = argparse.ArgumentParser(prog="python -m analysis.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", required=True, metavar="DIR", help="trained heads: a training output folder or a checkpoint")
    parser.add_argument("--prompt", required=True, help="the user prompt")
    parser.add_argument("--command", action="append", default=[], metavar="TEXT",
                        help="a command about randomness, in any wording (repeatable)")
    parser.add_argument("--placement", choices=PLACEMENTS, default="before",
                        help="where each command goes: before or after the prompt, or a system message (default: before)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one sample per seed (default: 0 1 2)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="length of each sample in tokens (default: 48)")
    parser.add_argument("--model", help="base model: embedded, tiny or a local folder (default: the heads config's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: auto)")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Parse, load the heads on their base model, try the commands and print the results."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_new_tokens < 1:
        raise SystemExit(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds must differ from each other, got {args.seeds}")
    try:
        rows = sample_rows(args.prompt, args.command, args.placement)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    from steerdeco.errors import AnalysisError

    from .model import load_heads_model

    try:
        model, tokenizer = load_heads_model(args.heads, args.model, args.device)
    except AnalysisError as error:
        raise SystemExit(str(error)) from None
    tokenizer.padding_side = "left"
    results = try_commands(model, tokenizer, rows, args.seeds, args.max_new_tokens)
    print("\n".join(format_results(results)))
    return results


if __name__ == "__main__":
    main()
