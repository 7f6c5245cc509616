"""Checks of a training run that need no model, made before anything expensive starts.

:func:`preflight` is called first thing by :class:`~steerdeco.training.SteeringTrainer`: after the
field checks of :class:`~steerdeco.training.SteeringConfig` (``__post_init__``) it checks

* the output folder: a folder with content is refused unless the run resumes from it
  (``resume_from_checkpoint``) or ``overwrite_output_dir`` is set *and* the folder was written by
  ``steerdeco.train`` (its ``.steerdeco-output`` marker); the backbone cache inside it is kept;
* the checkpoint to resume from: ``last`` is the last *complete* ``checkpoint-N``, a folder must be
  complete, and the checkpoint's saved config must match this run's (the message lists what differs);
* ``init_heads``: readable heads whose config matches the run's ``heads_*`` fields;
* ``anchor_heads``: readable heads that read the prompt as the run's heads do;
* the control data at ``dataset_path``: readable, with the columns training needs.

Every failure is a ``ValueError`` (or ``FileNotFoundError``) whose one-line message names the field,
file or folder and the fix.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import HeadsConfig
from ..errors import ControlDataError
from ..io import check_replaceable, read_json_file
from ..rows import TRAINING_COLUMNS, load_control_data
from .checkpoint import (
    OPTIMIZER_STATE,
    SCHEDULER_STATE,
    STEERING_CONFIG_NAME,
    config_differences,
    has_state,
    last_complete_checkpoint,
    missing_checkpoint_files,
)
from .config import HEADS_FIELDS

logger = logging.getLogger(__name__)

TOOL = "steerdeco.train"
CACHE_SUBDIR = "backbone_cache"
LAST = "last"


@dataclass
class Plan:
    """What the preflight found: the control rows (or None) and the checkpoint to resume from (or None)."""

    rows: object = None
    resume_checkpoint: Path | None = None


def heads_settings(config: HeadsConfig) -> dict[str, object]:
    """The fields of a heads config that a run sets through ``heads_*``."""
    return {name: getattr(config, name) for name in HEADS_FIELDS}


def check_init_heads(saved: HeadsConfig, expected: dict[str, object], source: str) -> None:
    """Refuse ``init_heads`` whose saved config differs from the run's ``heads_*`` settings."""
    differ = [(name, saved_value) for name, saved_value in heads_settings(saved).items() if saved_value != expected[name]]
    if differ:
        wanted = ", ".join(f"{HEADS_FIELDS[n]}: {json.dumps(v)}" for n, v in differ)
        got = ", ".join(f"{HEADS_FIELDS[n]}={json.dumps(expected[n])}" for n, _ in differ)
        raise ValueError(f"{source} were saved with other heads settings than this run's ({got}); set {wanted} to "
                         "start from them, or leave init_heads out")


def resume_request(value) -> str | None:
    """``resume_from_checkpoint`` as ``None``, ``"last"`` or a folder (``true``/``yes`` mean ``last``)."""
    if value is None or value is False:
        return None
    if value is True:
        return LAST
    text = str(value).strip()
    if text.lower() in ("", "none", "false", "no"):
        return None
    if text.lower() in (LAST, "true", "yes"):
        return LAST
    return text


def resolve_resume(args, value) -> Path | None:
    """The complete checkpoint folder that ``value`` (see :func:`resume_request`) names for this run, checked.

    Raises:
        ValueError: no complete checkpoint, an incomplete one, one without optimizer/scheduler state,
            or one trained with other settings (the differences are listed).
    """
    request = resume_request(value)
    if request is None:
        return None
    output_dir = Path(args.output_dir)
    if request == LAST:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"--resume_from_checkpoint last: {output_dir} holds no complete checkpoint-N folder to resume from; "
                "start the run without --resume_from_checkpoint"
            )
    else:
        checkpoint = Path(request)
        if not checkpoint.is_dir():
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: no such folder; give a checkpoint-N folder or 'last'")
        missing = missing_checkpoint_files(checkpoint)
        if missing:
            raise ValueError(
                f"--resume_from_checkpoint {checkpoint}: not a complete checkpoint (no {', '.join(missing)}); give "
                "another checkpoint-N folder or 'last'"
            )
    for name in (OPTIMIZER_STATE, SCHEDULER_STATE):
        if not has_state(checkpoint, name):
            raise ValueError(
                f"--resume_from_checkpoint {checkpoint}: no {name} state ({name}.json/.safetensors) to continue the "
                "run exactly; resume from a full checkpoint or start afresh with --overwrite_output_dir"
            )
    saved = read_json_file(checkpoint / STEERING_CONFIG_NAME, "checkpoint config")
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint config {checkpoint / STEERING_CONFIG_NAME} is not a JSON object; resume from another checkpoint")
    differences = config_differences(saved, json.loads(args.to_json_string()))
    if differences:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint} was trained with other settings (checkpoint -> this run: "
            f"{'; '.join(differences)}); resume with the checkpoint's settings, or start afresh with --overwrite_output_dir"
        )
    return checkpoint


