"""SteeringTrainer, its config, collation, backbone cache, checkpoints and ordering metrics (tiny model only)."""

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from steerdeco import AutoDecoModel
from steerdeco.heads import MIN_TEMPERATURE, running_context
from steerdeco.ranking import pairwise_ranking_loss
from steerdeco.rows import VARIANTS, select_split
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.train import cli, make_parser
from steerdeco.training import (
    SteeringConfig,
    SteeringTrainer,
    build_model,
    evaluate_ordering,
    load_or_build_cache,
    load_trained_model,
    summarize_ordering,
)
from steerdeco.training.cache import CACHE_FILE, backbone_outputs, read_cache_metadata
from steerdeco.training.checkpoint import flatten_state, load_state, save_state, unflatten_state
from steerdeco.training.collator import SteeringCollator, command_split_names, encode_groups
from steerdeco.training.synthetic import COMMANDS, synthetic_control_records, synthetic_control_rows
from steerdeco.training.trainer import MODEL_INPUTS

REPO = Path(__file__).resolve().parents[1]
VARIANTS_PER_GROUP = 1 + len(COMMANDS)


@pytest.fixture(scope="module")
def rows():
    return synthetic_control_rows(num_prompts=6, num_eval_prompts=2)


@pytest.fixture(scope="module")
def train_rows(rows):
    return select_split(rows, "train")


@pytest.fixture(scope="module")
def eval_rows(rows):
    return select_split(rows, "eval")


def config(tmp_path, **overrides) -> SteeringConfig:
    """A fast tiny-model configuration; the backbone cache lives in tmp_path/cache."""
    values = dict(
        output_dir=str(tmp_path / "out"),
        model_name_or_path="tiny",
        max_steps=6,
        logit_top_k=32,
        logit_bins=8,
        learning_rate=3e-3,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
        cache_dir=str(tmp_path / "cache"),
        seed=0,
    )
    values.update(overrides)
    return SteeringConfig(**values)


