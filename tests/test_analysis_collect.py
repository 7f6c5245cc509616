"""Teacher-forced scores from the training's backbone cache against scores through the backbone (tiny model)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from analysis.api import run_analysis
from analysis.collect import teacher_forced_scores
from steerdeco import AutoDecoModel, HeadsConfig
from steerdeco.chat import encode_example
from steerdeco.testing import jitter_heads, tiny_model_and_tokenizer
from steerdeco.training.cache import CACHE_FILE, BackboneCache, build_backbone_cache, load_or_build_cache
from steerdeco.training.synthetic import synthetic_control_records

TOP_K, BINS = 16, 8


def jittered_model(context_features: bool, top_p_features: bool = True, **heads) -> tuple[AutoDecoModel, object]:
    """Heads whose T and P depend on their inputs (fresh heads predict constants)."""
    base, tokenizer = tiny_model_and_tokenizer(seed=0)
    config = HeadsConfig(hidden_size=base.config.hidden_size, mlp_width=32, context_features=context_features,
                         top_p_features=top_p_features, **heads)
    return jitter_heads(AutoDecoModel(base, config).eval(), seed=1, scale=0.2), tokenizer


def rows_and_examples(tokenizer, max_response_tokens=None):
    rows = [r for r in synthetic_control_records(num_prompts=3, num_eval_prompts=1)]
    examples = [encode_example(tokenizer, r["messages"], r["response"], max_response_tokens) for r in rows]
    return rows, examples


def cache_of(model, tokenizer, examples, **kwargs) -> BackboneCache:
    pooling = model.heads.prompt_pool is not None
    settings = dict(top_k=TOP_K, num_bins=BINS, batch_size=1, progress=False, store_context=model.heads.standardize_context,
                    prompt_layer=model.heads_config.context_layer if pooling else None)
    return build_backbone_cache(model.base_model, examples, tokenizer.pad_token_id, **{**settings, **kwargs})


def arrays(frame, column):
    return [np.asarray(v) for v in frame[column]]


@pytest.mark.parametrize("context_features", [False, True])
@pytest.mark.parametrize("hidden_dtype", ["float32", "bfloat16"])
def test_rows_from_the_cache_score_bit_identically_to_rows_through_the_backbone(context_features, hidden_dtype):
    model, tokenizer = jittered_model(context_features)
    rows, examples = rows_and_examples(tokenizer, max_response_tokens=12)
    full = cache_of(model, tokenizer, examples, hidden_dtype=hidden_dtype)
    half = cache_of(model, tokenizer, examples[::2], hidden_dtype=hidden_dtype)
    common = dict(batch_size=1, progress=False, max_response_tokens=12)
    from_cache = teacher_forced_scores(model, tokenizer, rows, backbone_cache=full, **common)
    mixed = teacher_forced_scores(model, tokenizer, rows, backbone_cache=half, **common)
    for column in ("temperature", "top_p"):
        for a, b in zip(arrays(from_cache, column), arrays(mixed, column), strict=True):
            assert len(a) == 12 and np.array_equal(a, b)
    assert np.std(np.concatenate(arrays(from_cache, "temperature"))) > 1e-3  # the heads do read their inputs


def test_a_cache_missing_every_row_gives_the_same_scores_as_a_full_one():
    model, tokenizer = jittered_model(context_features=True)
    rows, examples = rows_and_examples(tokenizer)
    full = cache_of(model, tokenizer, examples)
    unrelated = cache_of(model, tokenizer, [{"input_ids": [1, 2, 3, 4], "response_start": 2}])
    assert unrelated.lookup([0])[0] is None
    common = dict(batch_size=1, progress=False)
    a = teacher_forced_scores(model, tokenizer, rows, backbone_cache=full, **common)
    b = teacher_forced_scores(model, tokenizer, rows, backbone_cache=unrelated, **common)
    for x, y in zip(arrays(a, "temperature") + arrays(a, "top_p"), arrays(b, "temperature") + arrays(b, "top_p"), strict=True):
        assert np.array_equal(x, y)


def test_without_top_p_features_cached_scores_match_the_exact_model_path():
    # with fp32 hidden states and no logit features the heads' inputs are the model's own: only batching differs
    model, tokenizer = jittered_model(context_features=True, top_p_features=False)
    rows, examples = rows_and_examples(tokenizer)
    cache = cache_of(model, tokenizer, examples, hidden_dtype="float32", batch_size=4)
    cached = teacher_forced_scores(model, tokenizer, rows, backbone_cache=cache, batch_size=4, progress=False)
    exact = teacher_forced_scores(model, tokenizer, rows, batch_size=4, progress=False)
    for column in ("temperature", "top_p"):
        for a, b in zip(arrays(cached, column), arrays(exact, column), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [0, 1])
def test_prompt_attention_heads_score_the_same_from_the_cache_as_through_the_model(layer):
    model, tokenizer = jittered_model(context_features=True, top_p_features=False, steering_width=8,
                                      context_pooling="prompt_attention", context_layer=layer)
    rows, examples = rows_and_examples(tokenizer)
    full = cache_of(model, tokenizer, examples, hidden_dtype="float32")
    assert full.context is None and full.prompt_states.shape[0] == int(full.prompt_offsets[-1])
    half = cache_of(model, tokenizer, examples[::2], hidden_dtype="float32")
    cached = teacher_forced_scores(model, tokenizer, rows, backbone_cache=full, batch_size=1, progress=False)
    mixed = teacher_forced_scores(model, tokenizer, rows, backbone_cache=half, batch_size=1, progress=False)
    exact = teacher_forced_scores(model, tokenizer, rows, batch_size=4, progress=False)
    for a, b, c in zip(arrays(cached, "temperature"), arrays(mixed, "temperature"), arrays(exact, "temperature"), strict=True):
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    means = [float(np.mean(a)) for a in arrays(cached, "temperature")]
    assert np.std(means) > 1e-3  # the pooled prompt moves T between rows


def test_with_top_p_features_cached_scores_are_close_to_the_exact_model_path():
    # compressed logits change the four probability features a little, T not at all
    model, tokenizer = jittered_model(context_features=False)
    rows, examples = rows_and_examples(tokenizer)
    cache = cache_of(model, tokenizer, examples, hidden_dtype="float32", batch_size=4)
    cached = teacher_forced_scores(model, tokenizer, rows, backbone_cache=cache, batch_size=4, progress=False)
    exact = teacher_forced_scores(model, tokenizer, rows, batch_size=4, progress=False)
    for a, b in zip(arrays(cached, "temperature"), arrays(exact, "temperature"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(arrays(cached, "top_p"), arrays(exact, "top_p"), strict=True):
        np.testing.assert_allclose(a, b, atol=0.05)


def mapped_files(address: int) -> list[str]:
    """Paths of the memory mappings of this process that contain ``address`` (Linux /proc/self/maps)."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if start <= address < end and len(parts) >= 6:
                found.append(parts[5])
    return found


