"""AutoDeco's training losses, as small pure functions.

Both losses work on a :class:`LogitSlots` view of the next-token distribution: a row of *slots*,
each with a logit value and the number of vocabulary tokens it stands for. The exact view
(:func:`exact_slots`) has one slot per token, sorted by logit. The compressed view
(:func:`compress_logits`) keeps the top-k tokens exactly and summarises the tail in a few bins, so a
cache of the frozen backbone's outputs stays small (about k + 2 * bins floats a token instead of the
vocabulary size); ``tests/test_losses.py`` checks that both views give the same losses.

Shapes: ``N`` positions (flattened batch x time), ``V`` vocabulary, ``M`` slots.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .blocks import row_blocks
from .heads import MIN_TEMPERATURE

IGNORE_INDEX = -100


@dataclass
class LogitSlots:
    """A next-token distribution as sorted slots (descending value).

    Attributes:
        values: ``[N, M]`` logit of each slot (for a bin: the log-mean-exp of its tokens' logits, exact
            at T = 1).
        counts: ``[N, M]`` tokens per slot, or None when every slot is one token.
        target_value: ``[N]`` logit of the target token.
        target_slot: ``[N]`` index of the slot holding the target.
    """

    values: torch.Tensor
    counts: torch.Tensor | None
    target_value: torch.Tensor
    target_slot: torch.Tensor

    def __len__(self) -> int:
        return self.values.shape[0]

    def select(self, index: torch.Tensor) -> LogitSlots:
        """Rows ``index`` (a bool mask or index tensor)."""
        return LogitSlots(
            self.values[index],
            None if self.counts is None else self.counts[index],
            self.target_value[index],
            self.target_slot[index],
        )

    def to(self, device: torch.device | str) -> LogitSlots:
        """The same slots on ``device``."""
        return LogitSlots(
            self.values.to(device),
            None if self.counts is None else self.counts.to(device),
            self.target_value.to(device),
            self.target_slot.to(device),
        )


def _check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"expected logits [N, V] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError("targets must be token ids in [0, V); drop ignore_index positions first")


def exact_slots(logits: torch.Tensor, targets: torch.Tensor) -> LogitSlots:
    """One slot per token, sorted by logit. logits ``[N, V]``, targets ``[N]`` (valid ids only)."""
    _check_targets(logits, targets)
    logits = logits.float()
    values, order = logits.sort(dim=-1, descending=True)
    target_slot = (order == targets.unsqueeze(-1)).int().argmax(dim=-1)
    target_value = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return LogitSlots(values, None, target_value, target_slot)


def compress_logits(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 256, num_bins: int = 64) -> LogitSlots:
    """Top-``top_k`` tokens exactly plus the tail in ``num_bins`` equal-width logit bins.

    Each bin keeps its token count and the log-mean-exp of its logits, so the partition function is
    exact at T = 1 and close elsewhere. logits ``[N, V]``, targets ``[N]``; returns ``M = top_k + num_bins``
    slots (empty bins have count 0).
    """
    _check_targets(logits, targets)
    vocab = logits.shape[1]
    if not 5 <= top_k < vocab:
        raise ValueError(f"top_k must be in [5, vocab size {vocab}), got {top_k}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    blocks = row_blocks(logits)
    if blocks is None:
        return _compress_block(logits, targets, top_k, num_bins)
    parts = [_compress_block(logits[rows], targets[rows], top_k, num_bins) for rows in blocks]
    return LogitSlots(*(torch.cat([getattr(p, field.name) for p in parts]) for field in fields(LogitSlots)))


def _compress_block(logits: torch.Tensor, targets: torch.Tensor, top_k: int, num_bins: int) -> LogitSlots:
    """:func:`compress_logits` of one block of rows (checked there)."""
    logits = logits.float()
    top_values, top_index = logits.topk(top_k, dim=-1)
    in_top = top_index == targets.unsqueeze(-1)
    # Bins over the whole vocabulary, then the top-k taken back out of the highest bin: every top-k
    # logit is >= the k-th value ``high``, so it lands in the last bin and, clamped to ``high``,
    # adds exactly 1 to that bin's count and to its sum of exp(logit - high). Fewer passes over
    # the [N, V] logits than masking the tail first.
    low = logits.min(dim=-1, keepdim=True).values  # the minimum of the tail (top_k < vocab)
    high = top_values[:, -1:]  # every tail logit is <= the k-th value
    width = (high - low).clamp_min(1e-6) / num_bins

    def bin_of(x: torch.Tensor) -> torch.Tensor:
        # floor((x - low) / width) clamped to the bins; after the clamp every value is >= 0, where the
        # integer conversion's truncation is the floor. In place: the [N, V] passes dominate the cost.
        return (x - low).div_(width).clamp_(0, num_bins - 1).long()

    bins = bin_of(logits)
    counts = torch.zeros(logits.shape[0], num_bins, device=logits.device)
    counts.scatter_add_(-1, bins, torch.ones(1, device=logits.device).expand_as(logits))
    sums = torch.zeros(logits.shape[0], num_bins, device=logits.device)
    sums.scatter_add_(-1, bins, (logits - high).clamp_(max=0.0).exp_())  # exp(min(logit, high) - high): stable
    counts[:, -1] -= top_k
    sums[:, -1] -= top_k
    sums.clamp_min_(0.0)
    bin_values = torch.where(counts > 0, (sums / counts.clamp_min(1)).clamp_min(1e-38).log() + high, low)
    # descending order: highest bin first
    bin_values, counts = bin_values.flip(-1), counts.flip(-1)
    values = torch.cat([top_values, bin_values], dim=-1)
    all_counts = torch.cat([torch.ones_like(top_values), counts], dim=-1)
    target_value = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    tail_slot = top_k + (num_bins - 1 - bin_of(target_value.unsqueeze(-1)).squeeze(-1))
    target_slot = torch.where(in_top.any(-1), in_top.int().argmax(-1), tail_slot)
    return LogitSlots(values, all_counts, target_value, target_slot)


def _log_z(slots: LogitSlots, temperature: torch.Tensor) -> torch.Tensor:
    scaled = slots.values / temperature.unsqueeze(-1)
    if slots.counts is not None:
        scaled = scaled + torch.log(slots.counts)
    return torch.logsumexp(scaled, dim=-1)


def base_target_prob(slots: LogitSlots) -> torch.Tensor:
    """``[N]`` probability of the target under the base distribution (T = 1), detached."""
    with torch.no_grad():
        return (slots.target_value - _log_z(slots, torch.ones_like(slots.target_value))).exp()


def easy_token_mask(slots: LogitSlots, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[N]`` bool keep-mask: drop ``fraction`` of the positions whose base argmax is the target.

    The draws come from ``generator`` on its own device (the trainer's is a CPU one, so a seed drops
    the same tokens on any device); without one, from torch's CPU default.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"easy_token_fraction must be in [0, 1], got {fraction}")
    easy = slots.target_slot == 0
    if slots.counts is not None:
        easy &= slots.counts[:, 0] == 1
    if fraction == 0.0:
        return torch.ones_like(easy)
    device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.rand(easy.shape, generator=generator, device=device).to(easy.device)
    return ~(easy & (draws < fraction))


def _reduce(per_token: torch.Tensor, keep: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean over kept positions; an all-masked batch gives an exact 0 that still backpropagates."""
    if not bool(keep.any()):
        return anchor.sum() * 0.0
    return per_token[keep].sum() / keep.sum()


