"""The core on a CUDA device (skipped where there is none, as in CI)."""

import math

import pytest
import torch

from steerdeco import AutoDecoModel, compress_logits, exact_slots, soft_top_p_loss, temperature_loss
from steerdeco.testing import tiny_model_and_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_tiny():
    base, tokenizer = tiny_model_and_tokenizer()
    base = base.to("cuda")
    batch = tokenizer.apply_chat_template(
        [[{"role": "user", "content": "hello there"}], [{"role": "user", "content": "Write a poem about the sea."}]],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
        padding=True,
    ).to("cuda")
    return base, tokenizer, batch


def test_heads_live_on_the_base_device_and_train(cuda_tiny):
    base, _, batch = cuda_tiny
    model = AutoDecoModel(base)
    model.loss_config.easy_token_fraction = 0.3
    assert model.device.type == "cuda"
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.heads.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        out = model(**batch, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert out.temperature.device.type == "cuda" and losses[-1] < losses[0]


def test_compressed_losses_agree_with_exact_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(64, 4000, device="cuda", generator=g) * 3
    targets = torch.randint(0, 4000, (64,), device="cuda", generator=g)
    t = torch.rand(64, device="cuda", generator=g) + 0.3
    p = torch.rand(64, device="cuda", generator=g) * 0.9 + 0.05
    exact, compressed = exact_slots(logits, targets), compress_logits(logits, targets, top_k=128, num_bins=64)
    torch.testing.assert_close(
        temperature_loss(exact, t, easy_token_fraction=0.0), temperature_loss(compressed, t, easy_token_fraction=0.0),
        rtol=1e-3, atol=1e-4,
    )
    torch.testing.assert_close(soft_top_p_loss(exact, t, p), soft_top_p_loss(compressed, t, p), rtol=2e-3, atol=1e-4)


def test_constant_heads_match_static_sampling_on_cuda(cuda_tiny):
    base, _, batch = cuda_tiny
    model = AutoDecoModel(base)
    with torch.no_grad():
        model.temperature_head.mlp[-1].bias.fill_(math.log(0.35 / 0.65))
        model.top_p_head.mlp[-1].bias.fill_(math.log(0.8 / 0.2))
    t, p = float(model(**batch).temperature[0, 0]), float(model(**batch).top_p[0, 0])
    torch.manual_seed(5)
    dynamic = model.generate(**batch, do_sample=True, max_new_tokens=40)
    torch.manual_seed(5)
    static = base.generate(**batch, do_sample=True, max_new_tokens=40, temperature=t, top_p=p)
    assert torch.equal(dynamic, static)
    trace = model.generate_with_trace(**batch, do_sample=True, max_new_tokens=10)
    assert trace.temperature.shape == (2, 10) and not base.lm_head._forward_hooks


def test_save_from_cuda_load_on_cpu(cuda_tiny, tmp_path):
    base, _, _ = cuda_tiny
    model = AutoDecoModel(base)
    model.save_pretrained(tmp_path)
    cpu_base, _ = tiny_model_and_tokenizer()
    loaded = AutoDecoModel.from_pretrained(tmp_path, base_model=cpu_base)
    for a, b in zip(model.heads.state_dict().values(), loaded.heads.state_dict().values(), strict=True):
        torch.testing.assert_close(a.cpu(), b)


def test_easy_token_masking_takes_a_cpu_or_a_cuda_generator_on_cuda_slots():
    from steerdeco.losses import easy_token_mask

    logits = torch.randn(2000, 30, device="cuda")
    slots = exact_slots(logits, logits.argmax(-1))  # every position easy
    on_cpu = easy_token_mask(slots, 0.5, torch.Generator().manual_seed(3))
    assert on_cpu.device.type == "cuda"
    assert torch.equal(on_cpu.cpu(), easy_token_mask(exact_slots(logits.cpu(), logits.argmax(-1).cpu()), 0.5,
                                                      torch.Generator().manual_seed(3)))  # same tokens on any device
    on_cuda = easy_token_mask(slots, 0.5, torch.Generator(device="cuda").manual_seed(3))
    assert 0.4 < on_cuda.float().mean().item() < 0.6


def test_heads_that_read_levels_values_and_negations_give_on_cuda_what_they_give_on_cpu(tmp_path):
    from steerdeco import HeadsConfig
    from steerdeco.negation import negation_token_table
    from steerdeco.numbers import number_token_table
    from steerdeco.testing import jitter_heads

    base, tokenizer = tiny_model_and_tokenizer()
    config = HeadsConfig(hidden_size=64, context_features=True, steering_width=8, context_in_mlp=False,
                         context_pooling="prompt_attention", context_layer=1, steering_levels=3, named_values=True,
                         number_tokens=number_token_table(tokenizer), negation_scope=True,
                         negation_tokens=negation_token_table(tokenizer))
    model = jitter_heads(AutoDecoModel(base, config), scale=0.3).eval()
    batch = tokenizer.apply_chat_template(
        [[{"role": "user", "content": "Don't be random at all. Use a temperature of 0.4."}],
         [{"role": "user", "content": "Write a poem about the sea."}]],
        add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True,
    )
    with torch.no_grad():
        on_cpu = model(**batch)
    model.save_pretrained(tmp_path / "heads")
    cuda_base, _ = tiny_model_and_tokenizer()
    on_gpu = AutoDecoModel.from_pretrained(tmp_path / "heads", base_model=cuda_base.to("cuda")).eval()
    with torch.no_grad():
        out = on_gpu(**batch.to("cuda"))
    torch.testing.assert_close(out.temperature.cpu(), on_cpu.temperature, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.top_p.cpu(), on_cpu.top_p, atol=1e-4, rtol=1e-4)
    generated = on_gpu.generate(**batch, do_sample=True, max_new_tokens=5)
    assert generated.device.type == "cuda" and generated.shape[1] == batch["input_ids"].shape[1] + 5
    assert not cuda_base.lm_head._forward_hooks
