"""Group-normalised advantages: hand values, equal-reward groups, options."""

from __future__ import annotations

import pytest
import torch

from tokenrl.algorithms import group_advantages, zero_std_fraction


def test_hand_values_sample_std() -> None:
    # Group [1, 0, 0, 1]: mean 0.5; sample std = sqrt(4 * 0.25 / 3) = 0.577350;
    # A = +-0.5 / 0.577350 = +-0.866025 (eps = 0).
    # Group [2, 0, 1, 1]: mean 1; sample std = sqrt((1 + 1 + 0 + 0) / 3) = 0.816497;
    # A = [1, -1, 0, 0] / 0.816497 = [1.224745, -1.224745, 0, 0].
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4, eps=0.0)
    expected = torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 1.224745, -1.224745, 0, 0])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_eps_is_added_to_std() -> None:
    # [1, 0]: mean 0.5, sample std = sqrt(0.5) = 0.707107; A = 0.5 / (0.707107 + 0.1) = 0.619497.
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2, eps=0.1)
    torch.testing.assert_close(adv, torch.tensor([0.619497, -0.619497]), atol=1e-6, rtol=0)


def test_unscaled_option() -> None:
    # Dr. GRPO: A = r - mean; [3, 1, 2] -> mean 2 -> [1, -1, 0].
    adv = group_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, scale_by_std=False)
    assert adv.tolist() == [1.0, -1.0, 0.0]


@pytest.mark.parametrize("scale", [True, False])
def test_equal_rewards_give_exact_zero(scale: bool) -> None:
    # 0.1 * 3 / 3 = 0.10000000000000002 in floating point: the centred value is not exactly 0,
    # the function must still return exact zeros (and never divide by the zero std).
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 3, scale_by_std=scale, eps=0.0)
    assert torch.equal(adv, torch.zeros(6))


def test_group_of_one_is_zero() -> None:
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0]), 1), torch.zeros(2))


def test_does_not_touch_input_and_has_no_grad() -> None:
    rewards = torch.tensor([1.0, 0.0], requires_grad=True)
    adv = group_advantages(rewards, 2)
    assert not adv.requires_grad and rewards.tolist() == [1.0, 0.0]


def test_zero_std_fraction() -> None:
    # groups [1,1], [0,1], [0,0] -> 2 of 3 have all-equal rewards.
    assert zero_std_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), 2) == pytest.approx(
        2 / 3
    )


def test_bad_shape() -> None:
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)
