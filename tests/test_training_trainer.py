"""steerdeco.training.trainer: SteeringTrainer end to end on the tiny model (batches, training, logs, LoRA)."""

import math

import torch
from training_setup import VARIANTS_PER_GROUP, config, heads_state

from steerdeco.rows import select_split
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.training import SteeringTrainer, evaluate_ordering, load_trained_model
from steerdeco.training.synthetic import synthetic_control_rows


def test_trainer_batches_hold_whole_groups(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, backbone_cache=False), train_dataset=train_rows)
    seen = 0
    for batch in trainer.get_train_dataloader():
        counts = torch.bincount(batch["groups"])
        assert (counts == VARIANTS_PER_GROUP).all()
        seen += len(counts)
    assert seen == 4


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


def test_prompt_attention_heads_trained_from_the_cache_order_held_out_prompts(tmp_path):
    rows = synthetic_control_rows(num_prompts=12, num_eval_prompts=4)
    args = config(tmp_path, max_steps=60, learning_rate=1e-2, heads_mlp_width=64, heads_steering_width=16,
                  heads_context_in_mlp=False, heads_context_pooling="prompt_attention", heads_context_layer=1)
    trainer = SteeringTrainer(args=args, train_dataset=select_split(rows, "train"))
    cache = trainer.backbone_cache
    assert cache.prompt_states is not None and cache.context is None
    pool = {k: v.clone() for k, v in trainer.autodeco_model.heads.prompt_pool.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(pool[k], v) for k, v in trainer.autodeco_model.heads.prompt_pool.state_dict().items())
    # scored through the full model (the pooled prompt of its own forward), on prompts never trained on
    report = evaluate_ordering(trainer.autodeco_model, trainer.processing_class, select_split(rows, "eval"))
    entry = report["by_command_split"]["train"]
    assert entry["units"] == 4 and entry["temperature_ordered"] >= 0.75
    assert entry["temperature"]["low"] < entry["temperature"]["none"] < entry["temperature"]["high"]


def test_evaluation_logs_eval_metrics(tmp_path, train_rows, eval_rows):
    trainer = SteeringTrainer(args=config(tmp_path), train_dataset=train_rows, eval_dataset=eval_rows)
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_ranking_temperature_loss", "eval_mean_temperature/none",
                "eval_ordered_temperature/train", "eval_ordered_temperature/heldout"):
        assert key in metrics and math.isfinite(metrics[key])


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
        on_device = {k: v.to(model.device) for k, v in batch.items()}  # the trainer moved the model (a GPU, if any)
        torch.testing.assert_close(loaded(**batch).temperature, model(**on_device).temperature.cpu())
