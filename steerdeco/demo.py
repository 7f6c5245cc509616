"""The README's main job: the whole steerdeco pipeline on the embedded SmolLM2-135M-Instruct model.

``python -m steerdeco.demo`` runs, with progress bars:

1. **control data**: the project's prompts under low / high / placebo commands worded by the
   command library and its phrasing grammar, plus commands that name a temperature or top-p value,
   each group sharing one response sampled from the base model at T = 1
   (:func:`steerdeco.control.build_control_data`);
2. **training**: ``configs/demo.yaml`` (head-only AutoDeco + steering objective, from a cache of the
   frozen backbone) through :func:`steerdeco.train.main`, after the same config with every steering
   term off (the reference heads, into ``reference/``): the steered heads are anchored to them on rows
   without a command, and the analysis compares the two without a command (``--no-reference`` skips
   both);
3. **analysis**: teacher-forced and free-running scores of the held-out prompts, consistency
   statistics, trajectories and text effects (:func:`analysis.run_analysis`), written as a
   Markdown report with CSV/JSON tables and PNG figures;

and prints the scorecard of the steering issues' targets, one prompt's samples under low-3 / no /
high-3 commands, the consistency table and a table of the time each stage took at the end (all in
``results/report.md``; the times also in ``timings.json``). The analysis scores the held-out rows teacher-forced
from the training's backbone cache (they are in it: the trainer caches its evaluation rows too).
Every run gets its own folder
(``outputs/demo/run-YYYYmmdd-HHMMSS`` unless ``--out`` names one); generated responses and the
backbone cache are kept in ``outputs/demo/cache`` and reused by later runs whose settings match.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

TOOL = "steerdeco.demo"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEFAULT_ROOT = Path("outputs") / "demo"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m steerdeco.demo",
        description="Build control data, train configs/demo.yaml and analyse it, on the embedded SmolLM2-135M-Instruct.",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="run folder (default: outputs/demo/run-<date>-<time>); an existing non-empty folder needs --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder written by an earlier demo run (kept aside until this run succeeds)",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config (default: configs/demo.yaml)")
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_ROOT / "cache"),
        help="generated responses and backbone cache, reused across runs (default: outputs/demo/cache)",
    )
    parser.add_argument(
        "--max-prompts", type=int, default=None, help="use a seeded subset of the project's prompts (default: all 330)"
    )
    parser.add_argument(
        "--response-tokens", type=int, default=24, help="length limit of the generated shared responses and of the free-running text (default 24; configs/demo.yaml's max_response_tokens must match)"
    )
    parser.add_argument(
        "--free-running-groups",
        type=int,
        default=30,
        help="held-out prompts that also generate their own text (default 30; 0: skip)",
    )
    parser.add_argument(
        "--response-temperature",
        type=float,
        default=1.0,
        help="the shared responses are samples of the base model at this temperature (default 1.0; 0: greedy)",
    )
    parser.add_argument(
        "--named-per-group",
        type=int,
        default=2,
        help="commands naming a temperature or top-p value per prompt (per phrasing split on held-out prompts; default 2)",
    )
    parser.add_argument(
        "--train-commands-per-level",
        type=int,
        default=2,
        help="wordings of each direction and level per train prompt (held-out prompts draw one of each; default 2)",
    )
    parser.add_argument(
        "--free-running-variants",
        default="none,low3,high3,placebo,zero",
        help="rows of those prompts that generate text (default none,low3,high3,placebo,zero; see python -m analysis -h)",
    )
    parser.add_argument(
        "--prompt-only-temperature",
        type=float,
        default=1.0,
        help="temperature of the prompt-only baseline: the base model without heads, same commands (default 1.0; 0: skip)",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the reference heads (the same config with the steering terms off) that the steered heads are anchored "
        "to without a command and that the no-command guard compares with",
    )
    parser.add_argument("--seeds", default="0,1,2", help="sampling seeds of the free-running protocol (default 0,1,2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data build, training and bootstrap (default 0)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the intervals (default 2000)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return parser


def _check_args(args: argparse.Namespace) -> list[int]:
    for name in ("max_prompts", "response_tokens", "n_boot", "train_commands_per_level"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.named_per_group < 0:
        raise SystemExit(f"--named-per-group must be >= 0, got {args.named_per_group}")
    if not args.response_temperature >= 0:
        raise SystemExit(f"--response-temperature must be >= 0 (0: greedy), got {args.response_temperature}")
    if args.free_running_groups < 0:
        raise SystemExit(f"--free-running-groups must be >= 0, got {args.free_running_groups}")
    if not args.prompt_only_temperature >= 0:
        raise SystemExit(f"--prompt-only-temperature must be >= 0 (0: no baseline), got {args.prompt_only_temperature}")
    from analysis.collect import parse_variant_selection

    try:
        parse_variant_selection(args.free_running_variants)
    except ValueError as error:
        raise SystemExit(f"--free-running-variants: {error}") from None
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers such as 0,1; got {args.seeds!r}") from None
    if not seeds:
        raise SystemExit("--seeds needs at least one seed")
    if not Path(args.config).is_file():
        raise SystemExit(f"--config {args.config}: no such file (run from the repository, or pass --config FILE)")
    return seeds


def previous_run(folder: Path) -> Path:
    """Where :func:`run_folder` keeps the run that ``--overwrite`` replaces until the new run succeeds."""
    return folder.parent / f".{folder.name}.previous"


def run_folder(out: str | None, overwrite: bool) -> Path:
    """The run's folder, marked as the demo's: ``out`` or a fresh timestamped one.

    A non-empty ``out`` is refused unless ``overwrite`` and it was written by an earlier demo run (its
    ``.steerdeco-output`` marker); that run is moved to :func:`previous_run` (removed when the new run
    succeeds), never deleted up front.
    """
    from .io import check_replaceable, mark_output

    if out is None:
        folder = DEFAULT_ROOT / time.strftime("run-%Y%m%d-%H%M%S")
        while folder.exists():
            time.sleep(1)
            folder = DEFAULT_ROOT / time.strftime("run-%Y%m%d-%H%M%S")
    else:
        folder = Path(out)
        try:
            replace = check_replaceable(folder, TOOL, overwrite, "--overwrite", SystemExit)
        except SystemExit as error:
            raise SystemExit(f"--out: {error}") from None
        if replace:
            kept = previous_run(folder)
            if kept.exists():
                shutil.rmtree(kept)  # an earlier demo run's, kept by a run that did not finish
            os.replace(folder, kept)
            logger.info("the earlier run in %s is kept in %s until this run finishes", folder, kept)
    folder.mkdir(parents=True, exist_ok=True)
    mark_output(folder, TOOL)
    return folder


def training_config(args: argparse.Namespace, data: Path, folder: Path, reference: bool = False, anchor: Path | None = None):
    """``configs/demo.yaml`` read by the training CLI's own parser, with this run's paths; ``reference``: the
    reference heads' (every steering term's weight 0, into ``reference/``); ``anchor``: their folder, which the
    steered heads are anchored to."""
    from .train import make_parser as train_parser
    from .training.objective import STEERING_WEIGHT_FIELDS

    argv = [
        "--config", str(args.config),
        "--dataset_path", str(data),
        "--output_dir", str(folder / ("reference" if reference else "train")),
        "--cache_dir", str(Path(args.cache_dir) / "backbone"),
        "--seed", str(args.seed),
        "--final_ordering_report", "false",
        "--disable_tqdm", str(not args.progress).lower(),
    ]  # fmt: skip
    if reference:  # AutoDeco's heads alone: no steering term, and no named-value or level paths to steer with
        argv += [value for name in STEERING_WEIGHT_FIELDS for value in (f"--{name}", "0")]
        argv += ["--heads_named_values", "false", "--heads_steering_levels", "0", "--heads_negation_scope", "false"]
    if anchor is not None:
        argv += ["--anchor_heads", str(anchor)]
    (config,) = train_parser().parse_args_and_config(args=argv)
    return config


def main(args: argparse.Namespace) -> int:
    from analysis import run_analysis

    from .control import BuildConfig, build_control_data, load_control_data
    from .io import atomic_write_text
    from .loading import EMBEDDED, load_base_model, load_trained_model
    from .train import main as train
    from .training.cache import CACHE_FILE, BackboneCache

    seeds = _check_args(args)
    folder = run_folder(args.out, args.overwrite)
    timings: dict[str, float] = {}
    logger.info("demo run folder: %s", folder)

    data = folder / "control_data"
    config = training_config(args, data, folder)
    started = time.perf_counter()
    base, tokenizer = load_base_model(EMBEDDED, config.backbone_torch_dtype)
    timings["load model"] = time.perf_counter() - started
    logger.info("base model in %s", config.backbone_torch_dtype)

    started = time.perf_counter()
    build_control_data(
        BuildConfig(
            out=str(data),
            seed=args.seed,
            responses="generate",
            max_prompts=args.max_prompts,
            max_new_tokens=args.response_tokens,
            response_temperature=args.response_temperature,
            named_per_group=args.named_per_group,
            train_commands_per_level=args.train_commands_per_level,
            batch_size=16,
            work_dir=str(Path(args.cache_dir) / "responses"),
            progress=args.progress,
        ),
        model=base,
        tokenizer=tokenizer,
    )
    timings["control data"] = time.perf_counter() - started

    reference = None
    if args.reference:  # first: the steered heads are anchored to them without a command
        started = time.perf_counter()
        metrics = train(training_config(args, data, folder, reference=True))
        timings["backbone cache"] = metrics["cache_seconds"]
        timings["reference heads"] = time.perf_counter() - started - metrics["cache_seconds"]
        reference = load_trained_model(folder / "reference", base).eval()
        config = training_config(args, data, folder, anchor=folder / "reference")

    started = time.perf_counter()
    metrics = train(config)
    timings["backbone cache"] = timings.get("backbone cache", 0.0) + metrics["cache_seconds"]
    timings["training"] = time.perf_counter() - started - metrics["cache_seconds"]

    started = time.perf_counter()
    model = load_trained_model(folder / "train", base).eval()
    rows = [dict(r) for r in load_control_data(data)]  # run_analysis keeps the eval split; train rows name the seen values
    cache_file = Path(config.cache_dir) / CACHE_FILE
    cache = BackboneCache.load(cache_file) if config.use_backbone_cache and cache_file.is_file() else None
    timings["load trained heads"] = time.perf_counter() - started
    analysis_timings: dict[str, float] = {}
    markdown, tables = run_analysis(
        model,
        tokenizer,
        rows,
        folder / "results",
        protocols=("teacher_forced", "free_running") if args.free_running_groups else ("teacher_forced",),
        seeds=seeds,
        max_new_tokens=args.response_tokens,
        free_running_groups=args.free_running_groups or None,
        free_running_variants=args.free_running_variants,
        prompt_only_temperature=args.prompt_only_temperature or None,
        n_boot=args.n_boot,
        seed=args.seed,
        batch_size=48,
        progress=args.progress,
        backbone_cache=cache,
        max_response_tokens=config.max_response_tokens if cache is not None else None,
        timings=analysis_timings,
        reference_model=reference,
    )
    for name, label in (("teacher_forced", "analysis: teacher-forced scores"),
                        ("free_running", "analysis: free-running generation"),
                        ("reference", "analysis: reference heads' no-command scores"),
                        ("report", "analysis: statistics, figures, report")):  # fmt: skip
        if name in analysis_timings:
            timings[label] = analysis_timings[name]

    table = timing_table(timings)
    atomic_write_text(folder / "timings.json", json.dumps(timings, indent=2) + "\n")
    report = folder / "results" / "report.md"
    if report.is_file():
        atomic_write_text(report, report.read_text(encoding="utf-8").rstrip("\n") + "\n\n## Time per stage\n\n" + table + "\n")
    shutil.rmtree(previous_run(folder), ignore_errors=True)
    print(final_summary(folder, tables, table))
    return 0


def timing_table(timings: dict[str, float]) -> str:
    """A Markdown table of seconds per stage, with each stage's share and the total."""
    total = sum(timings.values())
    lines = ["| stage | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.1f} | {seconds / total:.0%} |" for name, seconds in timings.items()] if total else []
    lines.append(f"| **total** | **{total:.1f}** | |")
    return "\n".join(lines)


def final_summary(folder: Path, tables: dict, timing: str) -> str:
    from analysis.formatting import format_consistency_table
    from analysis.report import read_summary
    from analysis.scorecard import console_summary

    lines = ["", "=" * 100] + console_summary(read_summary(folder / "results"))
    main_table = tables.get("teacher_forced.main")
    if main_table is not None:
        lines += ["Consistency on held-out prompts, all wordings (teacher-forced; 95% bootstrap intervals)", ""]
        lines += [format_consistency_table(main_table), ""]
    lines += ["Time per stage:", "", timing, ""]
    lines += [f"Report: {folder / 'results' / 'report.md'}", f"Heads:  {folder / 'train'}", "",
              f"Try commands of your own: python -m analysis.sample --heads {folder / 'train'} --prompt TEXT --command TEXT ..."]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(make_parser().parse_args()))