def heads_state(model: AutoDecoModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.heads.state_dict().items()}


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"training_mode": "full"}, "training_mode must be one of"),
        ({"train_heads": "neither"}, "train_heads must be one of"),
        ({"ranking_reduction": "mean"}, "ranking_reduction must be one of"),
        ({"ranking_space": "exp"}, "ranking_space must be one of"),
        ({"temperature_margin": -0.1}, "temperature_margin must be a finite number >= 0"),
        ({"placebo_weight": float("nan")}, "placebo_weight must be a finite number >= 0"),
        ({"easy_token_fraction": 1.5}, "easy_token_fraction"),
        ({"training_mode": "lora_joint", "backbone_cache": True}, "backbone_cache=True needs training_mode='head_only'"),
        ({"logit_top_k": 3}, "logit_top_k must be 0"),
        ({"logit_top_k": 0}, "the backbone cache stores compressed logits"),
        ({"max_response_tokens": 0}, "max_response_tokens must be >= 1"),
        ({"train_split": "eval"}, "train_split and eval_split must differ"),
        ({"training_mode": "lora_joint", "lora_r": 0}, "lora_r must be >= 1"),
        ({"training_mode": "lora_joint", "lora_target_modules": []}, "lora_target_modules"),
        ({"push_to_hub": True}, "push_to_hub is not supported"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        SteeringConfig(output_dir=str(tmp_path), **overrides)


def test_config_defaults_suit_the_trainer(tmp_path):
    args = SteeringConfig(output_dir=str(tmp_path))
    assert args.use_backbone_cache and args.training_mode == "head_only"
    assert args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert not args.bf16 and not args.activation_checkpointing and not args.remove_unused_columns
    assert args.report_to in ([], "none", ["none"])
    assert not SteeringConfig(output_dir=str(tmp_path), training_mode="lora_joint").use_backbone_cache


@pytest.mark.parametrize("name", ["head_only", "lora_joint", "demo"])
def test_shipped_configs_parse(tmp_path, name):
    (args,) = make_parser().parse_args_and_config(
        args=["--config", str(REPO / "configs" / f"{name}.yaml"), "--output_dir", str(tmp_path), "--seed", "3"]
    )
    assert isinstance(args, SteeringConfig)
    assert args.output_dir == str(tmp_path) and args.seed == 3  # flags override the file
    assert args.training_mode == ("lora_joint" if name == "lora_joint" else "head_only")


# -- data and collation ---------------------------------------------------------------------------
def test_groups_keep_every_variant_and_share_the_response(train_rows):
    _, tokenizer = tiny_model_and_tokenizer()
    groups, examples = encode_groups(train_rows, tokenizer, max_response_tokens=12)
    assert len(groups) == 4 and len(examples) == len(train_rows)
    for group in groups:
        assert len(group["input_ids"]) == VARIANTS_PER_GROUP
        responses = {tuple(ids[start:]) for ids, start in zip(group["input_ids"], group["response_start"], strict=True)}
        assert len(responses) == 1 and len(next(iter(responses))) == group["response_length"] == 12
        assert sorted(v for v in group["signed_level"] if not math.isnan(v)) == [-3, -2, -1, -1, 0, 1, 1, 2]


def test_encode_groups_rejects_rows_without_a_shared_response(train_rows):
    _, tokenizer = tiny_model_and_tokenizer()
    records = [dict(r) for r in train_rows]
    records[1]["response"] = "something else entirely"
    with pytest.raises(ValueError, match="do not share one response"):
        encode_groups(records, tokenizer)
    records[1]["response"] = None
    with pytest.raises(ValueError, match="without a response"):
        encode_groups(records, tokenizer)
    with pytest.raises(ValueError, match="lacks the columns"):
        encode_groups(train_rows.remove_columns("variant"), tokenizer)


def test_collator_aligns_the_responses_of_a_group(train_rows):
    _, tokenizer = tiny_model_and_tokenizer()
    groups, _ = encode_groups(train_rows, tokenizer)
    collator = SteeringCollator(tokenizer.pad_token_id, command_split_names(groups))
    batch = collator(groups[:2])
    rows_per_group = torch.bincount(batch["groups"])
    assert rows_per_group.tolist() == [VARIANTS_PER_GROUP, VARIANTS_PER_GROUP]
    for g in range(2):
        rows = batch["groups"] == g
        # column j is response token j for every variant, and the predicting position precedes it
        targets, mask = batch["response_targets"][rows], batch["response_mask"][rows]
        assert (targets == targets[0]).all() and (mask == mask[0]).all()
        positions = batch["response_positions"][rows]
        for r in range(int(rows.sum())):
            n = int(mask[r].sum())
            ids = batch["input_ids"][rows][r]
            torch.testing.assert_close(ids[positions[r, :n] + 1], targets[r, :n])
    none_rows = batch["variant"] == VARIANTS.index("none")
    assert (batch["command_split"][none_rows] == -1).all()
    assert batch["signed_level"][batch["variant"] == VARIANTS.index("placebo")].isnan().all()


def test_trainer_batches_hold_whole_groups(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, backbone_cache=False), train_dataset=train_rows)
    seen = 0
    for batch in trainer.get_train_dataloader():
        counts = torch.bincount(batch["groups"])
        assert (counts == VARIANTS_PER_GROUP).all()
        seen += len(counts)
    assert seen == 4


# -- backbone cache -------------------------------------------------------------------------------
def test_cache_and_backbone_give_the_same_heads_inputs(tmp_path, train_rows):
    cached = SteeringTrainer(args=config(tmp_path), train_dataset=train_rows)
    direct = SteeringTrainer(args=config(tmp_path, backbone_cache=False), train_dataset=train_rows)
    assert cached.backbone_cache is not None and direct.backbone_cache is None
    direct.autodeco_model.heads.load_state_dict(cached.autodeco_model.heads.state_dict())
    for batch_cached, batch_direct in zip(cached.get_eval_dataloader(cached.train_dataset),
                                          direct.get_eval_dataloader(direct.train_dataset), strict=True):
        assert "hidden" in batch_cached and "input_ids" not in batch_cached
        with torch.no_grad():
            out_cached = cached.model(**{k: v for k, v in batch_cached.items() if k in ("response_mask", "hidden", "context", "slot_values", "slot_counts", "target_value", "target_slot")})
            out_direct = direct.model(**{k: v for k, v in batch_direct.items() if k in ("response_mask", "input_ids", "attention_mask", "response_positions", "response_targets")})
        torch.testing.assert_close(out_cached.temperature, out_direct.temperature)
        torch.testing.assert_close(out_cached.top_p, out_direct.top_p)
        torch.testing.assert_close(out_cached.slots.values, out_direct.slots.values)


