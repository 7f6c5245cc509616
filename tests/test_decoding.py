import math

import pytest
import torch
from transformers import LogitsProcessor, TopKLogitsWarper

from steerdeco import AutoDecoModel, DynamicTemperatureTopP, HeadsConfig
from steerdeco.chat import response_parameters
from steerdeco.decoding import _StepRecord, generated_mask, top_k_top_p_filter, top_p_filter
from steerdeco.heads import probability_features
from steerdeco.hooks import decoder, output_embeddings
from steerdeco.losses import IGNORE_INDEX


def constant_heads(model, temperature, top_p):
    """Make the heads predict the same T and P everywhere; return the exact float values they give."""
    with torch.no_grad():
        for head in (model.temperature_head, model.top_p_head):
            head.mlp[-1].weight.zero_()
        half = temperature / model.heads_config.max_temperature
        model.temperature_head.mlp[-1].bias.fill_(math.log(half / (1 - half)))
        model.top_p_head.mlp[-1].bias.fill_(math.log(top_p / (1 - top_p)))
        t = model.temperature_head(torch.zeros(1, model.heads_config.hidden_size))
    return float(t), float(torch.sigmoid(torch.tensor(math.log(top_p / (1 - top_p)))))


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 0.8), (1.3, 0.95), (0.4, 0.5)])
def test_constant_heads_match_static_sampling_token_for_token(tiny, chat_batch, temperature, top_p):
    base, _ = tiny
    model = AutoDecoModel(base)
    t, p = constant_heads(model, temperature, top_p)
    torch.manual_seed(11)
    dynamic = model.generate(**chat_batch, do_sample=True, max_new_tokens=40)
    torch.manual_seed(11)
    static = base.generate(**chat_batch, do_sample=True, max_new_tokens=40, temperature=t, top_p=p)
    assert torch.equal(dynamic, static)


def test_user_temperature_and_top_p_multiply_the_predicted_values(tiny, chat_batch):
    base, _ = tiny
    model = AutoDecoModel(base)
    t, p = constant_heads(model, 0.5, 0.6)
    torch.manual_seed(3)
    dynamic = model.generate(**chat_batch, do_sample=True, max_new_tokens=30, temperature=1.5, top_p=1.25, top_k=20)
    torch.manual_seed(3)
    static = base.generate(
        **chat_batch, do_sample=True, max_new_tokens=30, temperature=t * 1.5, top_p=min(1.0, p * 1.25), top_k=20
    )
    assert torch.equal(dynamic, static)


def test_dynamic_decoding_uses_different_parameters_per_row():
    record = _StepRecord()
    record.temperature.append(torch.tensor([0.5, 2.0]))
    record.top_p.append(torch.tensor([0.3, 1.0]))
    scores = torch.randn(2, 50)
    original = scores.clone()
    out = DynamicTemperatureTopP(record, top_k=0)(None, scores)
    assert torch.equal(scores, original)  # never edits in place
    kept0, kept1 = torch.isfinite(out[0]), torch.isfinite(out[1])
    assert kept1.all() and kept0.sum() < 50
    torch.testing.assert_close(out[1], scores[1] / 2.0)
    torch.testing.assert_close(out[0][kept0], scores[0][kept0] / 0.5)


def test_rows_below_the_greedy_temperature_keep_only_their_best_token():
    record = _StepRecord()
    record.temperature.append(torch.tensor([0.05, 1.0]))
    record.top_p.append(torch.tensor([1.0, 1.0]))
    scores = torch.randn(2, 50)
    out = DynamicTemperatureTopP(record, top_k=0, greedy_below=0.1)(None, scores)
    assert torch.isfinite(out[0]).sum() == 1 and int(out[0].argmax()) == int(scores[0].argmax())
    torch.testing.assert_close(out[1], scores[1])
    off = DynamicTemperatureTopP(record, top_k=0, greedy_below=0.0)(None, scores)
    assert torch.isfinite(off[0]).all()


def test_by_default_a_token_the_analysis_counts_as_no_randomness_is_decoded_greedily():
    from analysis.steering import NO_RANDOMNESS_MAX_T

    record = _StepRecord()
    record.temperature.append(torch.tensor([0.9 * NO_RANDOMNESS_MAX_T, 1.5 * NO_RANDOMNESS_MAX_T]))
    record.top_p.append(torch.tensor([1.0, 1.0]))
    scores = torch.randn(2, 50)
    out = DynamicTemperatureTopP(record, top_k=0)(None, scores)
    assert torch.isfinite(out[0]).sum() == 1 and int(out[0].argmax()) == int(scores[0].argmax())
    assert torch.isfinite(out[1]).all()  # above the bound: sampled at its T


