import math

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from steerdeco.config import HeadsConfig
from steerdeco.heads import AutoDecoHeads, probability_features
from steerdeco.losses import (
    AutoDecoLossConfig,
    base_target_prob,
    compress_logits,
    easy_token_mask,
    exact_slots,
    soft_top_p_log_mask,
    soft_top_p_loss,
    temperature_loss,
)


def toy_problem(n=512, vocab=200, hidden=16, true_temperature=0.5, seed=0):
    """Hidden states, base logits, and targets sampled from softmax(logits / true_temperature)."""
    g = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(n, hidden, generator=g)
    logits = torch.randn(n, vocab, generator=g) * 2.0
    targets = torch.multinomial((logits / true_temperature).softmax(-1), 1, generator=g).squeeze(-1)
    return hidden_states, logits, targets


def test_temperature_loss_goes_down_and_learns_the_sampling_temperature():
    hidden, logits, targets = toy_problem()
    heads = AutoDecoHeads(HeadsConfig(hidden_size=16, mlp_width=32))
    slots = exact_slots(logits, targets)
    optimizer = torch.optim.Adam(heads.temperature_head.parameters(), lr=0.03)
    losses = []
    for _ in range(60):
        t, _ = heads(hidden, logits)
        loss = temperature_loss(slots, t, easy_token_fraction=0.0, dft=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    t, _ = heads(hidden, logits)
    assert abs(t.mean().item() - 0.5) < 0.1  # the data were sampled at T = 0.5; start was T = 1


def test_top_p_loss_goes_down_when_the_top_p_head_trains():
    hidden, logits, targets = toy_problem(true_temperature=1.0)
    heads = AutoDecoHeads(HeadsConfig(hidden_size=16, mlp_width=32))
    slots = exact_slots(logits, targets)
    optimizer = torch.optim.Adam(heads.top_p_head.parameters(), lr=0.03)
    with torch.no_grad():
        heads.top_p_head.mlp[-1].bias.fill_(-2.0)  # start far too narrow: P ~ 0.12
    losses = []
    for _ in range(40):
        t, p = heads(hidden, logits)
        loss = soft_top_p_loss(slots, t, p, dft=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    _, p = heads(hidden, logits)
    assert p.mean().item() > 0.3  # widened from the too-narrow start


def test_soft_mask_is_one_inside_the_nucleus_and_tends_to_the_hard_top_p():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 100, generator=g) * 2
    targets = torch.zeros(32, dtype=torch.long)
    temperature = torch.full((32,), 0.8)
    top_p = torch.rand(32, generator=g) * 0.8 + 0.1
    slots = exact_slots(logits, targets)
    mass = (slots.values / 0.8).softmax(-1)
    inside = (mass.cumsum(-1) - mass) < top_p.unsqueeze(-1)
    log_mask, _ = soft_top_p_log_mask(slots, temperature, top_p, steepness=30.0)
    assert torch.equal(log_mask[inside], torch.zeros_like(log_mask[inside]))
    # transformers' hard rule, mapped to the same descending order
    hard = torch.stack(
        [torch.isfinite(TopPLogitsWarper(float(p))(None, (row / 0.8).unsqueeze(0)).squeeze(0)) for row, p in zip(slots.values, top_p, strict=True)]
    )
    errors = []
    for steepness in (30.0, 300.0, 3000.0):
        mask = soft_top_p_log_mask(slots, temperature, top_p, steepness)[0].exp()
        errors.append((mask - hard.float()).abs().mean().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_compressed_and_exact_slots_give_the_same_losses_and_features():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(64, 2000, generator=g) * 3
    targets = torch.randint(0, 2000, (64,), generator=g)
    temperature = torch.rand(64, generator=g) * 1.5 + 0.3
    top_p = torch.rand(64, generator=g) * 0.9 + 0.05
    exact, compressed = exact_slots(logits, targets), compress_logits(logits, targets, top_k=128, num_bins=64)
    assert compressed.values.shape == (64, 192)
    for dft in (True, False):
        a = temperature_loss(exact, temperature, easy_token_fraction=0.0, dft=dft)
        b = temperature_loss(compressed, temperature, easy_token_fraction=0.0, dft=dft)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        a = soft_top_p_loss(exact, temperature, top_p, dft=dft)
        b = soft_top_p_loss(compressed, temperature, top_p, dft=dft)
        torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-4)
    torch.testing.assert_close(
        probability_features(logits, temperature),
        probability_features(compressed.values, temperature, compressed.counts),
        rtol=2e-3,
        atol=1e-6,
    )
    torch.testing.assert_close(base_target_prob(exact), base_target_prob(compressed))


def test_compressed_slots_are_the_same_in_blocks_of_rows_and_bin_the_tail_by_floor(monkeypatch):
    import steerdeco.blocks as blocks

    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(37, 3000, generator=g) * 4).bfloat16()  # bfloat16 logits tie, as a bf16 backbone's do
    targets = torch.randint(0, 3000, (37,), generator=g)
    monkeypatch.setattr(blocks, "CPU_BLOCK_ELEMENTS", 10**9)
    whole = compress_logits(logits, targets, top_k=64, num_bins=16)
    monkeypatch.setattr(blocks, "CPU_BLOCK_ELEMENTS", 4 * 3000)  # blocks of 4 rows, the last one shorter
    blocked = compress_logits(logits, targets, top_k=64, num_bins=16)
    for name in ("values", "counts", "target_value", "target_slot"):
        assert torch.equal(getattr(whole, name), getattr(blocked, name)), name
    # each tail token counts in bin floor((logit - min) / width) of 16 equal bins up to the 64th largest logit
    full = logits.float()
    top = full.topk(64, dim=-1).values
    low, high = full.min(-1, keepdim=True).values, top[:, -1:]
    bins = ((full - low) / ((high - low) / 16)).floor().clamp(0, 15).long()
    expected = torch.zeros(37, 16).scatter_add_(-1, bins, torch.ones_like(full))
    expected[:, -1] -= 64  # the top-k are slots of their own
    assert torch.equal(blocked.counts[:, 64:], expected.flip(-1))
    assert torch.equal(blocked.values[:, :64], top)