def test_backbone_outputs_match_a_full_forward_at_the_response_positions(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, backbone_cache=False, logit_top_k=0), train_dataset=train_rows)
    batch = next(iter(trainer.get_train_dataloader()))
    base = trainer.autodeco_model.base_model
    hidden, context, slots, logits = backbone_outputs(
        base, *(batch[k] for k in ("input_ids", "attention_mask", "response_positions", "response_targets", "response_mask")),
        top_k=0, num_bins=1,
    )
    with torch.no_grad():
        full = trainer.autodeco_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    full_context, _ = running_context(full.hidden_states, batch["attention_mask"])
    mask = batch["response_mask"]
    rows = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask]
    positions = batch["response_positions"][mask]
    assert int(positions.min()) > 0  # the prompt positions really were left out of the logits
    torch.testing.assert_close(logits, full.logits[rows, positions], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hidden, full.hidden_states[rows, positions], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(context, full_context[rows, positions], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(slots.target_value, full.logits[rows, positions].gather(-1, batch["response_targets"][mask].unsqueeze(-1)).squeeze(-1), rtol=1e-4, atol=1e-5)


def test_stale_cache_is_rebuilt_and_a_fresh_one_reused(tmp_path, train_rows, caplog):
    model, tokenizer = tiny_model_and_tokenizer()
    _, examples = encode_groups(train_rows, tokenizer, max_response_tokens=8)
    build = dict(pad_token_id=tokenizer.pad_token_id, top_k=16, num_bins=4, progress=False)
    first = load_or_build_cache(tmp_path, model, examples, **build)
    fingerprint = read_cache_metadata(tmp_path / CACHE_FILE)["fingerprint"]
    with caplog.at_level(logging.INFO, logger="steerdeco.training.cache"):
        again = load_or_build_cache(tmp_path, model, examples, **build)
    assert "reusing" in caplog.text and again.fingerprint == first.fingerprint == fingerprint
    torch.testing.assert_close(again.hidden, first.hidden)

    caplog.clear()
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0  # another model (tied to the embeddings)
    with caplog.at_level(logging.INFO, logger="steerdeco.training.cache"):
        rebuilt = load_or_build_cache(tmp_path, model, examples, **build)
    assert "stale" in caplog.text and rebuilt.fingerprint != fingerprint
    assert read_cache_metadata(tmp_path / CACHE_FILE)["fingerprint"] == rebuilt.fingerprint
    other_data = load_or_build_cache(tmp_path, model, examples[:-1], **build)
    other_settings = load_or_build_cache(tmp_path, model, examples[:-1], **{**build, "top_k": 20})
    assert len({rebuilt.fingerprint, other_data.fingerprint, other_settings.fingerprint}) == 3
    assert len(other_data) == len(examples) - 1 and other_settings.slot_values.shape[1] == 24


# -- training -------------------------------------------------------------------------------------
def test_head_only_training_orders_the_commanded_temperature(tmp_path, train_rows):
    args = config(tmp_path, max_steps=60, learning_rate=1e-2, per_device_train_batch_size=3, logging_steps=10,
                  temperature_margin=0.2)
    rows = select_split(synthetic_control_rows(num_prompts=8, num_eval_prompts=2), "train")
    trainer = SteeringTrainer(args=args, train_dataset=rows)
    before = heads_state(trainer.autodeco_model)
    report_before = evaluate_ordering(trainer.autodeco_model, trainer.processing_class, rows)
    trainer.train()
    after = heads_state(trainer.autodeco_model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logs = [h for h in trainer.state.log_history if "ranking_temperature_loss" in h and "loss" in h]
    assert logs[-1]["ranking_temperature_loss"] < logs[0]["ranking_temperature_loss"]
    for key in ("autodeco_temperature_loss", "autodeco_top_p_loss", "placebo_temperature_loss",
                "absolute_temperature_loss", "mean_temperature/high", "mean_top_p/placebo", "ordered_temperature/train"):
        assert key in logs[-1]
    report = evaluate_ordering(trainer.autodeco_model, trainer.processing_class, rows)
    means = report["by_command_split"]["train"]["temperature"]
    assert means["low"] < means["none"] < means["high"]
    assert report["by_command_split"]["train"]["temperature_ordered"] > report_before["by_command_split"]["train"]["temperature_ordered"]


def test_level_ratio_and_named_value_terms_move_t_and_p_where_the_command_says(tmp_path):
    rows = select_split(synthetic_control_rows(num_prompts=8, num_eval_prompts=2), "train")
    args = config(tmp_path, max_steps=200, learning_rate=1e-2, per_device_train_batch_size=3, logging_steps=20,
                  temperature_ranking_weight=0.0, top_p_ranking_weight=0.0, placebo_weight=0.0,  # the new terms alone
                  temperature_ratio_weight=1.0, absolute_weight=1.0, top_p_absolute_weight=1.0, heads_max_temperature=8.0)
    trainer = SteeringTrainer(args=args, train_dataset=rows)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "ratio_temperature_loss" in h and "loss" in h]
    assert logs[-1]["ratio_temperature_loss"] < logs[0]["ratio_temperature_loss"]
    assert logs[-1]["absolute_top_p_loss"] < logs[0]["absolute_top_p_loss"]
    report = evaluate_ordering(trainer.autodeco_model, trainer.processing_class, rows)
    by_command = {}
    for record in report["rows"]:
        by_command.setdefault(record.get("command_id") or "none", []).append((record["temperature"], record["top_p"]))
    mean = {k: [sum(v[i] for v in values) / len(values) for i in (0, 1)] for k, values in by_command.items()}
    none_t = mean["none"][0]
    assert math.log(mean["low-2-a"][0] / none_t) < math.log(0.6)  # asked: x 0.4
    assert math.log(mean["high-2-a"][0] / none_t) > math.log(1.1)  # asked: x 1.6
    assert abs(mean["named-t"][0] - 1.6) < 0.3 and abs(mean["named-p"][1] - 0.3) < 0.15  # from T 4, P 0.9


@pytest.mark.parametrize("cache", [True, False])
def test_head_only_training_leaves_every_backbone_weight_bit_identical(tmp_path, train_rows, cache):
    trainer = SteeringTrainer(args=config(tmp_path, max_steps=4, backbone_cache=cache), train_dataset=train_rows)
    base = trainer.autodeco_model.base_model
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}
    heads_before = heads_state(trainer.autodeco_model)
    trainer.train()
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(heads_before[k], v) for k, v in heads_state(trainer.autodeco_model).items())