def test_a_near_zero_predicted_temperature_gives_greedy_text_under_every_seed(tiny, chat_batch):
    base, _ = tiny
    model = AutoDecoModel(base)
    t, p = constant_heads(model, 0.08, 0.95)
    greedy = base.generate(**chat_batch, do_sample=False, max_new_tokens=30)
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        assert torch.equal(model.generate(**chat_batch, do_sample=True, max_new_tokens=30), greedy)
    torch.manual_seed(0)
    sampled = model.generate(**chat_batch, do_sample=True, max_new_tokens=30, greedy_below=0.0)
    torch.manual_seed(0)
    static = base.generate(**chat_batch, do_sample=True, max_new_tokens=30, temperature=t, top_p=p)
    assert torch.equal(sampled, static)  # greedy_below=0: plain sampling at the predicted T


def test_greedy_stays_greedy(tiny, chat_batch):
    base, _ = tiny
    model = AutoDecoModel(base)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(model.generate(**chat_batch, max_new_tokens=25), base.generate(**chat_batch, max_new_tokens=25))


@pytest.mark.parametrize(
    ("context_features", "use_cache", "steering"),
    [(False, True, {}), (True, True, {}), (True, False, {}),
     (True, True, {"steering_width": 8, "context_in_mlp": False}),
     (True, True, {"steering_width": 8, "context_pooling": "prompt_attention", "context_layer": 1}),
     (True, False, {"steering_width": 8, "context_pooling": "prompt_attention"})],
    ids=["autodeco", "context", "context-no-kv-cache", "steering-path", "prompt-attention", "prompt-attention-no-kv-cache"],
)
def test_trace_is_aligned_with_tokens_and_matches_teacher_forcing(tiny, chat_batch, context_features, use_cache, steering):
    base, tokenizer = tiny
    config = HeadsConfig(hidden_size=base.config.hidden_size, context_features=context_features, **steering)
    model = AutoDecoModel(base, config)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        if model.heads.standardize_context:  # a fitted standardisation, as trained heads have
            model.heads.context_shift.normal_(0, 0.1)
            model.heads.context_scale.uniform_(0.5, 2.0)
    torch.manual_seed(0)
    trace = model.generate_with_trace(**chat_batch, do_sample=True, max_new_tokens=20, use_cache=use_cache)
    batch, prompt_length = chat_batch["input_ids"].shape
    assert trace.prompt_length == prompt_length
    assert trace.temperature.shape == trace.top_p.shape == trace.mask.shape == (batch, trace.generated.shape[1])
    assert trace.temperature.std() > 0  # the heads really vary per token
    # Scoring the generated sequences teacher-forced gives the same T and P for every real token.
    sequences = trace.sequences
    attention = torch.cat([chat_batch["attention_mask"], trace.mask.long()], dim=1)
    labels = sequences.masked_fill(attention == 0, IGNORE_INDEX)
    labels[:, :prompt_length] = IGNORE_INDEX
    prompt_mask = attention.bool() & (torch.arange(sequences.shape[1]) < prompt_length)
    out = model(input_ids=sequences, attention_mask=attention, prompt_mask=prompt_mask)
    for i, (t, p) in enumerate(response_parameters(out.temperature, out.top_p, labels)):
        torch.testing.assert_close(t, trace.temperature[i][trace.mask[i]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(p, trace.top_p[i][trace.mask[i]], rtol=1e-4, atol=1e-5)
    rows = trace.rows()
    assert [len(r["token_ids"]) for r in rows] == trace.mask.sum(1).tolist()


def test_generated_mask_stops_after_the_first_eos():
    generated = torch.tensor([[5, 2, 3, 3], [5, 6, 7, 8]])
    assert generated_mask(generated, 2).tolist() == [[True, True, False, False], [True, True, True, True]]
    assert generated_mask(generated, [7, 2]).tolist() == [[True, True, False, False], [True, True, True, False]]


class Boom(LogitsProcessor):
    def __call__(self, input_ids, scores):
        raise RuntimeError("boom")


def test_hooks_are_removed_after_generation_and_on_error(tiny, chat_batch):
    base, _ = tiny
    model = AutoDecoModel(base)
    model.generate(**chat_batch, do_sample=True, max_new_tokens=3)
    assert not base.lm_head._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        model.generate(**chat_batch, do_sample=True, max_new_tokens=3, logits_processor=[Boom()])
    assert not base.lm_head._forward_hooks
    model(**chat_batch)
    assert not base.lm_head._forward_hooks


def test_bad_decoding_arguments_are_refused(tiny, chat_batch):
    base, _ = tiny
    model = AutoDecoModel(base)
    with pytest.raises(ValueError, match="`temperature` multiplies"):
        DynamicTemperatureTopP(_StepRecord(), temperature_scale=0.0)
    with pytest.raises(ValueError, match="`top_p` multiplies"):
        DynamicTemperatureTopP(_StepRecord(), top_p_scale=float("nan"))
    with pytest.raises(ValueError, match="min_tokens_to_keep"):
        DynamicTemperatureTopP(_StepRecord(), min_tokens_to_keep=0)
    with pytest.raises(ValueError, match="`greedy_below` is a temperature"):
        DynamicTemperatureTopP(_StepRecord(), greedy_below=-0.1)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(**chat_batch, num_beams=2, max_new_tokens=3)
    with pytest.raises(RuntimeError, match="before any forward pass"):
        DynamicTemperatureTopP(_StepRecord())(None, torch.randn(1, 5))


def test_top_p_filter_keeps_at_least_one_token():
    scores = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    out = top_p_filter(scores, torch.tensor([0.01, 0.5]))
    assert torch.isfinite(out).sum(1).tolist() == [1, 2]


@pytest.mark.parametrize("min_tokens_to_keep", [1, 3])
def test_top_k_then_top_p_on_the_k_best_keeps_the_same_tokens_as_on_the_whole_vocabulary(min_tokens_to_keep):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 500, generator=generator) * torch.linspace(0.5, 6, 64).unsqueeze(1)
    scores[1, 100] = -math.inf  # a token another processor removed
    tied = scores.clone()
    tied[0, :] = torch.arange(500).float() // 50  # ties at every k-th value: top-k keeps more than k tokens
    top_p = torch.rand(64, generator=generator)
    for batch in (scores, tied):
        for top_k in (1, 10, 50, 499, 500):
            warper = TopKLogitsWarper(top_k, min_tokens_to_keep=min_tokens_to_keep)
            expected = torch.isfinite(top_p_filter(warper(None, batch), top_p, min_tokens_to_keep))
            got = top_k_top_p_filter(batch, top_k, top_p, min_tokens_to_keep)
            kept = torch.isfinite(got)
            assert torch.equal(got[kept], batch[kept])
            if batch is scores:
                assert torch.equal(kept, expected), top_k
            else:  # which of several equal scores a sort puts first is arbitrary: the same number is kept, by value
                assert torch.equal(kept.sum(-1), expected.sum(-1)), top_k
                for row in range(batch.shape[0]):
                    assert torch.equal(batch[row][kept[row]].sort().values, batch[row][expected[row]].sort().values)


@pytest.mark.parametrize("block_elements", [10**9, 2 * 1000])  # whole; blocks of 2 rows (the last one shorter)
def test_probability_features_of_full_logits_match_their_definition(monkeypatch, block_elements):
    import steerdeco.blocks as blocks

    monkeypatch.setattr(blocks, "CPU_BLOCK_ELEMENTS", block_elements)
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 3, 1000, generator=generator) * 4).double()
    temperature = torch.rand(6, 3, generator=generator).double() * 2 + 0.05
    p = torch.softmax(logits / temperature.unsqueeze(-1), dim=-1)
    expected = torch.stack(
        [p.amax(-1), -(p * p.log()).sum(-1), p.var(-1, unbiased=False), p.topk(5, dim=-1).values.sum(-1)], dim=-1
    )
    torch.testing.assert_close(probability_features(logits.float(), temperature.float()).double(), expected,
                               rtol=1e-4, atol=1e-7)


def test_models_without_an_lm_head_or_decoder_are_refused_by_name():
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"Linear.get_output_embeddings\(\) returned no module; .*lm_head"):
        output_embeddings(plain)
    with pytest.raises(ValueError, match=r"Linear.get_decoder\(\) returned no module; heads with context_features"):
        decoder(plain)


def test_lm_head_gets_a_contiguous_input_inside_the_block_and_the_hook_is_removed(tiny):
    from steerdeco.hooks import contiguous_lm_head_input, output_embeddings

    base, _ = tiny
    head = output_embeddings(base)
    seen = []
    probe = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))  # inputs as used
    sliced = torch.randn(3, 5, base.config.hidden_size)[:, -1:]
    assert not sliced.is_contiguous()
    try:
        expected = head(sliced)
        with contiguous_lm_head_input(base):
            got = head(sliced)
        head(sliced)
    finally:
        probe.remove()
    torch.testing.assert_close(got, expected)
    assert seen == [False, True, False]  # contiguous inside the block only
