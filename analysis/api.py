"""The Python API of the analysis: :func:`run_analysis` (a model in memory, like lm-eval's ``simple_evaluate``) and :func:`run` (an :class:`~analysis.options.AnalysisConfig`: load, score, write).

From Python (e.g. with a model already in memory)::

    from analysis import run_analysis
    markdown, tables = run_analysis(model, tokenizer, rows, "results", seeds=(0,), max_groups=8)
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from steerdeco.errors import AnalysisError

from .collect import DEFAULT_FREE_RUNNING_VARIANTS
from .data import as_row_list, build_rows, check_responses, load_data, select_rows
from .model import attach_heads, check_hidden_size, default_model, load_base, resolve_device, resolve_heads
from .options import BUILD_OPTIONS, PROTOCOLS, WORK_DIR, AnalysisConfig, ScoringOptions
from .results import analyse_scores, check_out_dir, write_results
from .scoring import score_rows

logger = logging.getLogger(__name__)


def run_analysis(
    model,
    tokenizer,
    rows,
    out_dir: str | os.PathLike | None = None,
    *,
    protocols: Iterable[str] = PROTOCOLS,
    seeds: Iterable[int] = (0, 1, 2),
    max_new_tokens: int = 48,
    batch_size: int = 8,
    split: str = "eval",
    max_groups: int | None = None,
    free_running_groups: int | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    figures: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    run_info: Mapping | None = None,
    free_running_variants: str | Sequence[str] = DEFAULT_FREE_RUNNING_VARIANTS,
    prompt_only_temperature: float | None = 1.0,
    seen: Mapping | None = None,
    backbone_cache=None,
    max_response_tokens: int | None = None,
    timings: dict | None = None,
    reference_model=None,
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Score an in-memory model on control-data rows and analyse (what ``python -m analysis`` does after loading).

    Args:
        model: an :class:`~steerdeco.AutoDecoModel` (heads attached; its device is used).
        tokenizer: its tokenizer (with a chat template and a pad token).
        rows: control-data rows (a ``datasets.Dataset``, e.g. from
            :func:`steerdeco.control.load_control_data`, or a list of row dicts).
        out_dir: results folder to write (see :func:`analysis.results.write_results`); ``None``: nothing is written and
            the markdown has no figures.
        protocols, seeds, max_new_tokens, batch_size, free_running_groups: scoring (see :class:`~analysis.options.ScoringOptions`).
        split, max_groups, seed: which rows (see :func:`analysis.data.select_rows`); ``seed`` also seeds the bootstrap
            and the ``free_running_groups`` subset.
        n_boot, figures, overwrite: the report (see :func:`analysis.report.write_report`).
        run_info: written as ``run.json`` (and summarised in ``report.md``) when given.
        free_running_variants, prompt_only_temperature: which rows generate text, and the
            prompt-only baseline's temperature (None: no baseline); see :class:`~analysis.options.ScoringOptions`.
        seen: named values of the train prompts (:func:`analysis.steering.seen_targets`); None:
            taken from the ``train`` rows among ``rows`` (pass every row, ``split`` picks the analysed ones).
        backbone_cache, max_response_tokens: teacher-forced scores from the training's backbone cache
            (see :func:`analysis.collect.teacher_forced_scores`).
        timings: filled with seconds per protocol (``teacher_forced``, ``free_running``), for the
            reference heads (``reference``) and for the statistics and report (``report``).
        reference_model: an :class:`~steerdeco.AutoDecoModel` with heads not trained to steer (same
            backbone), or None: its no-command rows are scored the same way and compared with the
            model's (:func:`analysis.reference.reference_guard`, measure ``no_command_reference``).

    Returns:
        ``(markdown, tables)``: the report text and ``{"<protocol>.<name>": DataFrame}``;
        ``tables["teacher_forced.main"]`` is the consistency table (format it with
        :func:`analysis.formatting.format_consistency_table`). The raw variant scores are included
        too, as ``tables["scores.<protocol>"]`` (one row per scored row and seed, arrays per token).

    Raises:
        AnalysisError: bad options or rows (no responses for teacher forcing, no rows of ``split``),
            or a non-empty ``out_dir`` without ``overwrite``.
        ValueError: too few groups for the statistics.
    """
    options = ScoringOptions(
        protocols=protocols, seeds=seeds, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
        free_running_groups=free_running_groups, seed=seed, free_running_variants=free_running_variants,
        prompt_only_temperature=prompt_only_temperature, backbone_cache=backbone_cache,
        max_response_tokens=max_response_tokens,
    )
    if out_dir is not None:
        check_out_dir(out_dir, overwrite)  # fail before the expensive part
    from .steering import seen_targets

    rows = as_row_list(rows)
    if seen is None:
        seen = seen_targets(rows)
    selected = select_rows(rows, split=split, max_groups=max_groups, seed=seed)
    scores = score_rows(model, tokenizer, selected, options, timings=timings)
    extra = None
    if reference_model is not None:
        from .reference import reference_guard

        started = time.perf_counter()
        extra = {"no_command_reference": reference_guard(
            reference_model, tokenizer, selected, scores, seeds=seeds, max_new_tokens=max_new_tokens, batch_size=batch_size,
            backbone_cache=backbone_cache, max_response_tokens=max_response_tokens, n_boot=n_boot, seed=seed,
            progress=progress)}
        if timings is not None:
            timings["reference"] = time.perf_counter() - started
    started = time.perf_counter()
    eval_only = split == "eval"
    if out_dir is None:
        markdown, tables = analyse_scores(scores, n_boot=n_boot, seed=seed, eval_only=eval_only, seen=seen,
                                          extra_measures=extra)
    else:
        markdown, tables = write_results(out_dir, scores, overwrite=overwrite, n_boot=n_boot, seed=seed,
                                         eval_only=eval_only, figures=figures, run_info=run_info, seen=seen,
                                         extra_measures=extra)
    tables.update({f"scores.{protocol}": frame for protocol, frame in scores.items()})
    if timings is not None:
        timings["report"] = time.perf_counter() - started
    return markdown, tables