def test_context_heads_trained_from_the_cache_order_held_out_prompts(tmp_path):
    rows = synthetic_control_rows(num_prompts=12, num_eval_prompts=4)
    args = config(tmp_path, max_steps=60, learning_rate=1e-2, heads_context_features=True, heads_mlp_width=64)
    trainer = SteeringTrainer(args=args, train_dataset=select_split(rows, "train"))
    assert trainer.backbone_cache is not None and trainer.autodeco_model.heads_config.context_features
    trainer.train()
    # scored through the full model (running context from its own forward), on prompts never trained on
    report = evaluate_ordering(trainer.autodeco_model, trainer.processing_class, select_split(rows, "eval"))
    entry = report["by_command_split"]["train"]
    assert entry["units"] == 4 and entry["temperature_ordered"] >= 0.75
    assert entry["temperature"]["low"] < entry["temperature"]["none"] < entry["temperature"]["high"]


def test_heads_trained_from_a_half_precision_cache_order_held_out_prompts_as_well_as_from_fp32(tmp_path):
    rows = synthetic_control_rows(num_prompts=12, num_eval_prompts=4)
    reports, sizes = {}, {}
    for dtype in ("float32", "bfloat16", "float16"):
        args = config(tmp_path / dtype, max_steps=60, learning_rate=1e-2, heads_context_features=True,
                      heads_mlp_width=64, cache_hidden_dtype=dtype)
        trainer = SteeringTrainer(args=args, train_dataset=select_split(rows, "train"))
        assert trainer.backbone_cache.hidden.dtype == getattr(torch, dtype)
        sizes[dtype] = trainer.backbone_cache.bytes_per_position
        trainer.train()
        report = evaluate_ordering(trainer.autodeco_model, trainer.processing_class, select_split(rows, "eval"))
        reports[dtype] = report["by_command_split"]["train"]
    assert sizes["bfloat16"] == sizes["float16"] < sizes["float32"]
    for dtype in ("bfloat16", "float16"):
        assert reports[dtype]["temperature_ordered"] >= reports["float32"]["temperature_ordered"] >= 0.75
        means = reports[dtype]["temperature"]
        assert means["low"] < means["none"] < means["high"]


def test_heads_without_context_features_get_a_cache_without_context(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, heads_context_features=False), train_dataset=train_rows)
    assert trainer.backbone_cache.context is None
    batch = next(iter(trainer.get_train_dataloader()))
    assert "hidden" in batch and "context" not in batch


