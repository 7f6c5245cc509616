"""How cache build, a head-only epoch and the teacher-forced analysis grow with the number of rows.

For each size (``--rows``, default 64,256,1024 control rows) the benchmark builds synthetic control
data of that many rows (the synthetic prompts with numbered copies, so every group is distinct;
responses of ``--response-tokens``), then times, in one process:

* building the backbone cache of every row (train and eval);
* one head-only epoch from the cache (the train rows);
* the teacher-forced analysis of the eval rows from the cache (scores, statistics, report).

and prints a table of seconds and seconds per row; the last column compares each stage's cost per
row with the smallest size (1.00: linear growth). Sizes are rows, rounded up to whole groups of 9; a
quarter of the groups is eval. A warm-up run of the smallest size comes first and is not reported.

    python benchmarks/growth.py [--rows 64,256,1024] [--model embedded|tiny] [--response-tokens 32]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch

from analysis import run_analysis
from steerdeco.rows import select_split
from steerdeco.training import SteeringConfig, SteeringTrainer, load_base_model
from steerdeco.training.synthetic import synthetic_control_records


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="64,256,1024", help="comma-separated data sizes in rows (default 64,256,1024)")
    parser.add_argument("--model", default="embedded", help="'embedded' (default) or 'tiny'")
    parser.add_argument("--response-tokens", type=int, default=32, help="response truncation (default 32)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    return parser


def control_rows(count: int) -> list[dict]:
    """``count`` synthetic control rows (whole groups, at least ``count``); every 4th group is eval."""
    template = synthetic_control_records(num_prompts=12, num_eval_prompts=0, response_repeats=2)
    per_group = sum(1 for r in template if r["group_id"] == "p0")
    rows = []
    for copy in range(-(-count // per_group)):
        source = [r for r in template if r["group_id"] == f"p{copy % 12}"]
        for row in source:
            group = f"g{copy}"
            messages = [{"role": "user", "content": f"{row['messages'][0]['content']} (request {copy})"}]
            split = "eval" if copy % 4 == 3 else "train"
            rows.append({**row, "group_id": group, "prompt_id": group, "messages": messages, "split": split})
    return rows


def measure(size: int, args: argparse.Namespace, base, tokenizer, tmp: str) -> dict[str, float]:
    import datasets

    rows = control_rows(size)
    data = datasets.Dataset.from_list(rows)
    config = SteeringConfig(
        output_dir=f"{tmp}/out-{size}",
        cache_dir=f"{tmp}/cache-{size}",
        model_name_or_path=args.model,
        num_train_epochs=1,
        per_device_train_batch_size=4,
        max_response_tokens=args.response_tokens,
        cache_batch_size=16,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        final_ordering_report=False,
        heads_mlp_width=192,
        heads_context_features=True,
    )
    trainer = SteeringTrainer(
        args=config,
        train_dataset=select_split(data, "train"),
        eval_dataset=select_split(data, "eval"),
        processing_class=tokenizer,
        model=_fresh_model(base, config),
    )
    cache_seconds = trainer.backbone_cache_seconds
    started = time.perf_counter()
    trainer.train()
    epoch_seconds = time.perf_counter() - started
    eval_rows = [r for r in rows if r["split"] == "eval"]
    started = time.perf_counter()
    run_analysis(
        trainer.autodeco_model.eval(),
        tokenizer,
        eval_rows,
        protocols=["teacher_forced"],
        n_boot=200,
        figures=False,
        progress=False,
        backbone_cache=trainer.backbone_cache,
        max_response_tokens=args.response_tokens,
    )
    analysis_seconds = time.perf_counter() - started
    train_rows = len(rows) - len(eval_rows)
    cache = trainer.backbone_cache
    print(f"{len(rows)} rows: cache of {cache.hidden.shape[0]} positions, {cache.bytes_per_position:.0f} bytes per position "
          f"(hidden {cache.hidden.dtype}, context {'stored' if cache.context is not None else 'not stored'})")
    return {
        "rows": len(rows),
        "cache build": (cache_seconds, len(rows)),
        "head-only epoch": (epoch_seconds, train_rows),
        "analysis (teacher-forced)": (analysis_seconds, len(eval_rows)),
    }


def _fresh_model(base, config: SteeringConfig):
    from steerdeco import AutoDecoModel, HeadsConfig

    torch.manual_seed(config.seed)
    heads = HeadsConfig(
        hidden_size=base.config.hidden_size,
        mlp_width=config.heads_mlp_width,
        context_features=config.heads_context_features,
    )
    return AutoDecoModel(base, heads)


def main(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in str(args.rows).split(",") if s.strip()]
    if not sizes or min(sizes) < 18:
        raise SystemExit(f"--rows must be integers >= 18 (two groups) such as 64,256,1024; got {args.rows!r}")
    base, tokenizer = load_base_model(args.model)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        measure(min(sizes), args, base, tokenizer, f"{tmp}/warm-up")  # first calls allocate and compile
        for size in sizes:
            results.append(measure(size, args, base, tokenizer, tmp))
            print(f"measured {results[-1]['rows']} rows", flush=True)
    stages = [k for k in results[0] if k != "rows"]
    print(f"\nmodel {args.model}, responses <= {args.response_tokens} tokens, torch threads {torch.get_num_threads()}")
    print("| rows | stage | rows in stage | seconds | ms per row | per-row cost vs smallest |")
    print("|---:|---|---:|---:|---:|---:|")
    for result in results:
        for stage in stages:
            seconds, count = result[stage]
            first_seconds, first_count = results[0][stage]
            relative = (seconds / count) / (first_seconds / first_count)
            print(f"| {result['rows']} | {stage} | {count} | {seconds:.2f} | {1000 * seconds / count:.1f} | {relative:.2f} |")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(make_parser().parse_args())
