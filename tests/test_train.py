"""steerdeco.train: the command line (YAML --config under flags) and the shipped configs."""

import json

import pytest
from training_setup import REPO

from steerdeco import AutoDecoModel
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.train import cli, make_parser
from steerdeco.training import SteeringConfig
from steerdeco.training.synthetic import synthetic_control_records


@pytest.mark.parametrize("name", ["head_only", "lora_joint", "demo"])
def test_shipped_configs_parse(tmp_path, name):
    (args,) = make_parser().parse_args_and_config(
        args=["--config", str(REPO / "configs" / f"{name}.yaml"), "--output_dir", str(tmp_path), "--seed", "3"]
    )
    assert isinstance(args, SteeringConfig)
    assert args.output_dir == str(tmp_path) and args.seed == 3  # flags override the file
    assert args.training_mode == ("lora_joint" if name == "lora_joint" else "head_only")


def test_cli_trains_saves_and_reports(tmp_path):
    data = tmp_path / "control.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_control_records(6, 2)))
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "model_name_or_path: tiny\nmax_steps: 2\nlogit_top_k: 32\nlogit_bins: 8\nsave_strategy: 'no'\n"
        "per_device_train_batch_size: 2\nlearning_rate: 0.5\n"
    )
    out = tmp_path / "out"
    metrics = cli(["--config", str(yaml_file), "--dataset_path", str(data), "--output_dir", str(out),
                   "--learning_rate", "0.01", "--disable_tqdm", "true"])
    saved = json.loads((out / "steering_config.json").read_text())
    assert saved["learning_rate"] == 0.01 and saved["max_steps"] == 2  # the flag beat the file
    assert metrics["train"]["train_loss"] > 0 and "eval_loss" in metrics["eval"]
    assert set(metrics["ordering"]) == {"train", "heldout"}
    report = json.loads((out / "ordering_report.json").read_text())
    assert {r["split"] for r in report["rows"]} == {"eval"}
    base, _ = tiny_model_and_tokenizer()
    AutoDecoModel.from_pretrained(out, base)  # the final folder holds loadable heads
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