@pytest.mark.parametrize("space", ["linear", "log"])
def test_ranking_space_picks_what_the_margin_compares(tmp_path, train_rows, space):
    trainer = SteeringTrainer(args=config(tmp_path, ranking_space=space), train_dataset=train_rows)
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    outputs = trainer.model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs})
    terms = trainer.objective_terms(outputs, inputs)
    mask = inputs["response_mask"].bool()
    values = outputs.temperature.clamp_min(MIN_TEMPERATURE).log() if space == "log" else outputs.temperature
    expected = pairwise_ranking_loss(values, mask, inputs["groups"], inputs["signed_level"], margin=0.1)
    torch.testing.assert_close(terms["ranking_temperature_loss"], expected)


def test_log_space_leaves_room_below_a_small_calibrated_temperature():
    # none at T = 0.15 and three graded low levels: a 0.1 margin per level pair needs T < 0 in linear space
    levels = torch.tensor([-3.0, -2.0, -1.0, 0.0])
    groups = torch.zeros(4, dtype=torch.long)
    mask = torch.ones(4, 1, dtype=torch.bool)
    temperature = torch.tensor([[0.15 * math.exp(-0.1 * k)] for k in (3, 2, 1, 0)])
    log_loss = pairwise_ranking_loss(temperature.log(), mask, groups, levels, margin=0.09)
    linear_loss = pairwise_ranking_loss(temperature, mask, groups, levels, margin=0.09)
    assert float(log_loss) == 0.0 and float(linear_loss) > 0.0


def test_train_heads_freezes_the_other_head(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, train_heads="temperature"), train_dataset=train_rows)
    model = trainer.autodeco_model
    before = heads_state(model)
    trainer.train()
    after = heads_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("temperature_head") for k in changed)
    logged = set().union(*trainer.state.log_history)
    assert "ranking_temperature_loss" in logged and "ranking_top_p_loss" not in logged


def test_evaluation_logs_eval_metrics(tmp_path, train_rows, eval_rows):
    trainer = SteeringTrainer(args=config(tmp_path), train_dataset=train_rows, eval_dataset=eval_rows)
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_ranking_temperature_loss", "eval_mean_temperature/none",
                "eval_ordered_temperature/train", "eval_ordered_temperature/heldout"):
        assert key in metrics and math.isfinite(metrics[key])


def test_trainer_reads_the_dataset_path_splits(tmp_path):
    path = tmp_path / "control.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_control_records(6, 2)))
    trainer = SteeringTrainer(args=config(tmp_path, dataset_path=str(path)))
    assert set(trainer.train_rows["split"]) == {"train"} and set(trainer.eval_rows["split"]) == {"eval"}
    assert len(trainer.train_dataset) == 4 and len(trainer.eval_dataset) == 2
    with pytest.raises(ValueError, match="give a train_dataset or set dataset_path"):
        SteeringTrainer(args=config(tmp_path))


# -- checkpoints ----------------------------------------------------------------------------------
class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("killed")


