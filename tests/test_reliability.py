"""Bad input is refused up front with one line naming it; nothing a tool did not write is replaced (tiny models only)."""

import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from analysis.cli import main as analysis_main
from steerdeco import AutoDecoModel
from steerdeco.config import HEADS_CONFIG_NAME, HEADS_WEIGHTS_NAME, HeadsConfig
from steerdeco.control import BuildConfig, ControlDataError, build_control_data, load_commands
from steerdeco.errors import AnalysisError
from steerdeco.io import OUTPUT_MARKER, atomic_write_text
from steerdeco.options import read_yaml_options
from steerdeco.testing import tiny_model, tiny_model_and_tokenizer
from steerdeco.train import cli
from steerdeco.training import SteeringConfig, SteeringTrainer, load_trained_model
from steerdeco.training import model as model_module
from steerdeco.training import trainer as trainer_module
from steerdeco.training.synthetic import synthetic_control_records

REPO = Path(__file__).resolve().parents[1]
FAST_TRAIN = dict(model_name_or_path="tiny", max_steps=2, logit_top_k=32, logit_bins=8, per_device_train_batch_size=2,
                  save_strategy="no", disable_tqdm=True, final_ordering_report=False, seed=0, heads_mlp_width=192,
                  heads_context_features=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "control.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_control_records(6, 2)))
    return path


def config(tmp_path, data, **overrides) -> SteeringConfig:
    values = dict(FAST_TRAIN, output_dir=str(tmp_path / "out"), dataset_path=str(data))
    values.update(overrides)
    return SteeringConfig(**values)


def train_cli(tmp_path, data, *extra) -> list[str]:
    return ["--model_name_or_path", "tiny", "--dataset_path", str(data), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "2", "--logit_top_k", "32", "--logit_bins", "8", "--per_device_train_batch_size", "2",
            "--disable_tqdm", "true", "--final_ordering_report", "false", *extra]


def refused(capsys, argv) -> str:
    """Run the training CLI, expect exit status 2, return its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m steerdeco.train: error: ")
    return err[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: the error must come before it."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(model_module, "load_base_model", fail)


# -- 3. bad training settings fail before anything is loaded -------------------------------------
@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be an integer >= 1, got 0"),
        (["--per_device_eval_batch_size", "0"], "per_device_eval_batch_size must be an integer >= 1, got 0"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be an integer >= 1, got 0"),
        (["--learning_rate", "-0.01"], r"learning_rate must be a finite number > 0, got -0.01"),
        (["--max_steps", "-1", "--num_train_epochs", "0"], "num_train_epochs must be > 0 when max_steps is not set"),
        (["--output_dir", ""], "output_dir is empty"),
        (["--resume_from_checkpoint", "last"], "--resume_from_checkpoint last: .* holds no complete checkpoint-N"),
        (["--resume_from_checkpoint", "nowhere"], "--resume_from_checkpoint nowhere: no such folder"),
    ],
)
def test_bad_training_settings_are_one_line_errors_before_the_model_loads(tmp_path, data, capsys, no_model_load,
                                                                            flags, match):
    message = refused(capsys, train_cli(tmp_path, data, *flags))
    assert re.search(match, message), message


def test_a_prompt_longer_than_the_context_is_refused_or_truncated_or_skipped(tmp_path, caplog):
    records = synthetic_control_records(6, 2)
    long_group = records[0]["group_id"]
    for record in records:
        if record["group_id"] == long_group:
            record["messages"][-1]["content"] += " word" * 600  # the tiny model has 512 positions
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=rf"control data {path}: group '{long_group}' .* but the model's context is 512 "
                                         r"positions; set overlong_rows"):
        SteeringTrainer(args=config(tmp_path, path))
    with pytest.raises(ValueError, match=r"overlong_rows must be one of \['error', 'truncate', 'skip'\]"):
        config(tmp_path, path, overlong_rows="cut")
    with caplog.at_level("WARNING"):
        skipping = SteeringTrainer(args=config(tmp_path, path, overlong_rows="skip"))
    assert long_group not in {g["group_id"] for g in skipping.train_dataset}
    assert "overlong_rows=skip: 0 groups cut to the model's context of 512 positions, 1 groups skipped" in caplog.text
    caplog.clear()
    # a prompt that fits, with a response that does not: truncate cuts the shared response
    for record in records:
        if record["group_id"] == long_group:
            record["messages"][-1]["content"] = "Tell me a story." + " word" * 60
            record["response"] = "and then " * 200
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level("WARNING"):
        cutting = SteeringTrainer(args=config(tmp_path, path, overlong_rows="truncate", max_response_tokens=None))
    group = next(g for g in cutting.train_dataset if g["group_id"] == long_group)
    assert max(len(ids) for ids in group["input_ids"]) == 512
    assert "1 groups cut to the model's context of 512 positions, 0 groups skipped" in caplog.text


# -- 1. output folders and resuming ----------------------------------------------------------------
def test_training_into_a_used_folder_needs_resume_or_overwrite_and_resume_checks_the_config(tmp_path, data, capsys):
    first = train_cli(tmp_path, data, "--save_strategy", "steps", "--save_steps", "1")
    cli(first)
    out = tmp_path / "out"
    assert (out / "checkpoint-2").is_dir() and json.loads((out / OUTPUT_MARKER).read_text())["tool"] == "steerdeco.train"
    message = refused(capsys, first)
    assert "exists and is not empty; pass --overwrite_output_dir" in message and "--resume_from_checkpoint last" in message
    message = refused(capsys, [*first, "--learning_rate", "0.5", "--seed", "7", "--resume_from_checkpoint", "last"])
    assert "checkpoint-2 was trained with other settings" in message
    assert "learning_rate: 0.001 -> 0.5" in message and "seed: 42 -> 7" in message
    # --overwrite_output_dir removes the earlier run's checkpoints, so a later 'last' cannot pick them
    cli([*first[:-4], "--save_strategy", "no", "--overwrite_output_dir", "true"])
    assert not (out / "checkpoint-2").exists() and (out / HEADS_WEIGHTS_NAME).is_file()


def test_overwrite_output_dir_never_replaces_a_folder_of_something_else(tmp_path, data, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("years of work")
    message = refused(capsys, train_cli(tmp_path, data, "--overwrite_output_dir", "true"))
    assert "has no .steerdeco-output marker, not by steerdeco.train" in message
    assert (tmp_path / "out" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("tool", ["build", "analysis"])
def test_overwrite_never_deletes_a_folder_the_tool_did_not_write(tmp_path, tool):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    if tool == "build":
        with pytest.raises(ControlDataError, match="has no .steerdeco-output marker, not by steerdeco.build_control_data"):
            build_control_data(BuildConfig(out=str(foreign), overwrite=True, progress=False))
    else:
        with pytest.raises(AnalysisError, match="has no .steerdeco-output marker, not by analysis"):
            analysis_main(["--heads", str(tmp_path), "--data", str(tmp_path), "--out", str(foreign), "--overwrite"])
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_the_projects_command_library_folder_is_never_overwritten(tmp_path):
    with pytest.raises(ControlDataError, match="not by steerdeco.build_control_data"):
        build_control_data(BuildConfig(out=str(REPO / "control_data"), overwrite=True, progress=False))
    assert (REPO / "control_data" / "commands.yaml").is_file()


# -- 4. checkpoints are written atomically; 'last' is the last complete one ------------------------
def test_a_kill_while_saving_leaves_no_checkpoint_folder_and_resume_takes_the_last_complete_one(tmp_path, data,
                                                                                                 monkeypatch):
    args = dict(save_strategy="steps", save_steps=1, max_steps=2)
    real = trainer_module.save_state

    def killed_at_step_2(directory, name, obj):
        if Path(directory).name == ".checkpoint-2.partial" and name == "scheduler":
            raise KeyboardInterrupt
        return real(directory, name, obj)

    monkeypatch.setattr(trainer_module, "save_state", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        SteeringTrainer(args=config(tmp_path, data, **args)).train()
    monkeypatch.setattr(trainer_module, "save_state", real)
    out = tmp_path / "out"
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    (out / "checkpoint-3").mkdir()  # what an older version left behind: a folder with a temp file only
    (out / "checkpoint-3" / ".heads.safetensors.x.tmp").write_bytes(b"")
    resumed = SteeringTrainer(args=config(tmp_path, data, resume_from_checkpoint="last", **args))
    assert resumed.resume_checkpoint == out / "checkpoint-1"
    resumed.train()
    assert resumed.state.global_step == 2 and (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / ".checkpoint-2.partial").exists()


# -- 5. heads go through one validating loader -----------------------------------------------------
def heads_folder(tmp_path, base, **config) -> Path:
    folder = tmp_path / "heads"
    AutoDecoModel(base, HeadsConfig(hidden_size=64, **config)).save_pretrained(folder)
    return folder


def test_init_heads_with_other_settings_are_refused(tmp_path, data, no_model_load):
    folder = heads_folder(tmp_path, tiny_model(), max_temperature=1.0, mlp_width=192, context_features=True)
    with pytest.raises(ValueError, match=rf"init_heads {folder} were saved with other heads settings than this run's "
                                         r"\(heads_max_temperature=2.0\); set heads_max_temperature: 1.0"):
        SteeringTrainer(args=config(tmp_path, data, init_heads=str(folder)))


def test_init_heads_are_loaded_with_their_saved_config(tmp_path, data):
    folder = heads_folder(tmp_path, tiny_model(), max_temperature=1.0, mlp_width=192, context_features=True)
    trainer = SteeringTrainer(args=config(tmp_path, data, init_heads=str(folder), heads_max_temperature=1.0))
    saved = AutoDecoModel.from_pretrained(folder, tiny_model())
    for name, tensor in saved.heads.state_dict().items():
        torch.testing.assert_close(trainer.autodeco_model.heads.state_dict()[name].cpu(), tensor)


def test_heads_are_refused_on_another_base_model_of_the_same_hidden_size(tmp_path):
    folder = heads_folder(tmp_path, tiny_model())
    deeper = tiny_model(num_hidden_layers=3)
    for load in (AutoDecoModel.from_pretrained, load_trained_model):
        with pytest.raises(ValueError, match="were trained on a base model with another architecture"):
            load(folder, deeper)


def test_analysis_refuses_heads_of_another_base_model_of_the_same_hidden_size(tmp_path):
    folder = heads_folder(tmp_path, tiny_model())
    model, tokenizer = tiny_model_and_tokenizer(num_hidden_layers=3)
    model.save_pretrained(tmp_path / "deeper")
    tokenizer.save_pretrained(tmp_path / "deeper")
    with pytest.raises(AnalysisError, match=rf"--heads {folder} .*another architecture.*--model"):
        analysis_main(["--heads", str(folder), "--model", str(tmp_path / "deeper"), "--prompts", "builtin",
                       "--out", str(tmp_path / "results"), "--no-progress"])
    assert not (tmp_path / "results").exists() and not list(tmp_path.glob(".results.work*"))


def test_resume_without_optimizer_state_is_refused(tmp_path, data):
    args = dict(save_strategy="steps", save_steps=2)
    SteeringTrainer(args=config(tmp_path, data, **args)).train()
    for suffix in (".json", ".safetensors"):
        (tmp_path / "out" / "checkpoint-2" / f"optimizer{suffix}").unlink()
    with pytest.raises(ValueError, match="checkpoint-2: no optimizer state"):
        SteeringTrainer(args=config(tmp_path, data, resume_from_checkpoint="last", **args))


# -- 5. duplicate keys ------------------------------------------------------------------------------
def test_duplicate_keys_are_errors_naming_the_key_and_line(tmp_path, data, capsys):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model_name_or_path: tiny\nlearning_rate: 0.01\nseed: 1\nlearning_rate: 0.5\n")
    message = refused(capsys, ["--config", str(yaml_file), "--output_dir", str(tmp_path / "out")])
    assert f"--config {yaml_file}:4: not valid YAML (duplicate key 'learning_rate' (first given on line 2))" in message
    with pytest.raises(ValueError, match=r":4: not valid YAML \(duplicate key 'learning_rate'"):
        read_yaml_options(yaml_file, ["model_name_or_path", "learning_rate", "seed"])
    library = tmp_path / "commands.json"
    text = (REPO / "control_data" / "commands.yaml").read_text()
    import yaml

    commands = yaml.safe_load(text)
    lines = json.dumps(commands, indent=1).splitlines()
    index = [i for i, line in enumerate(lines) if '"text":' in line][3]  # the fourth command's text
    lines.insert(index, '  "text": "Be extremely wild and random.",')
    library.write_text("\n".join(lines))
    with pytest.raises(ControlDataError, match=rf"{library}:{index + 2}: duplicate key 'text'"):
        load_commands(library)
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "prompt": "x", "prompt": "y"}\n')
    with pytest.raises(ControlDataError, match=r"prompts.jsonl:1: duplicate key 'prompt'"):
        build_control_data(BuildConfig(prompts=[str(tmp_path / "prompts.jsonl")], out=str(tmp_path / "o"), progress=False))


# -- 6. unreadable inputs name the file ------------------------------------------------------------
def test_unreadable_config_files_name_the_file(tmp_path, capsys):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("model_name_or_path: caf\xe9\n".encode("latin-1"))
    assert f"--config {tmp_path} is a folder, not a file" in refused(capsys, ["--config", str(tmp_path)])
    assert f"--config {latin} is not UTF-8 text" in refused(capsys, ["--config", str(latin)])
    with pytest.raises(ControlDataError, match=f"--config {tmp_path} is a folder"):
        from steerdeco.build_control_data import main as build_main

        build_main(["--config", str(tmp_path)])
    with pytest.raises(AnalysisError, match=f"--config {latin} is not UTF-8 text"):
        analysis_main(["--config", str(latin)])


def test_unreadable_prompts_name_the_file_and_line(tmp_path):
    def build(prompts):
        return build_control_data(BuildConfig(prompts=[str(prompts)], out=str(tmp_path / "o"), progress=False))

    with pytest.raises(ControlDataError, match=f"prompt file {tmp_path} is a folder"):
        build(tmp_path)
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "broken \\ud800 text"}\n')
    with pytest.raises(ControlDataError, match=r"surrogate.jsonl:2: a string holds a lone surrogate"):
        build(surrogate)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["init_heads", "checkpoint", "adapter"])
def test_truncated_safetensors_files_are_named(tmp_path, data, what):
    if what == "init_heads":
        folder = heads_folder(tmp_path, tiny_model(), mlp_width=192, context_features=True)
        weights = folder / HEADS_WEIGHTS_NAME
        weights.write_bytes(weights.read_bytes()[:-100])
        with pytest.raises(ValueError, match=f"init_heads {folder}: {weights} is not a readable safetensors file"):
            SteeringTrainer(args=config(tmp_path, data, init_heads=str(folder)))
        return
    mode = "lora_joint" if what == "adapter" else "head_only"
    args = dict(save_strategy="steps", save_steps=2, training_mode=mode)
    trainer = SteeringTrainer(args=config(tmp_path, data, **args))
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    if what == "adapter":
        trainer.save_model(str(tmp_path / "final"))
        adapter = tmp_path / "final" / "adapter" / "adapter_model.safetensors"
        adapter.write_bytes(adapter.read_bytes()[:-50])
        base, _ = tiny_model_and_tokenizer()
        with pytest.raises(ValueError, match=f"LoRA adapter {adapter} is not a readable safetensors file"):
            load_trained_model(tmp_path / "final", base)
        return
    state = checkpoint / "optimizer.safetensors"
    state.write_bytes(state.read_bytes()[:-50])
    resumed = SteeringTrainer(args=config(tmp_path, data, resume_from_checkpoint="last", **args))
    with pytest.raises(ValueError, match=f"checkpoint file {state} is not a readable safetensors file"):
        resumed.train()


# -- 7. smaller ones -------------------------------------------------------------------------------
def test_everything_the_tools_write_is_readable_by_others(tmp_path, data):
    old = os.umask(0o022)
    try:
        trainer = SteeringTrainer(args=config(tmp_path, data, save_strategy="steps", save_steps=2))
        trainer.train()
        trainer.save_model()
        atomic_write_text(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] + [tmp_path / "plain.txt"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert {"heads.safetensors", "steering_config.json", "optimizer.safetensors"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


def test_an_interrupted_analysis_is_resumed_from_its_work_folder(tmp_path, monkeypatch):
    import analysis.api as analysis_api

    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    heads_folder(tmp_path, tiny_model())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Tell me about {w}.", "completion": "It is fine."})
                               + "\n" for i, w in enumerate(["tea", "owls", "maps", "salt"])))
    argv = ["--heads", str(tmp_path / "heads"), "--model", str(tmp_path / "model"), "--prompts", str(prompts),
            "--responses", "given", "--eval-fraction", "0.5", "--protocols", "teacher_forced", "--n-boot", "20",
            "--no-figures", "--no-progress", "--log-level", "ERROR", "--out", str(tmp_path / "results")]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis_api, "score_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        analysis_main(argv)
    assert not list(tmp_path.glob(".results.work-*")) and not (tmp_path / "results").exists()
    monkeypatch.undo()
    analysis_main(argv)
    assert (tmp_path / "results" / "report.md").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_train_help_names_the_command_the_config_flag_and_last(capsys):
    with pytest.raises(SystemExit):
        cli(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m steerdeco.train")
    assert "--config FILE" in text and "--resume_from_checkpoint last" in text and "'last'" in text


def test_heads_config_json_with_a_duplicate_key_is_refused(tmp_path):
    folder = heads_folder(tmp_path, tiny_model())
    text = (folder / HEADS_CONFIG_NAME).read_text().replace('"mlp_width": 256,', '"mlp_width": 256,\n  "mlp_width": 8,')
    (folder / HEADS_CONFIG_NAME).write_text(text)
    with pytest.raises(ValueError, match=r"heads_config.json:\d+: duplicate key 'mlp_width'"):
        AutoDecoModel.from_pretrained(folder, tiny_model())