@dataclass
class AnalysisResult:
    """What :func:`main` made: the results folder, the report text, the tables and the raw scores."""

    out: Path
    markdown: str
    tables: dict[str, pd.DataFrame]
    scores: dict[str, pd.DataFrame]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("steerdeco", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run(config: AnalysisConfig) -> AnalysisResult:
    """One analysis run as ``config`` says (what :func:`main` runs after parsing)."""
    out = check_out_dir(config.out, config.overwrite)
    heads_dir = resolve_heads(config.heads)
    reference_dir = None if config.reference_heads is None else resolve_heads(config.reference_heads, "--reference-heads")
    model_name = config.model or default_model(heads_dir)
    device = resolve_device(config.device)
    from .steering import seen_targets

    rows = None
    seen = None
    if config.data is not None:
        loaded = load_data(config)
        seen = seen_targets(loaded)
        rows = select_rows(loaded, config.split, config.max_groups, config.seed, source=f"--data {config.data}")
        if "teacher_forced" in config.protocols:
            check_responses(rows, source=f"--data {config.data}")

    guard_texts = None
    if config.lm_guard:  # before the model: a bad source fails fast
        from .lm_guard import guard_examples

        try:
            trained_on = {r.get("prompt_id") for r in loaded} if config.data is not None else ()  # never score data prompts
            guard_texts = guard_examples(config.lm_guard_source, config.lm_guard, config.seed, exclude_ids=trained_on)
        except ValueError as error:
            raise AnalysisError(f"--lm-guard-source: {error}") from None

    started = time.time()
    logger.info("loading base model %r", model_name)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()  # transformers' weight-loading bar
    try:
        base, tokenizer = load_base(model_name, from_heads=config.model is None)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    check_hidden_size(heads_dir, base, model_name)
    if reference_dir is not None:
        check_hidden_size(reference_dir, base, model_name, "--reference-heads")

    work = None
    owned_work = False
    try:
        if rows is None:
            if config.work_dir is not None:
                work = Path(config.work_dir)
                work.mkdir(parents=True, exist_ok=True)
            else:  # one hidden folder per --out, reused when an interrupted run is started again
                work = out.parent / f".{out.name}.work"
                work.mkdir(parents=True, exist_ok=True)
                owned_work = True
            built = build_rows(config, base, tokenizer, work, model_name)
            seen = seen_targets(built)
            source = f"control data built from --prompts {', '.join(config.prompts)}"
            rows = select_rows(built, config.split, config.max_groups, config.seed, source=source)
        model = attach_heads(heads_dir, base, model_name).to(device)
        logger.info("scoring %d rows (%d groups) with %s", len(rows), len({r["group_id"] for r in rows}), ", ".join(config.protocols))
        scores = score_rows(model, tokenizer, rows, config.scoring())
        extra = {}
        if guard_texts is not None:
            from .lm_guard import lm_guard

            extra["lm_guard"] = lm_guard(model, tokenizer, guard_texts, source=config.lm_guard_source, seed=config.seed,
                                         batch_size=config.batch_size).to_dict()
        if reference_dir is not None:
            from .reference import reference_guard

            reference_base = base  # the same network, unless --heads wrapped it in a LoRA adapter
            if model.base_model is not base:
                reference_base, _ = load_base(model_name, from_heads=config.model is None)
            reference = attach_heads(reference_dir, reference_base, model_name, "--reference-heads").to(device)
            extra["no_command_reference"] = reference_guard(
                reference, tokenizer, rows, scores, seeds=config.seeds, max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size, n_boot=config.n_boot, seed=config.seed, progress=config.progress)
        options = asdict(config)
        if config.data is not None:  # options of the on-the-fly build did not apply
            for name in BUILD_OPTIONS:
                options.pop(name)
        run_info = {
            **options,
            "heads": str(heads_dir),
            "model": model_name,
            "data": config.data if config.data is not None else (
                f"{WORK_DIR}/control_data" if owned_work else str(work / "control_data")),
            "device": device,
            "n_rows": {p: int(len(s)) for p, s in scores.items()},
            "n_groups": int(len({r["group_id"] for r in rows})),
            "n_groups_scored": {p: int(s["group_id"].nunique()) for p, s in scores.items()},
            "seconds": round(time.time() - started, 1),
            "versions": _versions(),
        }
        try:
            markdown, tables = write_results(
                out, scores, overwrite=config.overwrite, n_boot=config.n_boot, seed=config.seed,
                eval_only=config.split == "eval", figures=config.figures, run_info=run_info,
                extra_dirs={WORK_DIR: work} if owned_work else None, seen=seen,
                extra_measures=extra or None,
            )
        except AnalysisError:
            raise
        except ValueError as error:
            raise AnalysisError(f"the statistics of {run_info['n_groups']} prompt groups (--split {config.split}) failed: "
                                f"{error}; analyse more groups (--max-groups, --split all, more prompts)") from error
        owned_work = False  # moved into the results
    except BaseException:
        if owned_work and work is not None and work.exists():
            from steerdeco.control.responses import CACHE_FILE

            if (work / CACHE_FILE).is_file():
                logger.warning("kept the generated responses in %s: the same command resumes from them (delete the "
                               "folder to start afresh)", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
        raise
    return AnalysisResult(out, markdown, tables, scores)
