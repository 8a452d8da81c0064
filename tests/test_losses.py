"""Per-token objectives, aggregations and the composed losses, on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from reference import grpo_loss, sgrpo_loss

from tokenrl.algorithms import (
    AGGREGATIONS,
    clipped_objective,
    k3_kl,
    make_loss_inputs,
    policy_loss,
    sgrpo_select,
)


def test_ppo_clip_gradients() -> None:
    # clip_low = clip_high = 0.2; one token per case, old_logp = 0 so rho = exp(logp).
    #  rho  A   unclipped  clipped  min            d obj / d logp
    #  1.5 +1   1.5        1.2      1.2 (clipped)  0
    #  0.5 +1   0.5        0.8      0.5            rho * A = 0.5
    #  0.5 -1  -0.5       -0.8     -0.8 (clipped)  0
    #  1.5 -1  -1.5       -1.2     -1.5            rho * A = -1.5
    #  1.1 +1   1.1        1.1      1.1 (inside)   1.1
    rho = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    logp = rho.log().requires_grad_()
    active = torch.ones(5, dtype=torch.bool)
    obj, is_clipped = clipped_objective(
        logp, torch.zeros(5), adv, active, clip_low=0.2, clip_high=0.2
    )
    torch.testing.assert_close(obj, torch.tensor([1.2, 0.5, -0.8, -1.5, 1.1]))
    assert is_clipped.tolist() == [True, False, True, False, False]
    obj.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 0.5, 0.0, -1.5, 1.1]))


def test_asymmetric_clip() -> None:
    # clip_high = 0.28: rho = 1.25, A = +1 lies inside [0.8, 1.28] -> not clipped, grad 1.25.
    logp = torch.tensor([math.log(1.25)], requires_grad=True)
    obj, is_clipped = clipped_objective(
        logp,
        torch.zeros(1),
        torch.ones(1),
        torch.ones(1, dtype=torch.bool),
        clip_low=0.2,
        clip_high=0.28,
    )
    obj.sum().backward()
    assert not is_clipped.item() and logp.grad.item() == pytest.approx(1.25)


def test_k3_kl_hand_values() -> None:
    # logp = -1, ref = -2: d = ref - logp = -1, k3 = e^-1 + 1 - 1 = 0.367879;
    # d k3 / d logp = 1 - exp(ref - logp) = 1 - 0.367879 = 0.632121.
    # logp = ref: k3 = 0. Inactive position: 0 even with a garbage log-prob.
    logp = torch.tensor([-1.0, -3.0, -50.0], requires_grad=True)
    ref = torch.tensor([-2.0, -3.0, 0.0])
    kl = k3_kl(logp, ref, torch.tensor([True, True, False]))
    torch.testing.assert_close(kl, torch.tensor([0.367879, 0.0, 0.0]), atol=1e-6, rtol=0)
    kl.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.632121, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_aggregations_hand_values() -> None:
    # mask [[1,1,0],[1,0,0]], values [[1,2,9],[3,9,9]] (9 = outside the mask):
    # seq_mean = ((1+2)/2 + 3/1) / 2 = 2.25; token_mean = (1+2+3)/3 = 2;
    # constant (C = 4) = 6 / (2 * 4) = 0.75;
    # token_mean with weights [[1,3,.],[2,.,.]] = (1*1 + 3*2 + 2*3) / 6 = 13/6.
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    values = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    agg = {
        name: (fn(mask, None, constant=4) * values).sum().item()
        for name, fn in AGGREGATIONS.items()
    }
    assert agg == pytest.approx({"seq_mean": 2.25, "token_mean": 2.0, "constant": 0.75})
    weights = torch.tensor([[1.0, 3.0, 5.0], [2.0, 5.0, 5.0]])
    assert (AGGREGATIONS["token_mean"](mask, weights) * values).sum().item() == pytest.approx(
        13 / 6
    )
    # An empty row still counts in seq_mean's B: ((1+2)/2 + 0) / 2 = 0.75, no NaN.
    empty = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    assert (AGGREGATIONS["seq_mean"](empty, None) * values).sum().item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="constant"):
        AGGREGATIONS["constant"](mask, None, constant=None)


def test_grpo_loss_hand_value_and_gradient() -> None:
    # A = [1, -1], lengths 2 and 1 (seq_mean): J = (1*(1+1)/2 + (-1)*1/1) / 2 = 0 -> loss 0.
    # d loss / d logp[0, t] = -A_0 / (2 * 2) = -0.25 for t < 2; d / d logp[1, 0] = +1 / 2.
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    logp = torch.full((2, 3), -0.7, requires_grad=True)
    loss, metrics = grpo_loss(logp, None, torch.tensor([1.0, -1.0]), mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and metrics["loss/clip_frac"] == 0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, 0.0], [0.5, 0.0, 0.0]]))


def test_grpo_kl_term() -> None:
    # beta = 0.5, token_mean over 2 tokens; A = 0; logp = [-1, -2], ref = [-2, -2]:
    # KL = (0.367879 + 0) / 2 = 0.183940, loss = 0.5 * 0.183940 = 0.091970.
    mask = torch.tensor([[True, True]])
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0]])
    loss, metrics = grpo_loss(
        logp, None, torch.zeros(1), mask, beta=0.5, ref_logp=ref, aggregation="token_mean"
    )
    assert loss.item() == pytest.approx(0.091970, abs=1e-6)
    assert metrics["loss/kl"] == pytest.approx(0.183940, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, None, torch.zeros(1), mask, beta=0.5)


def test_sgrpo_with_alpha_ge_length_equals_grpo() -> None:
    # alpha >= T selects every real token, so S-GRPO's loss and gradient are full-token GRPO's
    # (on-policy, seq_mean).
    torch.manual_seed(0)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 3, 5, 1])[:, None]  # [4, 6]
    adv = torch.tensor([0.5, -1.0, 2.0, -0.3])
    base = torch.randn(4, 6)
    update = sgrpo_select(mask, torch.Generator().manual_seed(0), alpha=6, p=0.1, k=6)
    assert torch.equal(update, mask)
    lp1 = base.clone().requires_grad_()
    lp2 = base.clone().requires_grad_()
    l1, _ = sgrpo_loss(lp1, adv, update)
    l2, _ = grpo_loss(lp2, None, adv, mask)
    l1.backward()
    l2.backward()
    assert l1.item() == pytest.approx(l2.item(), abs=1e-7)
    torch.testing.assert_close(lp1.grad, lp2.grad, atol=0, rtol=0)


def test_unselected_tokens_get_exactly_zero_gradient() -> None:
    mask = torch.ones(3, 8, dtype=torch.bool)
    update = sgrpo_select(mask, torch.Generator().manual_seed(5), alpha=2, p=0.4, k=5)
    assert update.any() and not update.all()
    logp = torch.randn(3, 8).requires_grad_()
    ref = torch.randn(3, 8)
    loss, _ = sgrpo_loss(logp, torch.tensor([1.0, -2.0, 0.5]), update, beta=0.1, ref_logp=ref)
    loss.backward()
    assert torch.all(logp.grad[~update] == 0)
    assert torch.all(logp.grad[update] != 0)


def test_policy_loss_matches_sgrpo_and_micro_batches_sum() -> None:
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 3])[:, None]
    update = sgrpo_select(mask, torch.Generator().manual_seed(1), alpha=1, p=0.5, k=3)
    adv = torch.tensor([1.0, 0.0, -0.5, 2.0])
    inputs = make_loss_inputs(update, adv[:, None].expand(4, 5), aggregation="seq_mean")
    logp = torch.randn(4, 5) * inputs.logprob_mask  # 0 where no log-prob was computed
    full, _ = policy_loss(logp, None, inputs)
    ref, _ = sgrpo_loss(logp, adv, update)
    assert full.item() == pytest.approx(ref.item(), abs=1e-7)
    halves = [
        policy_loss(logp[r], None, inputs.select_rows(r))[0]
        for r in (torch.tensor([0, 1]), torch.tensor([2, 3]))
    ]
    assert (halves[0] + halves[1]).item() == pytest.approx(full.item(), abs=1e-7)


def test_logprob_mask_skips_zero_advantage_only_without_kl() -> None:
    update = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    adv = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    no_kl = make_loss_inputs(update, adv, aggregation="seq_mean", beta=0.0)
    assert no_kl.logprob_mask.tolist() == [[False, False], [True, False]]
    assert no_kl.token_advantages.tolist() == [[0.0, 0.0], [1.0, 0.0]]  # zero off update_mask
    with_kl = make_loss_inputs(update, adv, aggregation="seq_mean", beta=0.1)
    assert torch.equal(with_kl.logprob_mask, update)
    # The row-0 log-probs were never computed: asking for a KL on them must fail loudly.
    with pytest.raises(ValueError, match="prepared with beta = 0"):
        policy_loss(torch.zeros(2, 2), None, no_kl, beta=0.1, ref_logp=torch.zeros(2, 2))


def test_clipped_policy_loss_ignores_positions_without_logprob() -> None:
    # old_logp very negative off the logprob mask would overflow exp() if not masked.
    update = torch.tensor([[True, True]])
    inputs = make_loss_inputs(update, torch.tensor([[1.0, 0.0]]), aggregation="token_mean")
    logp = torch.tensor([[math.log(1.5), 0.0]], requires_grad=True)
    old = torch.tensor([[0.0, -200.0]])
    loss, metrics = policy_loss(logp, old, inputs)
    # token 0: rho = 1.5, A = 1 -> clipped to 1.2; token 1: A = 0 -> 0; token_mean over 2 -> 0.6.
    assert loss.item() == pytest.approx(-0.6) and metrics["loss/clip_frac"] == 1.0
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad.abs().sum() == 0
