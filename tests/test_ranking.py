import math

import pytest
import torch

from steerdeco.ranking import (
    absolute_target_loss,
    level_log_ratios,
    level_offsets,
    pairwise_ranking_loss,
    placebo_loss,
    ranking_pairs,
    relative_target_loss,
    sequence_means,
)

NAN = math.nan


def rows(*per_row_values, length=None):
    """values [R, N] from lists (padded with 0) and the matching mask."""
    length = length or max(len(v) for v in per_row_values)
    values = torch.zeros(len(per_row_values), length)
    mask = torch.zeros(len(per_row_values), length, dtype=torch.bool)
    for i, v in enumerate(per_row_values):
        values[i, : len(v)] = torch.tensor(v, dtype=torch.float32)
        mask[i, : len(v)] = True
    return values.requires_grad_(True), mask


def test_every_pair_of_different_levels_in_a_group_is_a_constraint():
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    levels = torch.tensor([0.0, -1.0, -2.0, 1.0, NAN, 0.0, 0.0])
    lower, higher = ranking_pairs(groups, levels)
    pairs = set(zip(lower.tolist(), higher.tolist(), strict=True))
    # group 0: four ranked rows -> 6 pairs; the placebo (NaN) and equal levels of group 1 give none
    assert pairs == {(1, 0), (2, 0), (0, 3), (2, 1), (1, 3), (2, 3)}


# -- ranking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_ranking_is_zero_when_the_order_holds_with_the_margin(reduction):
    # low < none < high with gaps of 0.3 at every position, margin 0.2
    values, mask = rows([0.4, 0.5], [0.7, 0.8], [1.0, 1.1])
    groups, levels = torch.tensor([0, 0, 0]), torch.tensor([-1.0, 0.0, 1.0])
    loss = pairwise_ranking_loss(values, mask, groups, levels, margin=0.2, reduction=reduction)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(values.grad) == 0


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_ranking_violation_gives_a_positive_loss_and_gradients_of_the_right_sign(reduction):
    # high predicts less than low: the loss must push high up and low down
    values, mask = rows([1.0, 1.0], [0.5, 0.5])
    groups, levels = torch.tensor([3, 3]), torch.tensor([-2.0, 1.0])
    loss = pairwise_ranking_loss(values, mask, groups, levels, margin=0.1, reduction=reduction)
    assert loss.item() == pytest.approx(0.6)
    loss.backward()
    assert (values.grad[0] > 0).all()  # gradient descent lowers the low variant
    assert (values.grad[1] < 0).all()  # and raises the high one


def test_ranking_margin_is_required_not_just_the_order():
    values, mask = rows([0.50], [0.55])
    groups, levels = torch.tensor([0, 0]), torch.tensor([0.0, 1.0])
    assert pairwise_ranking_loss(values, mask, groups, levels, margin=0.0).item() == 0.0
    assert pairwise_ranking_loss(values, mask, groups, levels, margin=0.1).item() == pytest.approx(0.05, abs=1e-6)


def test_ranking_per_token_sees_what_the_sequence_mean_hides():
    # the means are ordered (0.55 < 0.75) but the second position is not
    values, mask = rows([0.1, 1.0], [1.0, 0.5])
    groups, levels = torch.tensor([0, 0]), torch.tensor([-1.0, 0.0])
    assert pairwise_ranking_loss(values, mask, groups, levels, margin=0.0, reduction="sequence").item() == 0.0
    assert pairwise_ranking_loss(values, mask, groups, levels, margin=0.0, reduction="token").item() > 0.0


def test_ranking_ignores_padding_and_other_groups():
    # row 1 is the high variant of group 0 but would be violated on the padded position only
    values, mask = rows([0.5, 0.5, 0.5], [0.9, 0.9], [5.0], [0.0])
    values.data[1, 2] = -10.0  # padding: must not count
    groups, levels = torch.tensor([0, 0, 1, 2]), torch.tensor([0.0, 1.0, -1.0, 1.0])
    # rows 2 and 3 are ordered wrongly but live in different groups
    assert pairwise_ranking_loss(values, mask, groups, levels, margin=0.1).item() == 0.0


def test_graded_levels_are_ordered_by_intensity():
    # low-1 and low-3 swapped: only the graded pair is violated
    values, mask = rows([0.3], [0.6], [1.0])
    groups, levels = torch.tensor([0, 0, 0]), torch.tensor([-3.0, -1.0, 0.0])
    assert pairwise_ranking_loss(values, mask, groups, levels, margin=0.1).item() == 0.0
    values2, mask2 = rows([0.6], [0.3], [1.0])
    loss = pairwise_ranking_loss(values2, mask2, groups, levels, margin=0.1)
    loss.backward()
    assert loss.item() > 0.0
    assert values2.grad[0, 0] > 0 and values2.grad[1, 0] < 0 and values2.grad[2, 0] == 0


