"""Build control data: prompts under randomness commands (none / low / high / placebo) sharing one response.

    python -m steerdeco.build_control_data                                  # project prompts and commands, no responses
    python -m steerdeco.build_control_data --responses generate --overwrite # responses by the embedded SmolLM2
    python -m steerdeco.build_control_data --config configs/control_data_default.yaml --seed 1

Options can come from a YAML file (``--config``; keys are the option names with ``_`` or ``-``);
flags given on the command line override it. The output folder holds a ``datasets`` dataset
(``save_to_disk``), ``control_data.jsonl`` and ``summary.json``; ``docs/control_data.md`` describes
the rows and the command-file schema.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from steerdeco.control.build import DEFAULT_OUT, BuildConfig, BuildResult, build_control_data
from steerdeco.control.insertion import PLACEMENT_MODES
from steerdeco.control.prompts import SPECIAL_SOURCES
from steerdeco.control.responses import RESPONSE_MODES
from steerdeco.errors import ControlDataError
from steerdeco.options import add_run_flags, merge_config


def make_parser(subparsers: argparse._SubParsersAction | None = None) -> argparse.ArgumentParser:
    """The argument parser; only options given on the command line end up in the namespace."""
    defaults = BuildConfig()
    kwargs = dict(
        description=__doc__.split("\n\n")[0],
        epilog="Every option can also be set in the --config YAML file; command-line flags override it.",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if subparsers is not None:
        parser = subparsers.add_parser("build_control_data", help="build control data", **kwargs)
    else:
        parser = argparse.ArgumentParser(prog="python -m steerdeco.build_control_data", **kwargs)

    parser.add_argument("--config", metavar="FILE", help="YAML file with any of the options below (keys like max_prompts)")
    group = parser.add_argument_group("inputs")
    group.add_argument(
        "--prompts", action="append", metavar="SOURCE",
        help=f"a prompt source, repeatable: {', '.join(SPECIAL_SOURCES)} (MT-Bench / GSM8K files of their pip "
        "packages) or a JSONL file of {\"prompt\": ...} or {\"messages\": [...]} lines with optional id, category, "
        "completion (default: builtin)",
    )
    group.add_argument("--commands", metavar="FILE", help="command library (YAML or JSON, schema in docs/control_data.md; "
                       "default: control_data/commands.yaml)")
    group.add_argument("--phrasings", metavar="FILE",
                       help="phrasing grammar whose wordings join the library (YAML or JSON, schema in the header of "
                       "control_data/phrasings.yaml); 'builtin': that file, 'none': hand-written phrasings only (default: builtin)")
    group.add_argument("--max-prompts", type=int, metavar="N", help="use a seeded random subset of at most N prompts (default: all)")

    group = parser.add_argument_group("variants")
    group.add_argument("--seed", type=int, metavar="N", help=f"seed for the split, the commands and the placements (default: {defaults.seed})")
    group.add_argument("--eval-fraction", type=float, metavar="F",
                       help=f"fraction of prompts held out as eval, stratified by category (default: {defaults.eval_fraction})")
    group.add_argument("--eval-sources", nargs="+", metavar="SOURCE",
                       help="only prompts of these --prompts sources can be held out as eval; the others all train (default: all)")
    group.add_argument("--placement", choices=PLACEMENT_MODES,
                       help=f"where commands go: before/after the prompt, into a system message, or sampled per row (default: {defaults.placement})")
    group.add_argument("--commands-per-level", type=int, metavar="N",
                       help=f"commands per direction and level in each group, per phrasing split on eval prompts (default: {defaults.commands_per_level})")
    group.add_argument("--train-commands-per-level", type=int, metavar="N",
                       help="commands per direction and level in each train group; held-out groups keep --commands-per-level "
                       "(default: as --commands-per-level)")
    group.add_argument("--placebos", type=int, metavar="N",
                       help=f"placebo commands per group, per phrasing split on eval prompts (default: {defaults.placebos})")
    group.add_argument("--named-per-group", type=int, metavar="N",
                       help="commands naming a temperature or top-p value (alternately) per group, per phrasing split on "
                       f"eval prompts, written by the phrasing grammar (default: {defaults.named_per_group})")

    group.add_argument("--train-commands", type=int, metavar="N",
                       help="on train prompts keep a seeded sample of N of the group's commands (besides the no-command row), "
                       "so more prompts fit in the same rows (default: all)")

    group = parser.add_argument_group("responses")
    group.add_argument("--responses", choices=RESPONSE_MODES,
                       help="the shared response of each group: the prompts' 'completion' (given), output of the base model "
                       f"(generate) or none (default: {defaults.responses})")
    group.add_argument("--model", metavar="NAME",
                       help=f"generation model: 'embedded' (SmolLM2-135M-Instruct, offline) or a local HF model folder (default: {defaults.model})")
    group.add_argument("--max-new-tokens", type=int, metavar="N", help=f"response length limit for generation (default: {defaults.max_new_tokens})")
    group.add_argument("--response-temperature", type=float, metavar="T",
                       help="generate: sample each response at this temperature (no top-k/top-p), seeded per prompt; "
                       f"0 decodes greedily (default: {defaults.response_temperature})")
    group.add_argument("--batch-size", type=int, metavar="N", help=f"prompts per generation batch (default: {defaults.batch_size})")
    group.add_argument("--work-dir", metavar="DIR",
                       help="folder of the resumable response cache (default: <out>.work next to the output folder)")

    group = parser.add_argument_group("output")
    add_run_flags(group, f"output folder (default: {DEFAULT_OUT})",
                  "replace an existing output folder (only once the new one is complete; default: refuse)")
    return parser


def resolve_options(args: argparse.Namespace) -> tuple[BuildConfig, str]:
    """Merge ``--config`` (if any) under the command-line options; returns the config and the log level."""
    options, log_level = merge_config(args, BuildConfig.field_names(), ControlDataError)
    return BuildConfig(**options), log_level


def main(args: argparse.Namespace | Sequence[str] | None = None) -> BuildResult:
    """Build control data from parsed arguments (or an argv list; ``None``: ``sys.argv``)."""
    if not isinstance(args, argparse.Namespace):
        args = make_parser().parse_args(args)
    config, log_level = resolve_options(args)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("steerdeco").setLevel(log_level)
    return build_control_data(config)


if __name__ == "__main__":
    parser = make_parser()
    try:
        main(parser.parse_args())
    except ControlDataError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    sys.exit(0)
