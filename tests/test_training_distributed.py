"""Two-process CPU training (DDP over gloo) through ``accelerate launch``, on the tiny model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from steerdeco.training.synthetic import synthetic_control_records

ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.skipif(not ACCELERATE.exists() and shutil.which("accelerate") is None, reason="accelerate is not installed")
def test_two_process_cpu_run_finishes_and_saves_heads(tmp_path):
    data = tmp_path / "control.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_control_records(6, 2)))
    out = tmp_path / "out"
    command = [
        # --multi_gpu selects accelerate's DDP launcher; without an accelerator SteeringConfig sets
        # use_cpu, so the two processes talk over gloo
        str(ACCELERATE) if ACCELERATE.exists() else shutil.which("accelerate"),
        "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "steerdeco.train",
        "--model_name_or_path", "tiny", "--dataset_path", str(data), "--output_dir", str(out),
        "--max_steps", "4", "--per_device_train_batch_size", "1", "--logit_top_k", "32", "--logit_bins", "8",
        "--save_steps", "2", "--disable_tqdm", "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "heads.safetensors").is_file() and (out / "heads_config.json").is_file()
    # each process saw its own half of the 4 training groups: 4 steps of 1 group each are 2 epochs
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["train"]["epoch"] == pytest.approx(2.0)
    checkpoint = out / "checkpoint-4"
    assert (checkpoint / "rng_state_0.json").is_file() and (checkpoint / "rng_state_1.json").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pth")) and not list(out.rglob("*.bin"))
