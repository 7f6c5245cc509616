"""``python -m analysis``: measure trained heads on control data and write a results folder.

    python -m analysis --heads outputs/demo --data outputs/control_data --out results
    python -m analysis --heads outputs/demo --prompts my_prompts.jsonl --commands my_commands.yaml
    python -m analysis --config my_analysis.yaml --max-groups 8 --seeds 0 --overwrite

Loads the base model (``--model``: ``embedded``, ``tiny`` or a local Hugging Face folder; default:
the base model named in the heads' ``heads_config.json``, else ``embedded``) with the trained heads
of ``--heads`` (a training output folder, one of its ``checkpoint-N`` folders, or any folder saved
by ``AutoDecoModel.save_pretrained``; a LoRA adapter in ``adapter/`` is attached too). The rows come
either from ``--data`` (a folder or JSONL file built by ``python -m steerdeco.build_control_data``)
or are built on the fly from ``--prompts`` and ``--commands`` (responses generated greedily by the
plain base model by default, into ``work/`` inside the results). Then, per protocol:

* ``teacher_forced``: every variant of a group scores the group's shared response (needs responses);
* ``free_running``: every variant generates its own response, once per ``--seeds`` seed.

The results folder (``--out``) holds what :func:`analysis.report.write_report` writes (``report.md``,
``summary.json``, ``tables/``, ``figures/``), the raw per-row scores (``<protocol>_scores.jsonl``,
read them with :func:`analysis.scores_io.load_results`), ``run.json`` (the options and where
everything came from) and, for data built on the fly, ``work/``. It is assembled in a hidden
temporary sibling folder and renamed into place at the end; an existing non-empty ``--out`` is
refused unless ``--overwrite``.

Every option can also be set in a YAML file (``--config``; keys are the option names with ``_`` or
``-``); flags on the command line override it.

This module only parses, calls :func:`analysis.api.run` and prints; from Python, with a model
already in memory, call :func:`analysis.run_analysis`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from steerdeco.errors import AnalysisError
from steerdeco.options import add_run_flags, merge_config

from .api import AnalysisResult, run
from .formatting import format_consistency_table
from .options import (
    DEFAULT_OUT,
    DEVICES,
    PROTOCOL_LABELS,
    PROTOCOLS,
    RESPONSE_MODES,
    SPLITS,
    WORK_DIR,
    AnalysisConfig,
)
from .report import read_summary
from .scorecard import console_summary


# -- command line ---------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    """The argument parser; only options given on the command line end up in the namespace."""
    d = AnalysisConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="Every option can also be set in the --config YAML file; command-line flags override it.",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the options below (keys like max_groups)")

    group = parser.add_argument_group("model")
    group.add_argument("--heads", metavar="DIR", help="trained heads: a training output folder, a checkpoint-N folder or a "
                       "save_pretrained folder (a LoRA adapter in DIR/adapter is attached too); required")
    group.add_argument("--reference-heads", metavar="DIR", help="heads of the same base model not trained to steer (e.g. "
                       "the demo's <run>/reference): their no-command T, P and text are compared with --heads' "
                       "(analysis.reference, the no-command guard of MEASURES.md; default: off)")
    group.add_argument("--model", metavar="NAME", help="base model: embedded, tiny or a local Hugging Face folder "
                       "(default: the base_model of the heads config, else embedded)")
    group.add_argument("--device", choices=DEVICES, help="where to run the model (default: auto = cuda when available)")

    group = parser.add_argument_group("data (either --data, or --prompts [--commands] to build it on the fly)")
    group.add_argument("--data", metavar="DIR_OR_JSONL", help="control data built by python -m steerdeco.build_control_data")
    group.add_argument("--prompts", action="append", metavar="SOURCE",
                       help="build control data on the fly from these prompts (repeatable): a JSONL file, builtin, mtbench or gsm8k")
    group.add_argument("--commands", metavar="FILE", help="command library for the on-the-fly build (default: the project's)")
    group.add_argument("--responses", choices=RESPONSE_MODES,
                       help="shared responses of the on-the-fly build: the prompts' completion (given), greedy output of the "
                       f"base model (generate) or none (free_running only) (default: {d['responses'].default})")
    group.add_argument("--response-tokens", type=int, metavar="N",
                       help=f"length limit of generated shared responses (default: {d['response_tokens'].default})")
    group.add_argument("--max-prompts", type=int, metavar="N", help="on-the-fly build: a seeded subset of at most N prompts")
    group.add_argument("--eval-fraction", type=float, metavar="F",
                       help=f"on-the-fly build: share of prompts held out as eval (default: {d['eval_fraction'].default})")
    group.add_argument("--work-dir", metavar="DIR",
                       help="on-the-fly build: keep the control data and the resumable response cache here "
                       f"(default: {WORK_DIR}/ inside the results)")

    group = parser.add_argument_group("analysis")
    group.add_argument("--protocols", metavar="LIST",
                       help=f"comma-separated protocols (default: {','.join(PROTOCOLS)})")
    group.add_argument("--seeds", metavar="LIST", help="comma-separated free-running sampling seeds (default: 0,1,2)")
    group.add_argument("--max-new-tokens", type=int, metavar="N",
                       help=f"free-running response length (default: {d['max_new_tokens'].default})")
    group.add_argument("--split", choices=SPLITS,
                       help="prompts to analyse: eval (held out; default), train, or all (then the tables cover every prompt "
                       "and the report adds a train-vs-eval breakdown)")
    group.add_argument("--max-groups", type=int, metavar="N",
                       help="analyse a seeded random subset of at most N prompt groups (quick runs; >= 2)")
    group.add_argument("--free-running-groups", type=int, metavar="N",
                       help="generate free-running responses for a seeded subset of at most N of those groups only (>= 2)")
    group.add_argument("--free-running-variants", metavar="LIST",
                       help="rows that generate free-running text: none, placebo, zero (commands naming temperature 0), "
                       "low/high (every level) or lowK/highK, comma-separated, or all "
                       f"(default: {d['free_running_variants'].default})")
    group.add_argument("--prompt-only", action=argparse.BooleanOptionalAction,
                       help="also generate the free-running rows with the base model without heads at one fixed temperature, "
                       "the command in the prompt (the baseline steering must beat; default: on)")
    group.add_argument("--prompt-only-temperature", type=float, metavar="T",
                       help=f"sampling temperature of the prompt-only baseline (default: {d['prompt_only_temperature'].default})")
    group.add_argument("--n-boot", type=int, metavar="N", help=f"bootstrap resamples (default: {d['n_boot'].default})")
    group.add_argument("--seed", type=int, metavar="N",
                       help="seed of the bootstrap, the --max-groups subset and the on-the-fly build (default: 0)")
    group.add_argument("--batch-size", type=int, metavar="N", help=f"rows per model batch (default: {d['batch_size'].default})")
    group.add_argument("--lm-guard", type=int, metavar="N", help="LM guard (issue 12.5): LM loss of N human-written answers, "
                       "model vs base model (analysis.lm_guard; default 0: off)")
    group.add_argument("--lm-guard-source", metavar="SOURCE", help="the LM guard's answers: gsm8k or a JSONL file whose lines "
                       f"carry 'completion' (default: {d['lm_guard_source'].default})")

    group = parser.add_argument_group("output")
    add_run_flags(group, f"results folder (default: {DEFAULT_OUT})",
                  "replace an existing non-empty results folder (once the new one is complete; default: refuse)",
                  switches=[("--figures", "draw the PNG figures (default: on)")])
    return parser


def resolve_config(args: argparse.Namespace) -> tuple[AnalysisConfig, str]:
    """Merge ``--config`` (if any) under the command-line options; returns the config and the log level."""
    options, log_level = merge_config(args, AnalysisConfig.field_names(), AnalysisError)
    return AnalysisConfig(**options), log_level


def summary_text(result: AnalysisResult) -> str:
    """The scorecard, samples and consistency table of each protocol, as printed at the end of a run."""
    parts = console_summary(read_summary(result.out))
    for protocol in PROTOCOLS:
        key = f"{protocol}.main"
        if key in result.tables:
            parts += [f"{PROTOCOL_LABELS[protocol]} consistency:", format_consistency_table(result.tables[key]), ""]
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in result.out.iterdir()) if result.out.is_dir() else []
    parts.append(f"Wrote {result.out}: {', '.join(entries)}")
    return "\n".join(parts)


def main(args: argparse.Namespace | Sequence[str] | None = None) -> AnalysisResult:
    """Run an analysis from parsed arguments (or an argv list; ``None``: ``sys.argv``) and print its tables."""
    if not isinstance(args, argparse.Namespace):
        args = make_parser().parse_args(args)
    config, log_level = resolve_config(args)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("analysis", "steerdeco"):
        logging.getLogger(name).setLevel(log_level)
    result = run(config)
    print(summary_text(result))
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m analysis``: bad options and inputs exit with status 2 and one line."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        main(args)
    except AnalysisError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
