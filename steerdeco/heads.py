"""AutoDeco's temperature and top-p heads (arXiv 2510.26697).

Both are two-layer MLPs on the base model's last hidden state:

* temperature: ``T = max_temperature * sigmoid(MLP(h))``;
* top-p: ``P = sigmoid(MLP([h, T.detach(), features]))`` where ``features`` are four statistics of
  ``softmax(logits / T)`` (see :func:`probability_features`).

With ``context_features`` (:class:`~steerdeco.config.HeadsConfig`) both heads also read the running
mean of the last hidden state over every position up to the current one (:func:`running_context`):
the token's own state says what is being written, the running mean what was asked, so a command
anywhere in the prompt reaches every token's T and P.

With ``context_pooling="prompt_attention"`` the context is instead one vector per reply: a learned
attention pooling (:class:`PromptAttentionPool`) of the prompt's states (of the decoder layer
``context_layer``), computed once from the prompt and given to every token of the reply. A command is
a few tokens of a long prompt: in a mean its trace is small and mixed with what the prompt is about,
while the pooling learns to look at it.

With ``steering_width`` each head also has a *steering path*: an MLP on the layer-normalised context
alone, added to the head's logit. A command then shifts the logit of every token of the reply by the
same amount: for T well below ``max_temperature`` (``sigmoid(z) ~ exp(z)``) that is a multiplier of
the per-token T the AutoDeco path picks, for P a shift in log-odds. With ``steering_levels`` the path
reads the command as one of a few levels (low 3..1, none, high 1..3): its MLP gives per level a logit
and an offset, and the path adds the softmax-weighted offset. The objective's ``steering_level`` term
trains the logits to name each row's level, so a new wording is classified rather than regressed: read
as "very low" with some doubt it still gets most of that level's offset, where an offset regressed
directly comes out near the mean of the levels it might be.

With ``negation_scope`` (and levels) the pooling also splits the prompt into the words a negation governs
and the rest (:mod:`steerdeco.negation`; the negators themselves are left out): each steering path
reads a level from each part, turns the level read inside a negation around (low k <-> high k) and mixes
the two by the pooling's weight inside. "Don't play it safe." then reads as the opposite of "play it
safe", without negated commands to learn from.

With ``named_values`` each head also reads the value a command names ("temperature 0.3", "top-p 90%"):
the prompt's written numbers come in as token features (:mod:`steerdeco.numbers`), and per head a
:class:`NamedValuePath` attends over the number positions (which number is the named one) and gates
it (whether the prompt names this quantity at all; the two gates and "names nothing" share one softmax,
:func:`named_gates`). The head's output is then pulled toward the named value by its gate ``g``:
``log T = (1 - g) log T_steered + g log X`` and ``logit P = (1 - g) logit P_steered + g logit X``. The
gates start closed.

The last layer of each head (and of each steering path) starts at zero weight, so fresh heads predict ``T = max_temperature / 2``
(1.0 by default) and ``P = INITIAL_TOP_P`` for every token: sampling starts as plain sampling at
T = 1, top-p = 0.9.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import row_blocks
from .config import HeadsConfig
from .negation import NegationReader
from .numbers import NUMBER_FEATURES, NumberReader

NUM_PROBABILITY_FEATURES = 4
MIN_TEMPERATURE = 1e-4  # lower clamp on T, so logits / T stays finite
INITIAL_TOP_P = 0.9
#: With named_values the pooled context ends in these four per-reply numbers, after the ``hidden_size`` pooled features.
NAMED_SLOTS = ("temperature_value", "temperature_gate", "top_p_value", "top_p_gate")
#: With negation_scope the context ends in ``2 * hidden_size + 1`` more features per reply (after the named slots):
#: the pooled states outside any negation, the pooled states inside one, and the pooling's weight inside one.
MIRROR_PARTS = ("outside", "inside", "inside_weight")
#: What a named value is clamped to before the head is pulled toward it (None: the head's max_temperature). A named
#: temperature below 0.05 reads as 0.05, which decoding takes as greedy (``decoding.GREEDY_BELOW_TEMPERATURE``).
NAMED_VALUE_RANGE = {"temperature": (0.05, None), "top_p": (0.01, 0.99)}
CLOSED_GATE_BIAS = -8.0  # a fresh gate's logit: sigmoid of it is 3e-4
NO_NUMBER_GATE = -30.0  # the gate's logit on a prompt that writes no number


def probability_features(
    logits: torch.Tensor, temperature: torch.Tensor, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Max prob, entropy, variance and top-5 mass of ``softmax(logits / T)``.

    Args:
        logits: ``[..., V]`` raw logits, or ``[..., M]`` slot values of a compressed distribution
            (:class:`steerdeco.losses.LogitSlots`) whose top-5 entries are single tokens.
        temperature: ``[...]`` temperature per row.
        counts: ``[..., M]`` number of tokens each slot stands for, or None (one token each).

    Returns:
        ``[..., 4]``: (max prob, entropy in nats, variance of the V probabilities, top-5 mass).
    """
    if counts is None:
        return _token_probability_features(logits, temperature)
    scaled = logits / temperature.unsqueeze(-1)
    weighted = scaled if counts is None else scaled + torch.log(counts)
    log_z = torch.logsumexp(weighted, dim=-1)
    p = torch.exp(scaled - log_z.unsqueeze(-1))  # probability of one token of each slot
    mass = p if counts is None else p * counts
    vocab = torch.full_like(log_z, logits.shape[-1]) if counts is None else counts.sum(-1)
    top = torch.exp(scaled.topk(min(5, logits.shape[-1]), dim=-1).values - log_z.unsqueeze(-1))
    entropy = log_z - (mass * scaled).sum(-1)
    variance = (mass * p).sum(-1) / vocab - vocab.reciprocal().square()
    return torch.stack([top[..., 0], entropy, variance, top.sum(-1)], dim=-1)


