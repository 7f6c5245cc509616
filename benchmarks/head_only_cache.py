"""Head-only training: one epoch from the backbone cache against one epoch through the backbone.

Both runs train the same fresh heads of the embedded SmolLM2-135M-Instruct on the same groups with the
same settings, in one process; the cache is built in between (its time is reported, not part of
the ratio). Data: the training rows of ``--dataset-path`` (control data), or the built-in synthetic
control set. The last line is the speed-up: seconds per epoch through the backbone / from the cache.

    python benchmarks/head_only_cache.py [--dataset-path outputs/control_data] [--max-groups 24]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch

from steerdeco import AutoDecoModel, HeadsConfig
from steerdeco.embedded import load_embedded_model
from steerdeco.rows import TRAINING_COLUMNS, load_control_data, select_split
from steerdeco.training import SteeringConfig, SteeringTrainer
from steerdeco.training.synthetic import synthetic_control_rows


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-path", default=None, help="control data (default: the synthetic control set)")
    parser.add_argument("--max-groups", type=int, default=24, help="training groups in the epoch (default 24)")
    parser.add_argument("--batch-groups", type=int, default=4, help="groups per step (default 4)")
    parser.add_argument("--max-response-tokens", type=int, default=128, help="response truncation (default 128)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    return parser


def main(args: argparse.Namespace) -> float:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dataset_path:
        rows = select_split(load_control_data(args.dataset_path, required=TRAINING_COLUMNS), "train")
    else:
        rows = select_split(synthetic_control_rows(num_prompts=12, num_eval_prompts=0, response_repeats=2), "train")
    base, tokenizer = load_embedded_model()
    model = AutoDecoModel(base, HeadsConfig(hidden_size=base.config.hidden_size, mlp_width=192, context_features=True))
    with tempfile.TemporaryDirectory() as tmp:

        def trainer(cache: bool) -> SteeringTrainer:
            config = SteeringConfig(
                output_dir=f"{tmp}/out",
                cache_dir=f"{tmp}/cache",
                model_name_or_path="embedded",
                backbone_cache=cache,
                num_train_epochs=1,
                max_train_groups=args.max_groups,
                per_device_train_batch_size=args.batch_groups,
                max_response_tokens=args.max_response_tokens,
                save_strategy="no",
                logging_steps=1000,
                disable_tqdm=True,
            )
            return SteeringTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)

        through = trainer(cache=False)
        groups, rows_in_epoch = len(through.train_dataset), sum(len(g) for g in through.train_dataset["variant"])
        started = time.perf_counter()
        through.train()
        backbone_epoch = time.perf_counter() - started

        started = time.perf_counter()
        cached = trainer(cache=True)
        cache_build = time.perf_counter() - started
        started = time.perf_counter()
        cached.train()
        cache_epoch = time.perf_counter() - started
    ratio = backbone_epoch / cache_epoch
    print(f"epoch: {groups} groups, {rows_in_epoch} rows, {args.batch_groups} groups per step, torch threads {torch.get_num_threads()}")
    print(f"epoch through the backbone: {backbone_epoch:.2f} s")
    print(f"cache build (once):         {cache_build:.2f} s")
    print(f"epoch from the cache:       {cache_epoch:.2f} s")
    print(f"speed-up (backbone epoch / cache epoch): {ratio:.1f}")
    print(f"{ratio:.2f}")
    return ratio


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(make_parser().parse_args())
