"""``SteeringTrainer``: trl's ``SFTTrainer`` on the AutoDeco + steering objective (wiring and overridden hooks).

What changes from ``SFTTrainer`` (everything else, from the optimizer to DDP, logging callbacks and
``resume_from_checkpoint``, is the Trainer's own):

* before any model is loaded, :mod:`~steerdeco.training.preflight` checks the output folder, the
  checkpoint to resume from, ``init_heads`` and the control data;
* the model (:mod:`~steerdeco.training.model`): an :class:`~steerdeco.AutoDecoModel` read at the
  response positions only, through the backbone or, head-only, from the backbone cache; LoRA is
  added in one place (:mod:`~steerdeco.training.lora`);
* data (:mod:`~steerdeco.training.data`): control rows grouped by prompt, a batch is a few groups
  with every variant of each (:mod:`~steerdeco.training.collator`);
* ``compute_loss``: the :class:`~steerdeco.training.objective.SteeringObjective` built once from
  the config; ``log`` adds the :class:`~steerdeco.training.metrics.SteeringMetrics` since the last log;
* checkpoints: heads (+ LoRA adapter) as safetensors, optimizer/scheduler/RNG state as safetensors
  + JSON (:mod:`~steerdeco.training.checkpoint`); nothing is pickled. A checkpoint is written into
  a hidden folder and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch
from trl import SFTTrainer

from ..io import atomic_write_text, mark_output
from ..modeling import AutoDecoModel
from ..rows import select_split
from .checkpoint import (
    OPTIMIZER_STATE,
    RNG_STATE,
    SCHEDULER_STATE,
    STEERING_CONFIG_NAME,
    TRAINER_STATE_NAME,
    full_optimizer_state,
    has_state,
    is_sharded,
    load_state,
    load_trained_into,
    rng_state,
    save_state,
    save_trained,
    set_rng_state,
)
from .collator import SteeringCollator
from .config import SteeringConfig
from .data import fit_context_normalization, prepare_data
from .metrics import SteeringMetrics, top_p_saturation
from .model import MODEL_INPUTS, SteeringModel, build_model, load_anchor, prepare_model
from .objective import SteeringObjective
from .preflight import TOOL, preflight

logger = logging.getLogger(__name__)


class SteeringTrainer(SFTTrainer):
    """Trains AutoDeco heads (and optionally LoRA) to predict T and P *and* to obey randomness commands.

    Args:
        model: an :class:`~steerdeco.AutoDecoModel`; None builds one from ``args.model_name_or_path``
            (then ``processing_class`` defaults to its tokenizer). In ``lora_joint`` mode a model
            without adapters gets them.
        args: a :class:`SteeringConfig`.
        train_dataset / eval_dataset: control rows (``datasets.Dataset``, one row per prompt and
            variant, see :mod:`steerdeco.training.collator`). None: read ``args.dataset_path`` and
            take the rows of ``args.train_split`` / ``args.eval_split``.
        processing_class: the tokenizer (with a chat template and a pad token).
        callbacks, optimizers: as for ``SFTTrainer``.

    After ``__init__``: ``trainer.autodeco_model`` is the model being trained, ``trainer.objective``
    the objective, ``trainer.metrics`` the running metric sums, ``trainer.backbone_cache`` the cache
    (or None) and ``trainer.backbone_cache_seconds`` the time it took to load or build,
    ``trainer.train_rows``/``eval_rows`` the control rows.
    """

    _tag_names = ["trl", "steerdeco"]
    _name = "Steering"
    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(
        self,
        model: AutoDecoModel | None = None,
        args: SteeringConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is None:
            args = SteeringConfig()
        if not isinstance(args, SteeringConfig):
            raise TypeError(f"args must be a SteeringConfig, got {type(args).__name__}")
        # everything that can be checked without a model, before one is loaded
        plan = preflight(args, need_data=train_dataset is None)
        self.resume_checkpoint = plan.resume_checkpoint
        if train_dataset is None:
            train_dataset = select_split(plan.rows, args.train_split)
            if eval_dataset is None:
                eval_dataset = select_split(plan.rows, args.eval_split)
        if len(train_dataset) == 0:
            raise ValueError(
                f"no training rows (split == {args.train_split!r}) in the control data; set train_split to a split "
                "the data has"
            )
        if model is None:
            model, tokenizer = build_model(args)
            processing_class = processing_class or tokenizer
        else:
            model = prepare_model(model, args)
        if processing_class is None:
            raise ValueError("pass the model's tokenizer as processing_class")
        if processing_class.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (tokenizer.pad_token = tokenizer.eos_token)")
        if eval_dataset is not None and len(eval_dataset) == 0:
            eval_dataset = None
        data = prepare_data(args, model, processing_class, train_dataset, eval_dataset)
        self.train_rows, self.eval_rows = train_dataset, data.eval_rows  # the final ordering report scores these
        self.split_names = data.split_names
        self.backbone_cache, self.backbone_cache_seconds = data.backbone_cache, data.cache_seconds
        if model.heads.standardize_context and not args.init_heads:  # a resumed run loads the saved statistics
            fit_context_normalization(model, data, processing_class.pad_token_id, args)

        import datasets

        self.autodeco_model = model
        steering_model = SteeringModel(model, args.logit_top_k, args.logit_bins, lm_loss=args.training_mode == "lora_joint",
                                       anchor=load_anchor(args, model))
        super().__init__(
            model=steering_model,
            args=args,
            data_collator=SteeringCollator(processing_class.pad_token_id, self.split_names, self.backbone_cache),
            train_dataset=datasets.Dataset.from_list(data.train_groups),
            eval_dataset=datasets.Dataset.from_list(data.eval_groups) if data.eval_groups else None,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.objective = SteeringObjective.from_config(args)
        self.metrics = SteeringMetrics(self.split_names)
        self._generator_key, self._generator_calls = None, 0
        self._warned_top_p = False  # the saturated-top-p warning, logged once a run

    # -- objective ----------------------------------------------------------------------------
    def _loss_generator(self, mode: str) -> torch.Generator:
        """A generator for the easy-token draw that depends only on (seed, step, call, process): resumable."""
        key = (mode, self.state.global_step)
        if key != self._generator_key:
            self._generator_key, self._generator_calls = key, 0
        self._generator_calls += 1
        text = f"{self.args.seed}|{mode}|{self.state.global_step}|{self._generator_calls}|{self.args.process_index}"
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The weighted steering objective instead of SFT's NLL; records every term and the ordering metrics."""
        mode = "train" if self.model.training else "eval"
        outputs = model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs})
        loss, terms = self.objective(outputs, inputs, generator=self._loss_generator(mode))
        if mode == "eval" and self.args.training_mode == "lora_joint" and "input_ids" in inputs:
            terms["base_lm_loss"] = self.model.base_lm_loss(
                *(inputs[k] for k in ("input_ids", "attention_mask", "response_positions", "response_targets", "response_mask"))
            )
        self.metrics.record(mode, terms, outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss only (the steering model returns no logits); the metrics come from ``compute_loss``."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the steering metrics averaged since the last log and over processes: every loss term, mean T
        and P per variant (``mean_temperature/low``, ...) and the share of groups ordered low < none < high
        per command split (``ordered_temperature/train``, ...); ``eval_``-prefixed during evaluation."""
        mode = "train" if self.model.training else "eval"
        sums = self.metrics.sums[mode]
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums.to(self.accelerator.device), reduction="sum").cpu()
        logs.update(self.metrics.averages(sums, prefix="eval_" if mode == "eval" else ""))
        self.metrics.reset(mode)
        warning = top_p_saturation(logs)
        if warning is not None and not self._warned_top_p:
            self._warned_top_p = True
            logger.warning(warning)
        super().log(logs, start_time)

    # -- running and resuming -------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``; without ``resume_from_checkpoint`` the config's (checked by the preflight) is used.

        ``True`` or ``"last"`` resumes from the last *complete* checkpoint of ``output_dir``; a folder
        is checked like the config's (complete, trained with the same settings).
        """
        from .preflight import resolve_resume

        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            checkpoint = self.resume_checkpoint
        else:
            checkpoint = resolve_resume(self.args, resume_from_checkpoint)
        if self.args.should_save:
            mark_output(self.args.output_dir, TOOL)
        if checkpoint is not None:
            logger.info("resuming from %s", checkpoint)
        return super().train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint), **kwargs)

    # -- checkpoints (no pickle) ----------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        """``Trainer._save_checkpoint``, but atomic: everything goes into ``.checkpoint-N.partial``, which is
        renamed to ``checkpoint-N`` once every process has written its part."""
        from transformers.trainer_callback import ExportableState
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"checkpoint-{self.state.global_step}"
        final, staging = run_dir / name, run_dir / f".{name}.partial"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left behind by a killed run
        self.accelerator.wait_for_everyone()
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(str(staging), _internal_call=True)
        if self.state.best_global_step:
            best = run_dir / f"checkpoint-{self.state.best_global_step}"
            if best == final or best.exists():
                self.state.best_model_checkpoint = str(best)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))
        if self.args.should_save:
            for callback in [*self.callback_handler.callbacks, self.control]:
                if isinstance(callback, ExportableState):
                    callback_name = callback.__class__.__name__
                    if isinstance(self.state.stateful_callbacks[callback_name], list):
                        self.state.stateful_callbacks[callback_name].append(callback.state())
                    else:
                        self.state.stateful_callbacks[callback_name] = callback.state()
            self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if final.exists():  # the same step saved again (e.g. after a resume): replace it whole
                old = run_dir / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, final)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Heads (+ LoRA adapter) as safetensors and the config as JSON, instead of the whole model and a
        pickled ``training_args.bin``. Only the writing process saves; under FSDP from the full state dict
        that ``save_model`` gathered from every process's shards."""
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is not None and self.is_fsdp_enabled:  # gathered from the shards by save_model
            prefix = "autodeco."
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            save_trained(self.autodeco_model, output_dir, state_dict=state_dict)
        else:
            save_trained(self.autodeco_model, output_dir)
        atomic_write_text(Path(output_dir) / STEERING_CONFIG_NAME, self.args.to_json_string())
        logger.info("saved the trained heads%s to %s", " and adapter" if self.args.training_mode == "lora_joint" else "", output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Optimizer and scheduler state as safetensors + JSON (``optimizer.*``, ``scheduler.*``); under FSDP
        the optimizer state is gathered to full tensors keyed by parameter name (every process takes part)."""
        if self.is_fsdp_enabled and is_sharded(self.model):
            optimizer_state = full_optimizer_state(self.model, getattr(self.optimizer, "optimizer", self.optimizer))
        else:
            optimizer_state = self.optimizer.state_dict() if self.args.should_save else None
        if self.args.should_save:
            save_state(output_dir, OPTIMIZER_STATE, optimizer_state)
            save_state(output_dir, SCHEDULER_STATE, self.lr_scheduler.state_dict())

    def _rng_file(self) -> str:
        return RNG_STATE if self.args.world_size <= 1 else f"{RNG_STATE}_{self.args.process_index}"

    def _save_rng_state(self, output_dir: str) -> None:
        """RNG states as safetensors + JSON, one file per process."""
        save_state(output_dir, self._rng_file(), rng_state())

    def _refuse_sharded_loading(self, what: str) -> None:
        if self.is_fsdp_enabled:
            raise ValueError(
                f"{what} under FSDP is not supported yet (the checkpoint holds full, unsharded heads and adapter): "
                "start a new run with init_heads=CHECKPOINT, or resume without FSDP"
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load the heads (+ adapter) written by ``_save``."""
        self._refuse_sharded_loading("resume_from_checkpoint")
        load_trained_into(self.autodeco_model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """Load the heads (+ adapter) of the best checkpoint."""
        self._refuse_sharded_loading("load_best_model_at_end")
        load_trained_into(self.autodeco_model, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Read the optimizer and scheduler state written by ``_save_optimizer_and_scheduler``."""
        if checkpoint is None:
            return
        for name, target in ((OPTIMIZER_STATE, self.optimizer), (SCHEDULER_STATE, self.lr_scheduler)):
            if not has_state(checkpoint, name):
                raise ValueError(
                    f"checkpoint {checkpoint} has no {name} state ({name}.json/.safetensors): it cannot continue the "
                    "run exactly; resume from a full checkpoint or start afresh with --overwrite_output_dir"
                )
            target.load_state_dict(load_state(checkpoint, name))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Restore the RNG states written by ``_save_rng_state``."""
        if checkpoint is None:
            return
        if not has_state(checkpoint, self._rng_file()):
            logger.warning("no RNG state for this process in %s; resuming with fresh RNG state", checkpoint)
            return
        set_rng_state(load_state(checkpoint, self._rng_file()))

    def _send_telemetry(self) -> None:
        """Nothing: steerdeco makes no network calls."""