def _token_probability_features(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """:func:`probability_features` of full logits ``[..., V]`` in fewer passes over the vocabulary.

    The same quantities, rearranged: with ``s = (logits - max) / T``, ``e = exp(s)`` and ``Z = sum(e)``,
    max prob ``= 1 / Z``, entropy ``= log Z - (e . s) / Z``, variance ``= (e . e) / (Z^2 V) - 1 / V^2`` and
    top-5 mass from the five largest logits (one ``topk``, which also gives the max). Decoding computes
    these for every sampled token, so two dot products replace four full-size temporaries. On a CPU
    many rows are worked a few at a time (:func:`steerdeco.blocks.row_blocks`).
    """
    vocab = logits.shape[-1]
    flat, flat_t = logits.reshape(-1, vocab), temperature.reshape(-1)
    blocks = row_blocks(flat)
    if blocks is None:
        features = _token_features_block(flat, flat_t)
    else:
        features = torch.cat([_token_features_block(flat[rows], flat_t[rows]) for rows in blocks])
    return features.reshape(*logits.shape[:-1], 4)


def _token_features_block(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """:func:`_token_probability_features` of logits ``[N, V]`` and temperatures ``[N]``, in one piece."""
    vocab = logits.shape[-1]
    top = logits.topk(min(5, vocab), dim=-1).values
    inverse_t = temperature.reciprocal().unsqueeze(-1)
    shifted = (logits - top[..., :1]).mul_(inverse_t)
    exps = shifted.exp()
    z = exps.sum(-1)
    e_dot_s, e_dot_e = _row_dots(exps, shifted), _row_dots(exps, exps)
    top_mass = ((top - top[..., :1]) * inverse_t).exp().sum(-1) / z
    entropy = z.log() - e_dot_s / z
    variance = e_dot_e / (z.square() * vocab) - 1.0 / vocab**2
    return torch.stack([z.reciprocal(), entropy, variance, top_mass], dim=-1)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[..., V]`` tensors; a few rows (a decoding step) go through ``torch.dot``,
    which reads both once and allocates nothing."""
    rows_a, rows_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if rows_a.shape[0] > 16:
        return (a * b).sum(-1)
    return torch.stack([torch.dot(x, y) for x, y in zip(rows_a, rows_b, strict=True)]).reshape(a.shape[:-1])


def running_context(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Running mean of ``hidden`` over the real positions up to and including each position.

    Args:
        hidden: ``[B, L, H]`` last hidden states of ``L`` consecutive positions.
        attention_mask: ``[B, L]``, 0 on padding (left or right), which is left out of the mean; None: all real.
        state: ``(sum [B, H], count [B])`` of the positions before these (generation step by step); None: none.

    Returns:
        ``(context [B, L, H] float32, state after the last position)``. A padding position gets the
        mean of the real positions before it (0 when there is none).
    """
    weights = hidden.new_ones(hidden.shape[:2]) if attention_mask is None else attention_mask
    weights = weights.float().unsqueeze(-1)
    sums = (hidden.float() * weights).cumsum(1)
    counts = weights.cumsum(1)
    if state is not None:
        sums = sums + state[0].unsqueeze(1)
        counts = counts + state[1].reshape(-1, 1, 1)
    context = sums / counts.clamp_min(1.0)
    return context, (sums[:, -1], counts[:, -1, 0])


def _head_input(hidden: torch.Tensor, context: torch.Tensor | None, use_context: bool) -> torch.Tensor:
    if not use_context:
        return hidden
    if context is None:
        raise ValueError(
            "these heads were configured with context_features=True and need the running context "
            "(steerdeco.heads.running_context of the last hidden states); got none"
        )
    return torch.cat([hidden, context.to(hidden.dtype)], dim=-1)


class PromptAttentionPool(nn.Module):
    """``softmax(score(LN(h))) . LN(h)`` over the prompt: states ``[B, P, H]``, mask ``[B, P]`` -> ``[B, H]``.

    ``score`` is a two-layer MLP whose last layer starts at zero, so fresh pooling is the mean of the
    layer-normalised prompt states. Rows without any prompt position pool to zeros. ``dropout``: in
    training mode each feature of the normalised states is zeroed with this probability (and the rest
    scaled up) before scoring and pooling.
    """

    def __init__(self, hidden_size: int, width: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)

    def normalize(self, states: torch.Tensor) -> torch.Tensor:
        """``LN(h)`` in the pool's dtype, before any dropout (what :class:`NamedValuePath` reads too)."""
        return self.norm(states.to(self.score[0].weight.dtype))

    def forward(self, states: torch.Tensor, mask: torch.Tensor, normed: torch.Tensor | None = None,
                inside: torch.Tensor | None = None) -> torch.Tensor:
        """``normed``: :meth:`normalize` of ``states`` when the caller has it already. ``inside [B, P]`` (bool):
        positions inside a negation (:mod:`steerdeco.negation`); then ``[B, 2H + 1]``: the pooled states of the
        positions outside and of those inside, each renormalised to a weighted mean, and the weight inside."""
        normed = self.dropout(self.normalize(states) if normed is None else normed)
        keep = mask.bool()
        scores = self.score(normed).squeeze(-1).masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an all-masked row: zeros
        if inside is None:
            return torch.einsum("bp,bph->bh", weights, normed)
        inside_weights = weights * inside.to(weights.dtype)
        outside_weights = weights - inside_weights
        weight = inside_weights.sum(-1, keepdim=True)
        outside = torch.einsum("bp,bph->bh", outside_weights, normed) / (1 - weight).clamp_min(1e-6)
        inside_mean = torch.einsum("bp,bph->bh", inside_weights, normed) / weight.clamp_min(1e-6)
        return torch.cat([outside, inside_mean, weight], dim=-1)


class NamedValuePath(nn.Module):
    """The value a prompt names for one quantity and how sure the heads are that it names one.

    ``(normed states [B, P, H], mask [B, P], numbers [B, P, NUMBER_FEATURES], pooled [B, H]) -> (value [B],
    gate logit [B])``: an attention over the positions that write a number (scored from their normalised
    state and number features) picks the named number, ``value`` is its value; the gate, an MLP on the
    reply's pooled context and the picked number's state, says whether the prompt names a value for
    this quantity. A prompt that writes no number names none: its gate logit is ``NO_NUMBER_GATE``. The
    gate's last layer starts at zero weight and ``CLOSED_GATE_BIAS``: fresh paths leave the heads as they
    would be without them.
    """

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden_size + NUMBER_FEATURES, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)
        self.gate = nn.Sequential(nn.Linear(2 * hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.constant_(self.gate[-1].bias, CLOSED_GATE_BIAS)

    def forward(self, normed: torch.Tensor, mask: torch.Tensor, numbers: torch.Tensor, pooled: torch.Tensor):
        numbers = numbers.to(normed.dtype)
        written = mask.bool() & (numbers[..., 0] > 0)
        scores = normed.new_full(written.shape, float("-inf"))  # scored at the few positions that write a number
        scores[written] = self.score(torch.cat([normed[written], numbers[written]], dim=-1)).squeeze(-1)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a prompt without a number: zeros
        value = (weights * numbers[..., 1]).sum(-1)
        rows = written.nonzero()[:, 0]  # the picked number's state, summed over the few number positions
        picked = normed.new_zeros(normed.shape[0], normed.shape[-1]).index_add(
            0, rows, weights[written].unsqueeze(-1) * normed[written])
        gate = self.gate(torch.cat([pooled, picked], dim=-1)).squeeze(-1)
        return value, gate.masked_fill(~written.any(-1), NO_NUMBER_GATE)


def named_gate_logits(named: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` logits that a prompt names no value, a temperature, a top-p: (0, the temperature gate's
    logit, the top-p gate's logit) of the :data:`NAMED_SLOTS` ``named [..., 4]``."""
    return torch.stack([torch.zeros_like(named[..., 1]), named[..., 1], named[..., 3]], dim=-1)


def named_gates(named: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` probabilities of :func:`named_gate_logits`: one prompt names at most one of them, so the two
    gates compete."""
    return torch.softmax(named_gate_logits(named), dim=-1)


def _toward_named(value: torch.Tensor, named: torch.Tensor | None, quantity: str, upper: float) -> torch.Tensor:
    """``value`` (a head's logit space: log T or logit P) pulled toward the named value by the head's gate."""
    if named is None:
        return value
    index = 0 if quantity == "temperature" else 2
    low, high = NAMED_VALUE_RANGE[quantity]
    target = named[..., index].clamp(low, high if high is not None else upper)
    target = target.log() if quantity == "temperature" else torch.logit(target)
    gate = named_gates(named)[..., 1 if quantity == "temperature" else 2]
    return (1 - gate) * value + gate * target


class SteeringPath(nn.Module):
    """``MLP(LayerNorm(context))``: a logit offset from the context alone; ``[..., H] -> [...]``, zero at init.

    With ``levels`` N > 0 the MLP gives, per level (low N..1, none, high 1..N), a logit (:meth:`level_logits`)
    and an offset; the path's offset is the softmax-weighted mean of the ``2N + 1`` offsets."""

    def __init__(self, hidden_size: int, width: int, linear: bool = False, levels: int = 0):
        super().__init__()
        self.levels = 2 * levels + 1 if levels else 0
        outputs = 2 * self.levels if levels else 1
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        layers = [nn.Linear(hidden_size, outputs)] if linear else [nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, outputs)]
        self.mlp = nn.Sequential(*layers)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def _outputs(self, context: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(context.to(self.mlp[0].weight.dtype)))

    def _mirrored(self, mirror: torch.Tensor) -> torch.Tensor:
        """``[..., 2N + 1]`` level probabilities of a context read with its negations (``mirror [..., 2H + 1]``,
        :data:`MIRROR_PARTS`): the words outside any negation read as they are, those inside one with their
        levels turned around (low k <-> high k), mixed by the pooling's weight inside."""
        hidden = (mirror.shape[-1] - 1) // 2
        outside, inside, weight = mirror[..., :hidden], mirror[..., hidden:-1], mirror[..., -1:]
        weight = weight.to(self.mlp[0].weight.dtype)
        read = self._outputs(outside)[..., : self.levels].softmax(-1)
        turned = self._outputs(inside)[..., : self.levels].softmax(-1).flip(-1)
        return (1 - weight) * read + weight * turned

    def level_logits(self, context: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., 2N + 1]`` the level logits of a path with ``levels`` (with ``mirror``: log-probabilities)."""
        if not self.levels:
            raise ValueError("this steering path reads no levels (steering_levels=0)")
        if mirror is not None:
            return self._mirrored(mirror).clamp_min(1e-12).log()
        return self._outputs(context)[..., : self.levels]

    def forward(self, context: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
        out = self._outputs(context)
        if not self.levels:
            return out.squeeze(-1)
        logits, offsets = out.split(self.levels, dim=-1)
        probabilities = logits.softmax(-1) if mirror is None else self._mirrored(mirror)
        return (probabilities * offsets).sum(-1)


def level_classes(signed_levels: torch.Tensor, levels: int) -> torch.Tensor:
    """Each row's class among a steering path's ``2 * levels + 1`` levels, from its signed level (low k -> -k,
    high k -> +k, :func:`steerdeco.rows.signed_level`): ``levels + k`` with k capped at ``levels``; a NaN level (a
    placebo, a command naming a value) and no command are ``levels``, "none"."""
    return (signed_levels.nan_to_num(0.0).clamp(-levels, levels) + levels).long()


def _per_token(values: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """Per-reply ``values [R, ...]`` given to each token (``rows [K]``: each token's reply); as they are without rows."""
    return values if values is None or rows is None else values[rows]


def _steering_path(config: HeadsConfig) -> SteeringPath | None:
    if not config.steering_width:
        return None
    return SteeringPath(config.hidden_size, config.steering_width, linear=config.steering_linear, levels=config.steering_levels)


class TemperatureHead(nn.Module):
    """``T = max_temperature * sigmoid(MLP(h))``; input ``[..., H]`` (and context ``[..., H]``), output ``[...]``."""

    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.max_temperature = float(config.max_temperature)
        self.use_context = bool(config.context_features) and config.context_in_mlp
        inputs = config.hidden_size * (2 if self.use_context else 1)
        self.dropout = nn.Dropout(config.mlp_dropout)  # the token's state only; no parameters
        self.mlp = nn.Sequential(nn.Linear(inputs, config.mlp_width), nn.GELU(), nn.Linear(config.mlp_width, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.steering = _steering_path(config)
        self.named = NamedValuePath(config.hidden_size, config.pool_width) if config.named_values else None

    def forward(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor | None = None,
        named: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        mirror: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logit = self.mlp(_head_input(self.dropout(hidden), _per_token(context, rows), self.use_context)).squeeze(-1)
        if self.steering is not None:
            logit = logit + _per_token(self.steering(context, mirror), rows)
        named = _per_token(named, rows)
        if named is None:
            return (self.max_temperature * torch.sigmoid(logit)).clamp_min(MIN_TEMPERATURE)
        log_t = math.log(self.max_temperature) + F.logsigmoid(logit)
        return _toward_named(log_t, named, "temperature", self.max_temperature).exp().clamp_min(MIN_TEMPERATURE)


class TopPHead(nn.Module):
    """``P = sigmoid(MLP([h, (context,) T, features]))``; T is detached by the caller's contract."""

    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.use_features = bool(config.top_p_features)
        self.use_context = bool(config.context_features) and config.context_in_mlp
        extra = 1 + (NUM_PROBABILITY_FEATURES if self.use_features else 0)
        inputs = config.hidden_size * (2 if self.use_context else 1) + extra
        self.dropout = nn.Dropout(config.mlp_dropout)
        self.mlp = nn.Sequential(nn.Linear(inputs, config.mlp_width), nn.GELU(), nn.Linear(config.mlp_width, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.constant_(self.mlp[-1].bias, math.log(INITIAL_TOP_P / (1 - INITIAL_TOP_P)))
        self.steering = _steering_path(config)
        self.named = NamedValuePath(config.hidden_size, config.pool_width) if config.named_values else None

    def forward(
        self,
        hidden: torch.Tensor,
        temperature: torch.Tensor,
        features: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        named: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        mirror: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = [_head_input(self.dropout(hidden), _per_token(context, rows), self.use_context), temperature.detach().unsqueeze(-1)]
        if self.use_features:
            if features is None:
                raise ValueError("this top-p head was configured with top_p_features=True but got no features")
            parts.append(features.detach())
        logit = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
        if self.steering is not None:
            logit = logit + _per_token(self.steering(context, mirror), rows)
        return torch.sigmoid(_toward_named(logit, _per_token(named, rows), "top_p", 1.0))


class AutoDecoHeads(nn.Module):
    """Both heads together: ``(hidden [..., H], logits-or-slots [..., M]) -> (T [...], P [...])``.

    ``context [..., H]`` is required when the config has ``context_features``: :func:`running_context`,
    or with ``prompt_attention`` the reply's :meth:`pool_prompt` repeated for each of its tokens.
    The heads standardise a running context per dimension, ``(context - context_shift) / context_scale``, with buffers
    saved alongside the weights: a decoder's mean state has a few dimensions hundreds of times larger
    than the rest, where a command's trace is small, and an MLP learns slowly on such inputs.
    :meth:`fit_context_normalization` sets them from data (the trainer does, before training); fresh
    heads leave the context as it is.
    """

    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.config = config
        self.temperature_head = TemperatureHead(config)
        self.top_p_head = TopPHead(config)
        self.standardize_context = bool(config.context_features) and config.context_pooling == "running_mean"
        if self.standardize_context:
            self.register_buffer("context_shift", torch.zeros(config.hidden_size))
            self.register_buffer("context_scale", torch.ones(config.hidden_size))
        self.prompt_pool = (
            PromptAttentionPool(config.hidden_size, config.pool_width, config.pool_dropout)
            if config.context_features and config.context_pooling == "prompt_attention"
            else None
        )
        self.number_reader = NumberReader(config.number_tokens) if config.named_values and config.number_tokens else None
        self.negation_reader = (NegationReader(config.negation_tokens)
                                if config.negation_scope and config.negation_tokens else None)

    @property
    def named_paths(self) -> dict[str, NamedValuePath] | None:
        """``{"temperature": path, "top_p": path}`` of heads with ``named_values`` (each head holds its own), else None."""
        if not self.config.named_values:
            return None
        return {"temperature": self.temperature_head.named, "top_p": self.top_p_head.named}

    @property
    def reads_prompt_ids(self) -> bool:
        """Whether :meth:`pool_prompt` reads the prompt's token ids (named values, negation scopes)."""
        return bool(self.config.named_values or self.config.negation_scope)

    def pool_prompt(self, states: torch.Tensor, mask: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The context of heads with ``prompt_attention``: prompt states ``[B, P, H]``, mask ``[B, P]`` -> ``[B, H]``.

        With ``named_values`` the prompt's token ids ``input_ids [B, P]`` are read too and the context is
        ``[B, H + 4]``: the pooled states, then the :data:`NAMED_SLOTS` (each head's named value and gate logit).
        With ``negation_scope`` the ids are read for negations and ``2H + 1`` features follow (:data:`MIRROR_PARTS`;
        the pooling leaves the negators out).
        """
        if self.prompt_pool is None:
            raise ValueError("these heads do not pool the prompt (context_pooling is not 'prompt_attention')")
        if self.reads_prompt_ids and (input_ids is None or input_ids.shape != mask.shape):
            got = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"heads with named_values or negation_scope read the prompt's token ids: need input_ids "
                             f"{tuple(mask.shape)}, got {got}")
        normed = self.prompt_pool.normalize(states)
        mirror = None
        if self.config.negation_scope:
            if self.negation_reader is None:
                raise ValueError("these heads read negations but their config has no negation_tokens table "
                                 "(steerdeco.negation.negation_token_table of the base model's tokenizer)")
            negators, inside = (flags.to(mask.device) for flags in self.negation_reader(input_ids, mask))
            mirror = self.prompt_pool(states, mask.bool() & ~negators, normed, inside)
            hidden = self.config.hidden_size
            weight = mirror[:, -1:]
            pooled = (1 - weight) * mirror[:, :hidden] + weight * mirror[:, hidden:-1]  # every word, as one pooling
        else:
            pooled = self.prompt_pool(states, mask, normed)
        parts = [pooled]
        if self.named_paths is not None:
            if self.number_reader is None:
                raise ValueError("these heads read named values but their config has no number_tokens table "
                                 "(steerdeco.numbers.number_token_table of the base model's tokenizer)")
            numbers = self.number_reader(input_ids, mask).to(pooled.device)
            paths = self.named_paths
            parts.append(torch.stack([part for quantity in ("temperature", "top_p")
                                      for part in paths[quantity](normed, mask, numbers, pooled)], dim=-1))
        if mirror is not None:
            parts.append(mirror)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else pooled

    def split_context(
        self, context: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(pooled [..., H], named [..., 4] or None, mirror [..., 2H + 1] or None)`` of a context from
        :meth:`pool_prompt` (the context as it is, and Nones, for heads that pool no prompt)."""
        if context is None or self.prompt_pool is None:
            return context, None, None
        hidden = self.config.hidden_size
        named, end = None, hidden
        if self.named_paths is not None:
            named, end = context[..., hidden : hidden + len(NAMED_SLOTS)], hidden + len(NAMED_SLOTS)
        mirror = context[..., end:] if self.config.negation_scope else None
        return context[..., :hidden], named, mirror

    def split_named(self, context: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(pooled [..., H], named [..., 4] or None)`` of a context from :meth:`pool_prompt`."""
        pooled, named, _ = self.split_context(context)
        return pooled, named

    def level_logits(self, context: torch.Tensor) -> torch.Tensor:
        """``[R, 2, 2N + 1]`` each reply's level logits of the temperature and the top-p steering path, from
        the pooled context ``[R, C]`` of :meth:`pool_prompt` (heads with ``steering_levels`` N > 0)."""
        if not self.config.steering_levels:
            raise ValueError("level_logits needs heads with steering_levels > 0")
        context, _, mirror = self.split_context(context)
        return torch.stack([self.temperature_head.steering.level_logits(context, mirror),
                            self.top_p_head.steering.level_logits(context, mirror)], dim=-2)

    @torch.no_grad()
    def fit_context_normalization(self, contexts: torch.Tensor, min_scale: float = 1e-3) -> None:
        """Set the context standardisation to the per-dimension mean and standard deviation of ``contexts [K, H]``."""
        if not self.standardize_context:
            raise ValueError("these heads standardise no context (context_features=False, or a pooled prompt context)")
        contexts = contexts.reshape(-1, self.config.hidden_size).float()
        if contexts.shape[0] < 2:
            raise ValueError(f"need at least 2 context vectors to fit the normalisation, got {contexts.shape[0]}")
        self.context_shift.copy_(contexts.mean(0))
        self.context_scale.copy_(contexts.std(0).clamp_min(min_scale))

    def forward(
        self,
        hidden: torch.Tensor,
        logits: torch.Tensor | None,
        counts: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows [...]``: with a context of one vector per reply (``[R, C]``, :meth:`pool_prompt`), each
        token's reply; the steering paths then run once per reply instead of once per token. None: the
        context is per token (``[..., C]``)."""
        hidden = hidden.to(self.temperature_head.mlp[0].weight.dtype)  # _head_input casts the context to it
        if context is not None and self.standardize_context:
            context = (context.to(self.context_shift.dtype) - self.context_shift) / self.context_scale
        context, named, mirror = self.split_context(context)
        temperature = self.temperature_head(hidden, context, named, rows, mirror)
        features = None
        if self.top_p_head.use_features:
            if logits is None:
                raise ValueError("top_p_features=True needs the logits (or logit slots) to compute features")
            with torch.no_grad():
                features = probability_features(
                    logits.float(), temperature.detach().float(), None if counts is None else counts.float()
                ).to(hidden.dtype)
        top_p = self.top_p_head(hidden, temperature.detach(), features, context, named, rows, mirror)
        return temperature, top_p