@pytest.mark.parametrize("mode", ["head_only", "lora_joint"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, train_rows, mode):
    extra = {"training_mode": mode, "save_strategy": "steps", "save_steps": 3, "max_steps": 6}
    if mode == "lora_joint":
        extra["lora_dropout"] = 0.1  # RNG state matters
    straight = SteeringTrainer(args=config(tmp_path / "a", **extra), train_dataset=train_rows)
    straight.train()
    killed = SteeringTrainer(args=config(tmp_path / "b", **extra), train_dataset=train_rows, callbacks=[KillAt(4)])
    with pytest.raises(RuntimeError, match="killed"):
        killed.train()
    resumed = SteeringTrainer(args=config(tmp_path / "b", resume_from_checkpoint="last", **extra), train_dataset=train_rows)
    resumed.train()
    expected, got = heads_state(straight.autodeco_model), heads_state(resumed.autodeco_model)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    if mode == "lora_joint":
        from peft import get_peft_model_state_dict

        lora_a = get_peft_model_state_dict(straight.autodeco_model.base_model)
        lora_b = get_peft_model_state_dict(resumed.autodeco_model.base_model)
        for key in lora_a:
            torch.testing.assert_close(lora_b[key], lora_a[key])
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    names = {p.name for p in checkpoint.rglob("*") if p.is_file()}
    assert {"heads.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.json"} <= names
    pickled = [p for p in (tmp_path / "b").rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    assert pickled == []


def test_lora_joint_saves_adapter_and_reports_the_base_lm_loss(tmp_path, train_rows, eval_rows):
    args = config(tmp_path, training_mode="lora_joint", lm_loss_weight=0.5)
    trainer = SteeringTrainer(args=args, train_dataset=train_rows, eval_dataset=eval_rows)
    model = trainer.autodeco_model
    lora = {n: p.detach().clone() for n, p in model.base_model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    trainer.train()
    assert any(not torch.equal(p, dict(model.base_model.named_parameters())[n]) for n, p in lora.items())
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_lm_loss"]) and math.isfinite(metrics["eval_base_lm_loss"])
    assert metrics["eval_lm_loss"] != metrics["eval_base_lm_loss"]
    out = tmp_path / "final"
    trainer.save_model(str(out))
    assert (out / "heads.safetensors").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()

    base, tokenizer = tiny_model_and_tokenizer()
    loaded = load_trained_model(out, base)
    batch = tokenizer.apply_chat_template([eval_rows[0]["messages"]], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).temperature, model(**batch).temperature)


def test_state_files_round_trip_without_pickle(tmp_path):
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0], "name": None}],
        "numpy": ("MT19937", np.arange(5, dtype=np.uint32), 2, 0, 0.0),
    }
    tensors, skeleton = flatten_state(state)
    json.dumps(skeleton)
    back = unflatten_state(skeleton, tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and 0 in back["state"]
    save_state(tmp_path, "opt", state)
    loaded = load_state(tmp_path, "opt")
    torch.testing.assert_close(loaded["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert loaded["numpy"][1].dtype == np.uint32 and loaded["numpy"][1].tolist() == list(range(5))
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state({"x": object()})


# -- command line ---------------------------------------------------------------------------------
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


# -- ordering metrics -----------------------------------------------------------------------------
def test_summarize_ordering_counts_groups_per_command_split():
    def row(group, variant, split, t, p=0.9):
        return {"group_id": group, "variant": variant, "command_split": split, "temperature": t, "top_p": p}

    records = [
        # group a: train phrasings ordered (levels averaged: low 0.3, high 1.3); heldout high below none
        row("a", "none", None, 1.0), row("a", "low", "train", 0.2), row("a", "low", "train", 0.4),
        row("a", "high", "train", 1.2), row("a", "high", "train", 1.4),
        row("a", "low", "heldout", 0.5), row("a", "high", "heldout", 0.9),
        # group b: train low above none
        row("b", "none", None, 1.0), row("b", "low", "train", 1.1), row("b", "high", "train", 1.5),
        # group c: only a placebo: nothing to compare
        row("c", "none", None, 1.0), row("c", "placebo", "train", 1.0),
    ]
    summary = summarize_ordering(records)["by_command_split"]
    assert summary["train"]["temperature_ordered"] == pytest.approx(0.5)  # a yes, b no, c not comparable
    assert summary["heldout"]["temperature_ordered"] == 0.0
    assert summary["train"]["units"] == 3
    assert summary["train"]["temperature"]["none"] == pytest.approx(1.0)
    assert summary["train"]["temperature"]["low"] == pytest.approx((0.3 + 1.1) / 2)
    assert summary["train"]["top_p_ordered"] == 0.0  # equal top-p is not ordered


def test_evaluate_ordering_is_usable_outside_the_trainer(eval_rows):
    base, tokenizer = tiny_model_and_tokenizer()
    model = AutoDecoModel(base)
    report = evaluate_ordering(model, tokenizer, eval_rows, batch_size=5)
    assert len(report["rows"]) == len(eval_rows)
    assert all(r["temperature"] == pytest.approx(1.0) for r in report["rows"])  # fresh heads: T = 1 everywhere
    assert report["by_command_split"]["train"]["temperature_ordered"] == 0.0
    assert report["by_command_split"]["train"]["units"] == 2


def test_build_model_is_seeded(tmp_path):
    first, _ = build_model(config(tmp_path, seed=5))
    second, _ = build_model(config(tmp_path, seed=5))
    third, _ = build_model(config(tmp_path, seed=6))
    a, b, c = heads_state(first), heads_state(second), heads_state(third)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("cache", [True, False])
def test_trainer_fits_the_context_normalisation_from_the_training_rows(tmp_path, train_rows, cache):
    trainer = SteeringTrainer(args=config(tmp_path, backbone_cache=cache, heads_steering_width=8), train_dataset=train_rows)
    heads = trainer.autodeco_model.heads
    assert not torch.equal(heads.context_scale, torch.ones_like(heads.context_scale))
    assert not torch.equal(heads.context_shift, torch.zeros_like(heads.context_shift))
    assert bool((heads.context_scale > 0).all())
