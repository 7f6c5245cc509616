"""Multi-process training on the tiny model: DDP over gloo through ``accelerate launch`` on CPU; FSDP2
sharding with gloo on CPU (torch's ``fully_shard``, saving and reloading); FSDP2 through ``accelerate
launch`` where there are GPUs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steerdeco.training import SteeringConfig
from steerdeco.training.synthetic import synthetic_control_records

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

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
    # no GPU in sight, so that this is the CPU (gloo) run on a GPU machine too
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "heads.safetensors").is_file() and (out / "heads_config.json").is_file()
    # each process saw its own half of the 4 training groups: 4 steps of 1 group each are 2 epochs
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["train"]["epoch"] == pytest.approx(2.0)
    checkpoint = out / "checkpoint-4"
    assert (checkpoint / "rng_state_0.json").is_file() and (checkpoint / "rng_state_1.json").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pth")) and not list(out.rglob("*.bin"))


# -- FSDP2 ----------------------------------------------------------------------------------------
FSDP_WORKER = """# two-process FSDP2 run of a tiny AutoDecoModel (run with torchrun)
import json, sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from steerdeco.training import SteeringConfig, build_model, load_base_model, load_trained_model
from steerdeco.training.checkpoint import full_state_dict, is_sharded, save_trained

mode, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
args = SteeringConfig(output_dir=out, model_name_or_path="tiny", training_mode=mode, seed=0, heads_mlp_width=32,
                      heads_context_features=True, report_to="none")
model, tokenizer = build_model(args)
for layer in model.base_model.get_base_model().model.layers if mode == "lora_joint" else model.base_model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
assert is_sharded(model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
batch = tokenizer.apply_chat_template(
    [[{"role": "user", "content": f"question {rank} about the sea"}], [{"role": "user", "content": "hi"}]],
    add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True)
for _ in range(3):
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
probe = tokenizer.apply_chat_template([[{"role": "user", "content": "Write a poem."}]], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
with torch.no_grad():
    sharded = model(**probe)
state = full_state_dict(model)
if rank == 0:
    save_trained(model, out, state_dict=state)
    base, _ = load_base_model("tiny")
    reloaded = load_trained_model(out, base).eval()
    with torch.no_grad():
        plain = reloaded(**probe)
    result = {name: float((getattr(sharded, name) - getattr(plain, name)).abs().max())
              for name in ("logits", "temperature", "top_p")}
    untrained = build_model(args)[0]
    with torch.no_grad():
        fresh = untrained(**probe)
    result["moved_temperature"] = float((fresh.temperature - plain.temperature).abs().max())
    result["moved_logits"] = float((fresh.logits - plain.logits).abs().max())
    json.dump(result, open(f"{out}/fsdp_result.json", "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this Python")
@pytest.mark.parametrize("mode", ["lora_joint"])  # head-only under FSDP is refused by SteeringConfig
def test_heads_and_adapter_saved_from_fsdp2_shards_reload_into_an_unsharded_model_with_identical_outputs(tmp_path, mode):
    # accelerate enables FSDP only with GPUs, so on CPU the sharding is torch's fully_shard over gloo directly; the
    # saving path (full_state_dict -> save_trained) is the one SteeringTrainer takes under FSDP
    worker = tmp_path / "worker.py"
    worker.write_text(FSDP_WORKER)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(worker), mode, str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = json.loads((out / "fsdp_result.json").read_text())
    assert outputs["logits"] == outputs["temperature"] == outputs["top_p"] == 0.0
    assert outputs["moved_temperature"] > 1e-3  # the heads trained, sharded
    assert (outputs["moved_logits"] > 1e-3) == (mode == "lora_joint")  # only LoRA changes the backbone
    assert (out / "heads.safetensors").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file() == (mode == "lora_joint")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate runs FSDP only on GPUs; this machine has none")
@pytest.mark.skipif(not ACCELERATE.exists() and shutil.which("accelerate") is None, reason="accelerate is not installed")
def test_lora_joint_training_under_accelerate_fsdp2_saves_heads_and_adapter(tmp_path):
    data = tmp_path / "control.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_control_records(6, 2)))
    out = tmp_path / "out"
    processes = str(max(1, min(2, torch.cuda.device_count())))
    command = [
        str(ACCELERATE) if ACCELERATE.exists() else shutil.which("accelerate"),
        "launch", "--config_file", str(REPO / "configs" / "accelerate_fsdp2.yaml"), "--num_processes", processes,
        "--mixed_precision", "no", "-m", "steerdeco.train",
        "--model_name_or_path", "tiny", "--training_mode", "lora_joint", "--dataset_path", str(data),
        "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "1", "--logit_top_k", "32",
        "--logit_bins", "8", "--save_steps", "2", "--disable_tqdm", "true",
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "heads.safetensors").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-4" / "optimizer.safetensors").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))


def test_fsdp_settings_are_checked_with_a_fix_in_the_message(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="DeepSpeed is not supported"):
        SteeringConfig(output_dir=str(tmp_path), deepspeed="ds.json")
    lora = dict(training_mode="lora_joint")
    with pytest.raises(ValueError, match="fsdp_config version 1 is not supported"):
        SteeringConfig(output_dir=str(tmp_path), fsdp="full_shard", fsdp_config={"version": 1}, **lora)
    with pytest.raises(ValueError, match="FSDP is for training_mode lora_joint.*train with DDP"):
        SteeringConfig(output_dir=str(tmp_path), training_mode="head_only", fsdp="full_shard")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="FSDP needs GPUs"):
            SteeringConfig(output_dir=str(tmp_path), fsdp="full_shard", fsdp_config={"version": 2}, **lora)
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        with pytest.raises(ValueError, match="FSDP needs GPUs"):
            SteeringConfig(output_dir=str(tmp_path), **lora)
