"""T-SPMO prefix tries: hand-computed pair advantages, filters, layout as token tensors."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from reference import tspmo_loss

from tokenrl.algorithms import (
    PrefixPair,
    TSPMOConfig,
    get_algorithm,
    group_pairs,
    pairs_to_token_tensors,
)
from tokenrl.rollout import RolloutBatch

# A group of 5 completions (token ids) and rewards:
#   row 0: 5 6 7   r = 1
#   row 1: 5 6 8   r = 0
#   row 2: 5 9 7   r = 1
#   row 3: 4 6     r = 0
#   row 4: 5 6 7   r = 1   (same as row 0)
# Trie rooted at the end of the prompt, N = visits, V = mean reward:
#   root            N=5 V=3/5=0.6
#   +- 4            N=1 V=0      A(root,4)  = 0 - 0.6      = -0.6
#   |  +- 6         N=1 V=0      single child: A = 0, no pair
#   +- 5            N=4 V=3/4    A(root,5)  = 0.75 - 0.6   = +0.15
#      +- 6         N=3 V=2/3    A(5,6)     = 2/3 - 3/4    = -1/12
#      |  +- 7      N=2 V=1      A(56,7)    = 1 - 2/3      = +1/3
#      |  +- 8      N=1 V=0      A(56,8)    = 0 - 2/3      = -2/3
#      +- 9         N=1 V=1      A(5,9)     = 1 - 3/4      = +0.25
#         +- 7      N=1 V=1      single child: no pair
# Representative row = lowest row through p+v.
COMPLETIONS = [[5, 6, 7], [5, 6, 8], [5, 9, 7], [4, 6], [5, 6, 7]]
REWARDS = [1.0, 0.0, 1.0, 0.0, 1.0]
EXPECTED = {  # (prefix_len, token): (advantage, visits, row)
    (0, 4): (-0.6, 1, 3),
    (0, 5): (0.15, 4, 0),
    (1, 6): (-1 / 12, 3, 0),
    (1, 9): (0.25, 1, 2),
    (2, 7): (1 / 3, 2, 0),
    (2, 8): (-2 / 3, 1, 1),
}


def as_dict(pairs: list[PrefixPair]) -> dict[tuple[int, int], tuple[float, int, int]]:
    out = {(p.prefix_len, p.token_id): (p.advantage, p.visits, p.row) for p in pairs}
    assert len(out) == len(pairs)  # each unique pair exactly once
    return out


def test_hand_built_group() -> None:
    got = as_dict(group_pairs(COMPLETIONS, REWARDS, normalise_std=False))
    assert got.keys() == EXPECTED.keys()
    for key, (adv, visits, row) in EXPECTED.items():
        assert got[key][0] == pytest.approx(adv, abs=1e-12)
        assert got[key][1:] == (visits, row)


def test_std_normalisation() -> None:
    # rewards [1,0,1,0,1]: mean 0.6, sample var = (3 * 0.16 + 2 * 0.36) / 4 = 0.3,
    # std = 0.547723; every A is divided by (0.547723 + 1e-4).
    got = as_dict(group_pairs(COMPLETIONS, REWARDS, normalise_std=True, eps=1e-4))
    for key, (adv, _, _) in EXPECTED.items():
        assert got[key][0] == pytest.approx(adv / (0.3**0.5 + 1e-4), abs=1e-12)


def test_children_weighted_by_visits_sum_to_zero() -> None:
    # sum_v N(p+v) (V(p+v) - V(p)) = sum of rewards through p - N(p) V(p) = 0 at every node
    # (every completion through a branching node continues past it here).
    by_parent: dict[tuple[int, ...], float] = defaultdict(float)
    pairs = group_pairs(COMPLETIONS, REWARDS, normalise_std=False)
    for p in pairs:
        prefix = tuple(COMPLETIONS[p.row][: p.prefix_len])
        by_parent[prefix] += p.visits * p.advantage
    assert len(by_parent) == 3  # root, (5,), (5, 6)
    assert all(abs(s) < 1e-12 for s in by_parent.values())


def test_representative_row_holds_the_pair() -> None:
    for p in group_pairs(COMPLETIONS, REWARDS):
        assert COMPLETIONS[p.row][p.prefix_len] == p.token_id
        # the lowest-index completion that starts with p + v
        path = COMPLETIONS[p.row][: p.prefix_len + 1]
        assert p.row == min(i for i, c in enumerate(COMPLETIONS) if c[: p.prefix_len + 1] == path)


def test_no_pairs_without_signal() -> None:
    # Equal rewards: no baseline difference anywhere.
    assert group_pairs(COMPLETIONS, [1.0] * 5) == []
    # Identical completions: a single path, every node has one child.
    assert group_pairs([[1, 2, 3]] * 4, [1.0, 0.0, 1.0, 0.0]) == []
    # A trie with no branching at all (one completion).
    assert group_pairs([[1, 2, 3]], [1.0]) == []


def test_duplicates_count_once_and_min_visits() -> None:
    # Row 4 duplicates row 0: still 6 pairs, not 6 + 3.
    assert len(group_pairs(COMPLETIONS, REWARDS)) == 6
    # min_visits = 2 keeps pairs with N(p+v) >= 2: (0,5) N=4, (1,6) N=3, (2,7) N=2.
    got = as_dict(group_pairs(COMPLETIONS, REWARDS, min_visits=2))
    assert set(got) == {(0, 5), (1, 6), (2, 7)}


def test_branches_with_equal_means_give_no_pair() -> None:
    # root -> 1 (rewards 1, 0: V=0.5), root -> 2 (rewards 0.5, 0.5 mean 0.5): V(root) = 0.5,
    # both edges A = 0 -> no pair there; below 1 the branch 1->3 / 1->4 has A = +-0.5.
    pairs = as_dict(
        group_pairs([[1, 3], [1, 4], [2, 5], [2, 5]], [1.0, 0.0, 0.5, 0.5], normalise_std=False)
    )
    assert pairs == {(1, 3): (0.5, 1, 0), (1, 4): (-0.5, 1, 1)}


def test_pairs_to_token_tensors_two_groups() -> None:
    g0 = group_pairs(COMPLETIONS, REWARDS, normalise_std=False)
    g1 = [PrefixPair(prefix_len=1, token_id=9, advantage=0.5, visits=3, row=2)]
    credit = pairs_to_token_tensors([g0, g1], group_size=5, num_positions=4, weighting="visit")
    # Group 0: row 0 holds positions 0,1,2 ((0,5),(5,6),(56,7)); row 1 pos 2; row 2 pos 1;
    # row 3 pos 0. Group 1: row 5 + 2 = 7, position 1.
    expected_mask = torch.zeros(10, 4, dtype=torch.bool)
    for r, t in [(0, 0), (0, 1), (0, 2), (1, 2), (2, 1), (3, 0), (7, 1)]:
        expected_mask[r, t] = True
    assert torch.equal(credit.update_mask, expected_mask)
    assert credit.token_advantages[0, :3].tolist() == pytest.approx([0.15, -1 / 12, 1 / 3])
    assert credit.token_advantages[7, 1].item() == 0.5
    assert credit.token_weights[0, :3].tolist() == [4.0, 3.0, 2.0]  # visits
    assert credit.num_pairs == 7
    # nonzero-advantage token positions = sum of visits = (1+4+3+1+2+1) + 3 = 15
    assert credit.nonzero_adv_tokens == 15
    uniform = pairs_to_token_tensors([g0, g1], group_size=5, num_positions=4)
    assert torch.equal(uniform.token_weights, expected_mask.float())


def test_tspmo_loss_hand_value() -> None:
    # Uniform pairs: J = mean over the 6 pairs of rho * A; with rho = 1 the value is
    # mean(A) = (-0.6 + 0.15 - 1/12 + 0.25 + 1/3 - 2/3) / 6 = (-37/60) / 6 = -37/360,
    # so loss = -J = 37/360 = 0.102778. d loss / d logp at a pair = -A / 6; zero elsewhere.
    pairs = [group_pairs(COMPLETIONS, REWARDS, normalise_std=False)]
    credit = pairs_to_token_tensors(pairs, group_size=5, num_positions=3)
    logp = torch.full((5, 3), -1.0, requires_grad=True)
    loss, _ = tspmo_loss(logp, credit.token_advantages, credit.update_mask)
    assert loss.item() == pytest.approx(37 / 360, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, -credit.token_advantages / 6)
    # Visit weighting: sum_U N * A / sum_U N
    #   = (1 * -0.6 + 4 * 0.15 + 3 * -1/12 + 1 * 0.25 + 2 * 1/3 + 1 * -2/3) / 12 = 0 / 12 = 0
    # (the children of each node sum to zero when weighted by visits).
    visit = pairs_to_token_tensors(pairs, group_size=5, num_positions=3, weighting="visit")
    loss_v, _ = tspmo_loss(logp, visit.token_advantages, visit.update_mask, visit.token_weights)
    assert loss_v.item() == pytest.approx(0.0, abs=1e-6)


def test_prepare_tspmo_metrics() -> None:
    T = 4
    ids = torch.zeros(5, T, dtype=torch.long)
    mask = torch.zeros(5, T, dtype=torch.bool)
    for i, c in enumerate(COMPLETIONS):
        ids[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = True
    batch = RolloutBatch(
        prompt_ids=torch.ones(5, 2, dtype=torch.long),
        prompt_mask=torch.ones(5, 2, dtype=torch.bool),
        completion_ids=ids,
        completion_mask=mask,
        truncated=torch.zeros(5, dtype=torch.bool),
        texts=[""] * 5,
        group_size=5,
        prompt_index=torch.zeros(5, dtype=torch.long),
    )
    cfg = TSPMOConfig(normalise_std=False)
    inputs = get_algorithm("tspmo").prepare(batch, torch.tensor(REWARDS), cfg, None)
    # 14 completion tokens; 6 pairs; 12 token positions carry a non-zero edge (sum of visits).
    assert inputs.metrics["tspmo/pairs"] == 6
    assert inputs.metrics["tokens/update_frac"] == pytest.approx(6 / 14)
    assert inputs.metrics["tokens/nonzero_adv_frac"] == pytest.approx(12 / 14)
    # Rows 0..3 run forward up to their last pair: 3 + 3 + 2 + 1 = 9 of 14 tokens; row 4 never.
    assert inputs.metrics["tokens/forward_frac"] == pytest.approx(9 / 14)
    assert inputs.aggregation == "token_mean" and torch.equal(
        inputs.logprob_mask, inputs.update_mask
    )
    # Equal rewards: nothing to train on.
    flat = get_algorithm("tspmo").prepare(batch, torch.ones(5), cfg, None)
    assert not flat.update_mask.any() and flat.metrics["tspmo/pairs"] == 0