def check_output_dir(args, resuming: bool) -> None:
    """Refuse an output folder with content unless resuming or ``overwrite_output_dir`` on a folder of this tool.

    With ``overwrite_output_dir`` the earlier run's files are removed here (main process only); the
    backbone cache in ``OUTPUT_DIR/backbone_cache`` is kept (it is checked against the run and rebuilt
    when it does not fit).
    """
    output_dir = Path(args.output_dir)
    if resuming and args.overwrite_output_dir:
        raise ValueError("--resume_from_checkpoint and --overwrite_output_dir contradict each other; give one of them")
    ignore = (CACHE_SUBDIR,) if args.cache_dir is None else ()
    if resuming:
        if output_dir.exists() and not output_dir.is_dir():
            raise ValueError(f"--output_dir {output_dir} is a file, not a folder; choose another --output_dir")
        return
    try:
        replace = check_replaceable(output_dir, TOOL, args.overwrite_output_dir, "--overwrite_output_dir", ValueError, ignore)
    except ValueError as error:
        hint = "" if args.overwrite_output_dir else " (or --resume_from_checkpoint last to continue its run)"
        raise ValueError(f"--output_dir: {error}{hint}") from None
    if replace and args.process_index == 0:
        logger.warning("--overwrite_output_dir: removing the earlier run's files from %s", output_dir)
        for entry in output_dir.iterdir():
            if entry.name in ignore or entry.name.startswith(".steerdeco-output"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _saved_heads_config(path, field_name: str, what: str) -> HeadsConfig:
    """The config of the heads saved in ``path`` (the ``field_name`` field); a missing folder or file names the
    field and ``what`` the folder must be."""
    from ..modeling import read_heads

    try:
        config, _ = read_heads(path, source=f"{field_name} {path}")
    except FileNotFoundError as error:
        raise ValueError(f"{error}; {field_name} must be {what}") from None
    return config


def check_init_heads_file(args) -> None:
    """``init_heads`` must be readable heads saved with this run's ``heads_*`` settings."""
    if not args.init_heads:
        return
    config = _saved_heads_config(args.init_heads, "init_heads", "a folder written by AutoDecoModel.save_pretrained")
    check_init_heads(config, heads_settings(args.heads_config(config.hidden_size)), f"init_heads {args.init_heads}")


def check_anchor_heads_file(args) -> None:
    """``anchor_heads`` must be readable heads whose context (pooling, layer) is the run's heads'."""
    if not args.anchor_heads:
        return
    config = _saved_heads_config(args.anchor_heads, "anchor_heads", "a folder written by AutoDecoModel.save_pretrained "
                                 "(e.g. a run of the same config with every steering weight 0)")
    run = args.heads_config(config.hidden_size)
    ours, theirs = (run.context_features, run.context_pooling, run.context_layer), (
        config.context_features, config.context_pooling, config.context_layer)
    if ours != theirs:
        raise ValueError(f"anchor_heads {args.anchor_heads}: their context (features, pooling, layer) {theirs} differs "
                         f"from this run's {ours}; train the anchor heads with the same heads_* settings")


def load_rows(args):
    """The control rows of ``args.dataset_path``, with the columns training needs."""
    if args.dataset_path is None:
        raise ValueError("give a train_dataset or set dataset_path (--dataset_path) to a control-data folder or JSONL file")
    path = Path(args.dataset_path)
    if not path.exists():
        raise FileNotFoundError(
            f"--dataset_path {path}: no such folder or file; build control data with python -m steerdeco.build_control_data"
        )
    try:
        return load_control_data(path, required=TRAINING_COLUMNS)
    except ControlDataError as error:
        raise ControlDataError(f"--dataset_path {path}: {error}") from None


def preflight(args, need_data: bool = True) -> Plan:
    """Every check of :mod:`this module <steerdeco.training.preflight>`; returns what it loaded."""
    checkpoint = resolve_resume(args, args.resume_from_checkpoint)
    check_output_dir(args, resuming=checkpoint is not None)
    check_init_heads_file(args)
    check_anchor_heads_file(args)
    return Plan(rows=load_rows(args) if need_data else None, resume_checkpoint=checkpoint)