def temperature_loss(
    slots: LogitSlots,
    temperature: torch.Tensor,
    *,
    easy_token_fraction: float = 0.6,
    dft: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``logits / T`` against the target, averaged over kept positions.

    Args:
        slots: ``N`` valid positions (see :func:`exact_slots`; drop ``ignore_index`` rows first, or use
            :func:`autodeco_losses`).
        temperature: ``[N]`` predicted temperature (gradients flow into it).
        easy_token_fraction: share of easy positions (base argmax == target) dropped at random.
        dft: multiply each position's loss by the detached base probability of its target.
        generator: random source for the easy-token draw (seeded for reproducibility).

    Returns:
        A scalar; exactly 0 (without NaN) when no position is kept.
    """
    keep = easy_token_mask(slots, easy_token_fraction, generator)
    temperature = temperature.clamp_min(MIN_TEMPERATURE)
    nll = _log_z(slots, temperature) - slots.target_value / temperature
    if dft:
        nll = nll * base_target_prob(slots)
    return _reduce(nll, keep, temperature)


def soft_top_p_log_mask(slots: LogitSlots, temperature: torch.Tensor, top_p: torch.Tensor, steepness: float):
    """``[N, M]`` log of the soft nucleus mask ``exp(-steepness * relu(c - P))`` per slot.

    ``c`` is the probability mass of the slots *before* each slot (exclusive cumulative sum in
    descending order), so the mask is exactly 1 inside the nucleus, the token that crosses ``P`` is
    kept like in transformers' ``TopPLogitsWarper``, and the mask tends to that warper's hard mask as
    ``steepness`` grows. Also returns the per-slot log mass.
    """
    log_z = _log_z(slots, temperature)
    log_mass = slots.values / temperature.unsqueeze(-1) - log_z.unsqueeze(-1)
    if slots.counts is not None:
        log_mass = log_mass + torch.log(slots.counts)
    mass = log_mass.exp()
    before = mass.cumsum(-1) - mass
    log_mask = -steepness * torch.relu(before - top_p.unsqueeze(-1))
    return log_mask, log_mass


def soft_top_p_loss(
    slots: LogitSlots,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    *,
    steepness: float = 30.0,
    dft: bool = True,
) -> torch.Tensor:
    """NLL of the target under the soft-top-p-filtered, renormalised ``softmax(logits / T)``.

    Args:
        slots: ``N`` valid positions, sorted descending (both :func:`exact_slots` and
            :func:`compress_logits` are).
        temperature: ``[N]``, detached here: this loss trains the top-p head only.
        top_p: ``[N]`` predicted top-p (gradients flow into it).
        steepness: sharpness of the soft mask (30 in AutoDeco).
        dft: weight each position by the detached base probability of its target.
    """
    if steepness <= 0:
        raise ValueError(f"steepness must be > 0, got {steepness}")
    temperature = temperature.detach().clamp_min(MIN_TEMPERATURE)
    log_mask, log_mass = soft_top_p_log_mask(slots, temperature, top_p, steepness)
    log_z = _log_z(slots, temperature)
    target_log_p = slots.target_value / temperature - log_z
    target_log_mask = log_mask.gather(-1, slots.target_slot.unsqueeze(-1)).squeeze(-1)
    nll = torch.logsumexp(log_mass + log_mask, dim=-1) - target_log_p - target_log_mask
    if dft:
        nll = nll * base_target_prob(slots)
    keep = torch.ones_like(nll, dtype=torch.bool)
    return _reduce(nll, keep, top_p)


@dataclass
class AutoDecoLossConfig:
    """Hyper-parameters of the AutoDeco objective."""

    easy_token_fraction: float = 0.6
    dft: bool = True
    steepness: float = 30.0
    temperature_weight: float = 1.0
    top_p_weight: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.easy_token_fraction <= 1.0:
            raise ValueError(f"easy_token_fraction must be in [0, 1], got {self.easy_token_fraction}")
        if self.steepness <= 0:
            raise ValueError(f"steepness must be > 0, got {self.steepness}")
        if self.temperature_weight < 0 or self.top_p_weight < 0:
            raise ValueError("loss weights must be >= 0")


def next_token_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """From HF-style ``labels [B, L]`` (aligned with the inputs) to ``(targets [B, L-1], valid [B, L-1])``.

    Position ``t`` predicts ``labels[:, t + 1]``; the last position has no target.
    """
    targets = labels[:, 1:]
    valid = targets != ignore_index
    return targets, valid


def autodeco_losses(
    slots: LogitSlots,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    config: AutoDecoLossConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both AutoDeco losses for ``N`` valid positions: ``(temperature_loss, top_p_loss)``.

    temperature ``[N]`` and top_p ``[N]`` are the heads' predictions at those positions.
    """
    config = config or AutoDecoLossConfig()
    t_loss = temperature_loss(
        slots, temperature, easy_token_fraction=config.easy_token_fraction, dft=config.dft, generator=generator
    )
    p_loss = soft_top_p_loss(slots, temperature, top_p, steepness=config.steepness, dft=config.dft)
    return t_loss, p_loss
