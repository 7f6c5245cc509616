"""Train AutoDeco heads that obey randomness commands.

    python -m steerdeco.train --config configs/head_only.yaml [--any_field value ...]
    accelerate launch --multi_gpu --num_processes 2 -m steerdeco.train --config configs/head_only.yaml

(``--multi_gpu`` picks accelerate's DDP launcher; on a machine without GPUs the processes use gloo.)

Every :class:`~steerdeco.training.SteeringConfig` field can be set in the YAML file or as a flag
(flags win). The output folder receives the heads (``heads.safetensors``, loadable with
``AutoDecoModel.from_pretrained``), the LoRA adapter in ``adapter/`` for ``lora_joint``,
``steering_config.json``, ``eval_results.json`` and, with ``final_ordering_report``,
``ordering_report.json`` (:func:`steerdeco.training.evaluate_ordering` on the evaluation rows).
``--resume_from_checkpoint last`` (or a checkpoint folder) continues an interrupted run.

Bad settings, data and folders are refused before the model is loaded, with one line naming the field,
file or folder (exit status 2): see :mod:`steerdeco.training.preflight`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .io import atomic_write_text, read_yaml_file
from .training.config import SteeringConfig

logger = logging.getLogger(__name__)

PROG = "python -m steerdeco.train"
DESCRIPTION = (
    "Train AutoDeco heads that obey randomness commands. Every SteeringConfig field below can be set in a YAML file "
    "(--config FILE) or as a flag; flags win."
)
EPILOG = (
    "Resume an interrupted run with --resume_from_checkpoint last (the last complete checkpoint-N in --output_dir; "
    "its saved config must match). A non-empty --output_dir is refused unless resuming or --overwrite_output_dir."
)


def _parser_class():
    from trl import TrlParser

    class SteeringParser(TrlParser):
        """``TrlParser`` whose ``--config`` file is read strictly: a folder, a non-UTF-8 file, a duplicate key,
        a key that is no field or a file that is not a mapping is a one-line error naming the file."""

        def parse_args_and_config(self, args=None, **kwargs):
            args = list(args) if args is not None else sys.argv[1:]
            config_files = [a for a in args if a.startswith("--config=")]
            for item in config_files:  # --config=FILE -> --config FILE
                index = args.index(item)
                args[index : index + 1] = ["--config", item.split("=", 1)[1]]
            if args.count("--config") > 1:
                raise ValueError("--config is given more than once; merge the files into one")
            if "--config" in args:
                index = args.index("--config")
                if index + 1 >= len(args):
                    raise ValueError("--config needs a file: --config FILE")
                path = args[index + 1]
                del args[index : index + 2]
                data = read_yaml_file(path, "--config")
                if data is None:
                    data = {}
                if not isinstance(data, dict):
                    raise ValueError(f"--config {path}: expected a mapping of field names to values, got {type(data).__name__}")
                env = data.pop("env", {})
                if not isinstance(env, dict):
                    raise ValueError(f"--config {path}: 'env' must be a mapping of variable names to values")
                unknown = [key for key in data if key not in SteeringConfig.__dataclass_fields__]
                if unknown:
                    raise ValueError(f"--config {path}: unknown field(s) {', '.join(map(repr, unknown))}; see "
                                     f"{PROG} --help for the fields")
                for key, value in env.items():
                    os.environ[str(key)] = str(value)
                self.set_defaults_with_config(**data)
            return self.parse_args_into_dataclasses(args=args, **kwargs)

    return SteeringParser


def make_parser():
    """trl's ``TrlParser`` over :class:`SteeringConfig` (``--config FILE`` plus one flag per field)."""
    parser = _parser_class()(
        (SteeringConfig,),
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="YAML file of SteeringConfig fields (configs/*.yaml); flags given as well override it",
    )  # fmt: skip
    return parser


def main(config: SteeringConfig) -> dict:
    """Train with ``config``, save the result in ``config.output_dir`` and return the final metrics.

    Returns:
        ``{"train": train metrics, "eval": trainer evaluation metrics (or {}), "ordering": the
        ordering report's ``by_command_split`` (or {}), "train_seconds": wall time of training (backbone
        cache included), "cache_seconds": of which loading or building the backbone cache}``.
    """
    from .training.evaluation import evaluate_ordering
    from .training.trainer import SteeringTrainer

    started = time.perf_counter()
    trainer = SteeringTrainer(args=config)
    result = trainer.train()  # resumes as config.resume_from_checkpoint says (checked by the trainer's preflight)
    trainer.save_model(config.output_dir)
    train_seconds = time.perf_counter() - started
    metrics = {
        "train": dict(result.metrics),
        "eval": {},
        "ordering": {},
        "train_seconds": train_seconds,
        "cache_seconds": trainer.backbone_cache_seconds,
    }
    if trainer.eval_dataset is not None:
        step = trainer.state.global_step
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
        metrics["eval"] = dict(done[-1]) if done else trainer.evaluate()
    output = Path(config.output_dir)
    if trainer.is_world_process_zero():
        if config.final_ordering_report and trainer.eval_rows is not None:
            report = evaluate_ordering(
                trainer.autodeco_model,
                trainer.processing_class,
                trainer.eval_rows,
                batch_size=config.cache_batch_size,
                progress=not config.disable_tqdm,
            )
            metrics["ordering"] = report["by_command_split"]
            atomic_write_text(output / "ordering_report.json", json.dumps(report, indent=2, default=str) + "\n")
            for split, entry in report["by_command_split"].items():
                logger.info(
                    "held-out ordering, %s phrasings: T %.3f, P %.3f of %d groups",
                    split,
                    entry["temperature_ordered"],
                    entry["top_p_ordered"],
                    entry["units"],
                )
        atomic_write_text(output / "eval_results.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def cli(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run :func:`main`.

    Bad input (settings, files, folders, data) exits with status 2 and one line on stderr naming it.
    """
    parser = make_parser()
    try:
        (config,) = parser.parse_args_and_config(args=argv)
        return main(config)
    except (ValueError, FileNotFoundError) as error:
        logger.debug("refused", exc_info=True)
        message = " ".join(str(error).split())  # one line
        parser.exit(2, f"{PROG}: error: {message}\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli()
    sys.exit(0)
