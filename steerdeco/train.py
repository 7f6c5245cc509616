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
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from .io import atomic_write_text
from .training.config import SteeringConfig

logger = logging.getLogger(__name__)


def make_parser():
    """trl's ``TrlParser`` over :class:`SteeringConfig` (``--config FILE`` plus one flag per field)."""
    from trl import TrlParser

    return TrlParser((SteeringConfig,))


def _resume_argument(value: str | None):
    if value is None or value.lower() in ("", "none", "false", "no"):
        return None
    if value.lower() in ("last", "true", "yes"):
        return True
    return value


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
    result = trainer.train(resume_from_checkpoint=_resume_argument(config.resume_from_checkpoint))
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
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run :func:`main`."""
    (config,) = make_parser().parse_args_and_config(args=argv)
    return main(config)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli()
    sys.exit(0)
