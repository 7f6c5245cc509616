"""The steering objective: make the heads obey randomness commands, as small pure functions.

A *group* is one prompt under several command *variants* that all share the same response; the
response is teacher-forced under every variant and the heads' per-token temperature (or top-p) is
read at the response positions. Rows of a batch are variants; ``groups`` says which rows belong
together.

* :func:`pairwise_ranking_loss` orders the variants of a group by their *signed level*
  (:func:`steerdeco.rows.signed_level`: low k -> -k, none -> 0, high k -> +k): for every pair of rows of a group
  with different signed levels, the one with the higher level must predict a value larger by at
  least ``margin`` (a hinge), compared token by token or on sequence means.
* :func:`placebo_loss` pulls placebo variants (commands that say nothing about randomness) toward
  the no-command values of their group.
* :func:`absolute_target_loss` regresses rows with an absolute target (``"temperature 0.3"``, ``"no
  randomness"`` -> 0.0) toward it.
* :func:`relative_target_loss` regresses each commanded row toward its group's no-command values
  shifted by a per-row offset: with log T and the offset ``log(ratio of the row's level)``, "level-2
  low" means "T times 0.4" on every token, whatever the wording. The regression gives graded effects
  of a chosen size and makes every wording of one level predict the same T.

Shapes: ``R`` rows (variants, all groups of a batch flattened), ``N`` response positions (padded;
``mask`` marks the real ones). Every loss is a scalar that is exactly 0 (and still backpropagates)
when it has nothing to compare, never NaN.
"""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("token", "sequence")


def _check(values: torch.Tensor, mask: torch.Tensor, *per_row: torch.Tensor) -> None:
    if values.dim() != 2 or mask.shape != values.shape:
        raise ValueError(f"expected values and mask of shape [R, N], got {tuple(values.shape)} and {tuple(mask.shape)}")
    for tensor in per_row:
        if tensor.shape != values.shape[:1]:
            raise ValueError(f"expected a per-row tensor of shape [{values.shape[0]}], got {tuple(tensor.shape)}")


def _zero(values: torch.Tensor) -> torch.Tensor:
    """An exact 0 connected to ``values`` (so backward works on an empty objective)."""
    return values.sum() * 0.0


def sequence_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[R]`` mean of each row over its masked positions (0 for a row without any)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def _masked_row_mean(per_token: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``per_token [K, N]`` over ``mask [K, N]`` per row, and which rows had any position."""
    weights = mask.to(per_token.dtype)
    count = weights.sum(-1)
    return (per_token * weights).sum(-1) / count.clamp_min(1.0), count > 0


def ranking_pairs(groups: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs ``(lower [K], higher [K])``: rows of one group with ``levels[lower] < levels[higher]``.

    groups ``[R]`` (any integer ids), levels ``[R]`` (float; NaN rows take part in no pair).
    """
    levels = levels.to(torch.float64)
    same = groups.unsqueeze(1) == groups.unsqueeze(0)
    ordered = levels.unsqueeze(1) < levels.unsqueeze(0)  # False whenever a NaN is involved
    lower, higher = torch.nonzero(same & ordered, as_tuple=True)
    return lower, higher


def pairwise_ranking_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor,
    levels: torch.Tensor,
    margin: float = 0.1,
    reduction: str = "token",
) -> torch.Tensor:
    """Hinge loss ordering the rows of each group by level: ``relu(margin - (v_high - v_low))``.

    Args:
        values: ``[R, N]`` per-token predictions (temperature or top-p) along the shared response.
        mask: ``[R, N]`` bool, the real response positions (rows of a group share it).
        groups: ``[R]`` group id of each row.
        levels: ``[R]`` signed level (:func:`steerdeco.rows.signed_level`); NaN rows (placebo) are left out.
        margin: how much larger the higher-level value must be; ``>= 0``.
        reduction: ``"token"`` compares position by position (hinge averaged over the positions of
            the pair), ``"sequence"`` compares the two rows' means.

    Returns:
        Mean over all ordered pairs (every pair of rows of a group with different levels); 0 when
        there is no pair or no position.
    """
    _check(values, mask, groups, levels)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    lower, higher = ranking_pairs(groups, levels)
    if lower.numel() == 0:
        return _zero(values)
    if reduction == "sequence":
        means = sequence_means(values, mask)
        has_tokens = mask.any(-1)
        valid = has_tokens[lower] & has_tokens[higher]
        per_pair = torch.relu(margin - (means[higher] - means[lower]))
    else:
        pair_mask = mask[lower] & mask[higher]
        per_token = torch.relu(margin - (values[higher] - values[lower]))
        per_pair, valid = _masked_row_mean(per_token, pair_mask)
    if not bool(valid.any()):
        return _zero(values)
    return per_pair[valid].mean()


