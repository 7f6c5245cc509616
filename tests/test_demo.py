"""The demo's argument checks and run folders (the full pipeline runs in the README's main command)."""

import argparse

import pytest

from steerdeco import demo


def parse(*argv):
    return demo.make_parser().parse_args(list(argv))


def test_defaults_point_at_the_shipped_config():
    args = parse()
    assert args.config.endswith("configs/demo.yaml")
    assert demo._check_args(args) == [0, 1, 2]
    assert args.free_running_groups == 30 and args.prompt_only_temperature == 1.0
    assert args.free_running_variants == "none,low3,high3,placebo,zero"
    assert args.train_commands_per_level == 2 and args.named_per_group == 2


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (("--max-prompts", "0"), "--max-prompts must be >= 1"),
        (("--seeds", "a,b"), "--seeds must be comma-separated integers"),
        (("--free-running-groups", "-1"), "--free-running-groups must be >= 0"),
        (("--config", "missing.yaml"), "--config missing.yaml: no such file"),
        (("--free-running-variants", "low9x"), "--free-running-variants: unknown variant selector 'low9x'"),
        (("--prompt-only-temperature", "-1"), "--prompt-only-temperature must be >= 0"),
        (("--train-commands-per-level", "0"), "--train-commands-per-level must be >= 1"),
    ],
)
def test_bad_arguments_name_the_flag(argv, match):
    with pytest.raises(SystemExit, match=match):
        demo._check_args(parse(*argv))


def test_an_existing_run_folder_is_never_overwritten_silently(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "keep.txt").write_text("results of an earlier run")
    with pytest.raises(SystemExit, match="pass --overwrite"):
        demo.run_folder(str(folder), overwrite=False)
    with pytest.raises(SystemExit, match="has no .steerdeco-output marker, not by steerdeco.demo"):
        demo.run_folder(str(folder), overwrite=True)  # not a demo run's folder: never replaced
    assert (folder / "keep.txt").is_file()


def test_overwrite_keeps_the_earlier_demo_run_aside_until_the_new_one_finishes(tmp_path):
    folder = demo.run_folder(str(tmp_path / "run"), overwrite=False)
    (folder / "report.md").write_text("earlier run")
    assert demo.run_folder(str(folder), overwrite=True) == folder
    assert not (folder / "report.md").exists()
    assert (demo.previous_run(folder) / "report.md").read_text() == "earlier run"


def test_training_config_reads_the_demo_yaml_with_this_runs_paths(tmp_path):
    args = argparse.Namespace(config=demo.DEFAULT_CONFIG, cache_dir=str(tmp_path / "cache"), seed=3, progress=False)
    config = demo.training_config(args, tmp_path / "data", tmp_path / "run")
    assert config.dataset_path == str(tmp_path / "data")
    assert config.output_dir == str(tmp_path / "run" / "train")
    assert config.cache_dir == str(tmp_path / "cache" / "backbone")
    assert config.seed == 3 and config.final_ordering_report is False and config.disable_tqdm is True
    assert config.model_name_or_path == "embedded" and config.training_mode == "head_only"


def test_timing_table_lists_every_stage_with_its_share_and_the_total():
    table = demo.timing_table({"control data": 30.0, "training": 10.0})
    lines = table.splitlines()
    assert lines[2] == "| control data | 30.0 | 75% |" and lines[3] == "| training | 10.0 | 25% |"
    assert lines[-1] == "| **total** | **40.0** | |"


def test_reference_heads_train_the_same_config_with_every_steering_term_off(tmp_path):
    from steerdeco.training.objective import STEERING_WEIGHT_FIELDS

    args = argparse.Namespace(config=demo.DEFAULT_CONFIG, cache_dir=str(tmp_path / "cache"), seed=0, progress=False)
    steered = demo.training_config(args, tmp_path / "data", tmp_path / "run")
    reference = demo.training_config(args, tmp_path / "data", tmp_path / "run", reference=True)
    assert reference.output_dir == str(tmp_path / "run" / "reference") and reference.cache_dir == steered.cache_dir
    assert all(getattr(reference, name) == 0 for name in STEERING_WEIGHT_FIELDS)
    assert any(getattr(steered, name) > 0 for name in STEERING_WEIGHT_FIELDS)
    assert reference.temperature_loss_weight == steered.temperature_loss_weight > 0
    assert reference.heads_context_layer == steered.heads_context_layer  # same heads, same backbone cache
    assert not reference.heads_named_values  # AutoDeco alone: no path that reads named values
    assert reference.heads_steering_levels == 0 and steered.heads_steering_levels > 0  # ... nor levels
    assert not reference.heads_negation_scope and steered.heads_negation_scope  # ... nor negations to turn levels
    anchored = demo.training_config(args, tmp_path / "data", tmp_path / "run", anchor=tmp_path / "run" / "reference")
    assert anchored.anchor_heads == str(tmp_path / "run" / "reference") and steered.anchor_heads is None
    assert anchored.output_dir == steered.output_dir and anchored.anchor_weight > 0
