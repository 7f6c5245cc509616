"""steerdeco.training.cache: the backbone cache gives the heads what the live backbone gives, and is rebuilt when stale."""

import logging

import pytest
import torch
from training_setup import config

from steerdeco.rows import select_split
from steerdeco.testing import tiny_model_and_tokenizer
from steerdeco.training import SteeringTrainer, evaluate_ordering, load_or_build_cache
from steerdeco.training.cache import CACHE_FILE, read_cache_metadata
from steerdeco.training.collator import encode_groups
from steerdeco.training.synthetic import synthetic_control_rows

# -- backbone cache -------------------------------------------------------------------------------
POOLED = {"heads_steering_width": 8, "heads_context_pooling": "prompt_attention", "heads_context_layer": 1}


@pytest.mark.parametrize("heads", [{}, POOLED, {**POOLED, "heads_named_values": True, "heads_steering_levels": 3},
                                   {**POOLED, "heads_named_values": True, "heads_steering_levels": 3, "heads_negation_scope": True}],
                         ids=["running-mean", "prompt-attention", "named-values-and-levels", "negation-scope"])
def test_cache_and_backbone_give_the_same_heads_inputs(tmp_path, train_rows, heads):
    cached = SteeringTrainer(args=config(tmp_path, **heads), train_dataset=train_rows)
    direct = SteeringTrainer(args=config(tmp_path, backbone_cache=False, **heads), train_dataset=train_rows)
    assert cached.backbone_cache is not None and direct.backbone_cache is None
    if heads.get("heads_negation_scope"):  # the trainer gave the heads the tokenizer's negators and clause breaks
        assert cached.autodeco_model.heads.negation_reader is not None
        assert "break" in cached.autodeco_model.heads.config.negation_tokens.values()
    if heads.get("heads_named_values"):  # trained-looking named-value paths: their attention reads the prompt's ids
        with torch.no_grad():
            for path in cached.autodeco_model.heads.named_paths.values():
                for parameter in path.parameters():
                    parameter.add_(0.1 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)).to(parameter.device))
            trained = cached.autodeco_model.heads  # and level paths that tell the levels apart
            for parameter in [*trained.temperature_head.steering.parameters(), *trained.top_p_head.steering.parameters()]:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)).to(parameter.device))
    direct.autodeco_model.heads.load_state_dict(cached.autodeco_model.heads.state_dict())
    device = cached.autodeco_model.device
    for batch_cached, batch_direct in zip(cached.get_eval_dataloader(cached.train_dataset),
                                          direct.get_eval_dataloader(direct.train_dataset), strict=True):
        assert "hidden" in batch_cached and "input_ids" not in batch_cached
        with torch.no_grad():
            out_cached = cached.model(**{k: v.to(device) for k, v in batch_cached.items() if k in ("response_mask", "hidden", "context", "slot_values", "slot_counts", "target_value", "target_slot", "prompt_states", "prompt_mask", "prompt_ids")})
            out_direct = direct.model(**{k: v.to(device) for k, v in batch_direct.items() if k in ("response_mask", "input_ids", "attention_mask", "response_positions", "response_targets")})
        # the cache pass pads other rows together than the collator: the same up to kernel rounding on a GPU
        close = dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out_cached.temperature, out_direct.temperature, **close)
        torch.testing.assert_close(out_cached.top_p, out_direct.top_p, **close)
        if heads.get("heads_named_values"):
            torch.testing.assert_close(out_cached.named, out_direct.named, rtol=0, atol=1e-2)  # states stored in bf16
            assert float(out_cached.named[:, 0].max()) > 0  # some prompt names a temperature and it is read
            torch.testing.assert_close(out_cached.level_logits, out_direct.level_logits, rtol=0, atol=1e-2)
            assert out_cached.level_logits.shape[1:] == (2, 7) and float(out_cached.level_logits.std()) > 0
        # compressed logits: on a GPU a logit at a bin edge can land in the neighbouring bin
        slots = close if device.type == "cpu" else dict(rtol=1e-2, atol=1e-3)
        torch.testing.assert_close(out_cached.slots.values, out_direct.slots.values, **slots)


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


def test_heads_without_context_features_get_a_cache_without_context(tmp_path, train_rows):
    trainer = SteeringTrainer(args=config(tmp_path, heads_context_features=False), train_dataset=train_rows)
    assert trainer.backbone_cache.context is None
    batch = next(iter(trainer.get_train_dataloader()))
    assert "hidden" in batch and "context" not in batch


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