def _group_reference(
    values: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor, is_reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the mean of its group's reference rows ``[R, N]`` and where that mean exists ``[R, N]``."""
    same = (groups.unsqueeze(1) == groups.unsqueeze(0)) & is_reference.unsqueeze(0)  # [R, R'] row -> its references
    weights = same.to(values.dtype).unsqueeze(-1) * mask.unsqueeze(0).to(values.dtype)  # [R, R', N]
    count = weights.sum(1)
    reference = (weights * values.unsqueeze(0)).sum(1) / count.clamp_min(1.0)
    return reference, count > 0


def placebo_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor,
    is_placebo: torch.Tensor,
    is_reference: torch.Tensor,
    reduction: str = "token",
    detach_reference: bool = True,
) -> torch.Tensor:
    """``|v_placebo - v_none|``: placebo rows should predict what the no-command rows predict.

    Args:
        values, mask: ``[R, N]`` as in :func:`pairwise_ranking_loss`.
        groups: ``[R]`` group ids.
        is_placebo: ``[R]`` bool, the rows to pull.
        is_reference: ``[R]`` bool, the no-command rows (several per group are averaged).
        reduction: ``"token"`` (absolute difference per position, averaged) or ``"sequence"``
            (difference of the row means).
        detach_reference: pull the placebo rows only, not the reference toward them.

    Returns:
        Mean over placebo rows that have a reference in their group; 0 if there is none.
    """
    _check(values, mask, groups, is_placebo, is_reference)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    is_placebo, is_reference = is_placebo.bool(), is_reference.bool()
    if not bool(is_placebo.any()) or not bool(is_reference.any()):
        return _zero(values)
    reference, has_reference = _group_reference(values, mask, groups, is_reference)
    if detach_reference:
        reference = reference.detach()
    rows = is_placebo
    if reduction == "sequence":
        ref_mean, ref_valid = _masked_row_mean(reference[rows], has_reference[rows] & mask[rows])
        own = sequence_means(values[rows], mask[rows])
        valid = ref_valid & mask[rows].any(-1)
        per_row = (own - ref_mean).abs()
    else:
        per_row, valid = _masked_row_mean((values[rows] - reference[rows]).abs(), mask[rows] & has_reference[rows])
    if not bool(valid.any()):
        return _zero(values)
    return per_row[valid].mean()


def absolute_target_loss(
    values: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, reduction: str = "token"
) -> torch.Tensor:
    """Squared error to an absolute target, for rows whose command names one.

    Args:
        values, mask: ``[R, N]``.
        targets: ``[R]`` float target per row; NaN where the command has none.
        reduction: ``"token"`` (every position toward the target) or ``"sequence"`` (the row mean).

    Returns:
        Mean over rows with a target and at least one position; 0 if there is none.
    """
    _check(values, mask, targets)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    rows = ~torch.isnan(targets)
    if not bool(rows.any()):
        return _zero(values)
    target = targets[rows].to(values.dtype).unsqueeze(-1)
    if reduction == "sequence":
        per_row = (sequence_means(values[rows], mask[rows]) - target.squeeze(-1)).square()
        valid = mask[rows].any(-1)
    else:
        per_row, valid = _masked_row_mean((values[rows] - target).square(), mask[rows])
    if not bool(valid.any()):
        return _zero(values)
    return per_row[valid].mean()


def relative_target_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor,
    is_reference: torch.Tensor,
    offsets: torch.Tensor,
    reduction: str = "token",
) -> torch.Tensor:
    """``(v - (v_none + offset))^2``: commanded rows sit at a set distance from their group's no-command rows.

    Args:
        values, mask: ``[R, N]`` as in :func:`pairwise_ranking_loss`, already in the space the offsets
            are meant in (e.g. log T, so that an offset is a log ratio).
        groups: ``[R]`` group ids.
        is_reference: ``[R]`` bool, the no-command rows (several per group are averaged); the reference
            is detached, so only the commanded rows move.
        offsets: ``[R]`` float offset per row; NaN for rows without a target (no-command, placebo, ...).
        reduction: ``"token"`` (every position toward its reference position) or ``"sequence"`` (the row
            mean toward the reference mean).

    Returns:
        Mean over rows with an offset, a reference and at least one position; 0 if there is none.
    """
    _check(values, mask, groups, is_reference, offsets)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    rows = ~torch.isnan(offsets)
    is_reference = is_reference.bool()
    if not bool(rows.any()) or not bool(is_reference.any()):
        return _zero(values)
    reference, has_reference = _group_reference(values, mask, groups, is_reference)
    reference = reference.detach()[rows]
    offset = offsets[rows].to(values.dtype).unsqueeze(-1)
    own_mask = mask[rows] & has_reference[rows]
    if reduction == "sequence":
        target, valid = _masked_row_mean(reference, own_mask)
        per_row = (sequence_means(values[rows], own_mask) - (target + offset.squeeze(-1))).square()
    else:
        per_row, valid = _masked_row_mean((values[rows] - (reference + offset)).square(), own_mask)
    if not bool(valid.any()):
        return _zero(values)
    return per_row[valid].mean()


def level_offsets(levels: torch.Tensor, low_offsets, high_offsets) -> torch.Tensor:
    """``[R]`` offset each row's level asks for: low k -> ``low_offsets[k-1]``, high k ->
    ``high_offsets[k-1]``; NaN for no-command, placebo and named rows and for levels beyond the lists.
    For T ratios pass their logs (:func:`level_log_ratios`).

    levels: ``[R]`` signed levels (:func:`steerdeco.rows.signed_level`).
    """
    offsets = torch.full(levels.shape, math.nan, dtype=torch.float32, device=levels.device)
    for sign, values in ((-1, low_offsets), (1, high_offsets)):
        for k, value in enumerate(values, 1):
            offsets[levels == sign * k] = float(value)
    return offsets


def level_log_ratios(levels: torch.Tensor, low_ratios, high_ratios) -> torch.Tensor:
    """``[R]`` log ratio each row's level asks for: low k -> ``log(low_ratios[k-1])``, high k ->
    ``log(high_ratios[k-1])`` (:func:`level_offsets` of the logs)."""
    return level_offsets(levels, [math.log(r) for r in low_ratios], [math.log(r) for r in high_ratios])