def test_a_memory_mapped_cache_reads_back_what_was_built(tmp_path):
    model, tokenizer = jittered_model(context_features=True)
    _, examples = rows_and_examples(tokenizer)
    built = cache_of(model, tokenizer, examples)
    loaded = load_or_build_cache(tmp_path, model.base_model, examples, tokenizer.pad_token_id, TOP_K, BINS,
                                 batch_size=1, progress=False, store_context=True)
    assert loaded.hidden.dtype == torch.bfloat16 and loaded.context is not None
    if sys.platform == "linux":  # the tensors are pages of the file, not copies in memory
        assert str(tmp_path / CACHE_FILE) in mapped_files(loaded.hidden.data_ptr())
    for name in ("hidden", "context", "slot_values", "bin_counts", "target_value", "target_slot", "offsets", "row_keys"):
        assert torch.equal(getattr(loaded, name), getattr(built, name)), name
    no_context = load_or_build_cache(tmp_path / "other", model.base_model, examples, tokenizer.pad_token_id, TOP_K,
                                     BINS, progress=False, store_context=False)
    assert no_context.context is None and "context" not in no_context.gather([0], 4)
    assert no_context.fingerprint != loaded.fingerprint
    assert no_context.bytes_per_position < loaded.bytes_per_position


def test_run_analysis_scores_from_the_cache_and_reports_its_timings(tmp_path):
    model, tokenizer = jittered_model(context_features=True)
    rows = [dict(r) for r in synthetic_control_records(num_prompts=6, num_eval_prompts=3)]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    examples = [encode_example(tokenizer, r["messages"], r["response"], 12) for r in eval_rows]
    cache = cache_of(model, tokenizer, examples, batch_size=4)
    timings: dict = {}
    common = dict(protocols=["teacher_forced"], n_boot=20, progress=False, figures=False)
    _, with_cache = run_analysis(model, tokenizer, rows, backbone_cache=cache, max_response_tokens=12, timings=timings,
                                 **common)
    assert set(timings) == {"teacher_forced", "report"}
    scores = with_cache["scores.teacher_forced"]
    assert len(scores) == len(eval_rows) and all(len(t) == 12 for t in scores["temperature"])