def test_probability_features_match_their_definitions():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 50, generator=g)
    temperature = torch.full((8,), 0.7)
    probs = (logits / 0.7).softmax(-1)
    features = probability_features(logits, temperature)
    torch.testing.assert_close(features[:, 0], probs.max(-1).values)
    torch.testing.assert_close(features[:, 1], torch.distributions.Categorical(probs=probs).entropy())
    torch.testing.assert_close(features[:, 2], probs.var(-1, unbiased=False))
    torch.testing.assert_close(features[:, 3], probs.topk(5, -1).values.sum(-1))


def test_dft_weights_each_token_by_its_base_probability():
    _, logits, targets = toy_problem(n=64)
    slots = exact_slots(logits, targets)
    temperature = torch.full((64,), 0.9)
    ce = torch.nn.functional.cross_entropy(logits / 0.9, targets, reduction="none")
    base_p = logits.softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(temperature_loss(slots, temperature, easy_token_fraction=0.0, dft=False), ce.mean())
    torch.testing.assert_close(
        temperature_loss(slots, temperature, easy_token_fraction=0.0, dft=True), (ce * base_p).mean()
    )


def test_easy_token_masking_drops_the_configured_share_of_easy_tokens_reproducibly():
    logits = torch.randn(4000, 30)
    targets = torch.where(torch.rand(4000) < 0.5, logits.argmax(-1), torch.randint(0, 30, (4000,)))
    slots = exact_slots(logits, targets)
    easy = logits.argmax(-1) == targets
    keep = easy_token_mask(slots, 0.6, torch.Generator().manual_seed(5))
    assert keep[~easy].all()
    dropped = (~keep[easy]).float().mean().item()
    assert 0.55 < dropped < 0.65
    again = easy_token_mask(slots, 0.6, torch.Generator().manual_seed(5))
    assert torch.equal(keep, again)
    assert easy_token_mask(slots, 0.0).all()
    assert not easy_token_mask(slots, 1.0)[easy].any()
    with pytest.raises(ValueError, match="easy_token_fraction"):
        easy_token_mask(slots, 1.5)


def test_all_masked_batch_gives_zero_without_nan_and_backpropagates():
    logits = torch.randn(10, 20)
    targets = logits.argmax(-1)  # every token is easy
    slots = exact_slots(logits, targets)
    temperature = torch.full((10,), 1.0, requires_grad=True)
    loss = temperature_loss(slots, temperature, easy_token_fraction=1.0)
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert torch.equal(temperature.grad, torch.zeros(10))
    empty = exact_slots(torch.randn(0, 20), torch.zeros(0, dtype=torch.long))
    t = torch.zeros(0, requires_grad=True)
    p = torch.zeros(0, requires_grad=True)
    assert temperature_loss(empty, t).item() == 0.0
    assert soft_top_p_loss(empty, t, p).item() == 0.0


def test_bad_loss_arguments_are_refused():
    logits, targets = torch.randn(4, 10), torch.tensor([0, 1, 2, 10])
    with pytest.raises(ValueError, match="targets must be token ids"):
        exact_slots(logits, targets)
    with pytest.raises(ValueError, match="top_k"):
        compress_logits(logits, torch.tensor([0, 1, 2, 3]), top_k=20)
    with pytest.raises(ValueError, match="steepness"):
        AutoDecoLossConfig(steepness=0)
    slots = exact_slots(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="steepness"):
        soft_top_p_loss(slots, torch.ones(4), torch.ones(4), steepness=-1)