@pytest.mark.parametrize("fn_name", ["ranking", "placebo", "absolute"])
def test_empty_and_all_masked_inputs_give_zero_without_nan(fn_name):
    def call(values, mask, groups, levels):
        if fn_name == "ranking":
            return pairwise_ranking_loss(values, mask, groups, levels)
        if fn_name == "placebo":
            return placebo_loss(values, mask, groups, torch.isnan(levels), levels == 0)
        return absolute_target_loss(values, mask, torch.where(torch.isnan(levels), 0.0, NAN))

    empty = torch.zeros(0, 4, requires_grad=True)
    loss = call(empty, torch.zeros(0, 4, dtype=torch.bool), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()

    values = torch.randn(3, 4, requires_grad=True)
    masked = torch.zeros(3, 4, dtype=torch.bool)
    loss = call(values, masked, torch.tensor([0, 0, 0]), torch.tensor([0.0, 1.0, NAN]))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.isfinite(values.grad).all() and torch.count_nonzero(values.grad) == 0


def test_ranking_rejects_bad_arguments():
    values, mask = rows([0.1], [0.2])
    groups, levels = torch.tensor([0, 0]), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="margin"):
        pairwise_ranking_loss(values, mask, groups, levels, margin=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        pairwise_ranking_loss(values, mask, groups, levels, reduction="mean")
    with pytest.raises(ValueError, match="per-row"):
        pairwise_ranking_loss(values, mask, groups[:1], levels)


# -- placebo ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_placebo_is_pulled_toward_the_no_command_rows(reduction):
    values, mask = rows([1.0, 1.2], [1.5, 1.7], [0.2, 0.2])
    groups = torch.tensor([0, 0, 1])
    is_placebo, is_none = torch.tensor([False, True, True]), torch.tensor([True, False, False])
    loss = placebo_loss(values, mask, groups, is_placebo, is_none, reduction=reduction)
    # group 0's placebo is 0.5 above its reference; group 1's placebo has no reference and is skipped
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert (values.grad[1] > 0).all()  # descent lowers the placebo toward none
    assert torch.count_nonzero(values.grad[0]) == 0  # the reference is detached
    assert torch.count_nonzero(values.grad[2]) == 0


def test_placebo_equal_to_reference_costs_nothing_and_several_references_are_averaged():
    values, mask = rows([1.0], [0.8], [0.9])
    groups = torch.tensor([0, 0, 0])
    loss = placebo_loss(values, mask, groups, torch.tensor([False, False, True]), torch.tensor([True, True, False]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    undetached = placebo_loss(
        values, mask, groups, torch.tensor([False, False, True]), torch.tensor([True, True, False]), detach_reference=False
    )
    values2, mask2 = rows([1.0], [1.4])
    moved = placebo_loss(
        values2, mask2, torch.tensor([0, 0]), torch.tensor([False, True]), torch.tensor([True, False]), detach_reference=False
    )
    moved.backward()
    assert undetached.item() == pytest.approx(0.0, abs=1e-6)
    assert values2.grad[0, 0] < 0 < values2.grad[1, 0]  # both move toward each other


# -- absolute targets ---------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_absolute_targets_regress_toward_the_target(reduction):
    values, mask = rows([0.5, 0.5], [1.0, 1.0], [0.0, 0.0])
    targets = torch.tensor([0.3, NAN, 0.0])
    loss = absolute_target_loss(values, mask, targets, reduction=reduction)
    assert loss.item() == pytest.approx((0.2**2 + 0.0) / 2)
    loss.backward()
    assert (values.grad[0] > 0).all()  # 0.5 above 0.3: descent lowers it
    assert torch.count_nonzero(values.grad[1]) == 0  # no target, no pull
    assert torch.count_nonzero(values.grad[2]) == 0  # already on target


def test_sequence_means_ignore_padding():
    values, mask = rows([1.0, 3.0], [5.0])
    torch.testing.assert_close(sequence_means(values.detach(), mask), torch.tensor([2.0, 5.0]))


# -- relative (level-ratio) targets ---------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_relative_targets_pull_commanded_rows_to_a_set_distance_from_no_command(reduction):
    # group 0: none at 1.0, a low row at 1.0 asked for -0.5, a placebo (no offset); group 1: a high row, no none
    values, mask = rows([1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1])
    is_none = torch.tensor([True, False, False, False])
    offsets = torch.tensor([NAN, -0.5, NAN, 0.5])
    loss = relative_target_loss(values, mask, groups, is_none, offsets, reduction=reduction)
    assert loss.item() == pytest.approx(0.25)  # only the low row has a reference: (1 - (1 - 0.5))^2
    loss.backward()
    assert (values.grad[1] > 0).all()  # descent lowers the low row
    assert torch.count_nonzero(values.grad[0]) == 0  # the reference is detached
    assert torch.count_nonzero(values.grad[2]) == 0 and torch.count_nonzero(values.grad[3]) == 0


def test_relative_targets_are_an_exact_zero_without_offsets():
    values, mask = rows([1.0], [2.0])
    loss = relative_target_loss(values, mask, torch.tensor([0, 0]), torch.tensor([True, False]), torch.tensor([NAN, NAN]))
    assert loss.item() == 0.0
    loss.backward()
    assert values.grad is not None


def test_level_offsets_by_signed_level_and_log_ratios():
    levels = torch.tensor([-3.0, -1.0, 0.0, 2.0, NAN, 4.0])
    offsets = level_log_ratios(levels, [0.7, 0.4, 0.1], [1.3, 1.6, 2.0])
    expected = torch.tensor([math.log(0.1), math.log(0.7), NAN, math.log(1.6), NAN, NAN])
    torch.testing.assert_close(offsets, expected, equal_nan=True)
    steps = level_offsets(levels, [-0.4, -0.8, -1.2], [0.6, 1.2, 1.8])
    torch.testing.assert_close(steps, torch.tensor([-1.2, -0.4, NAN, 1.2, NAN, NAN]), equal_nan=True)
