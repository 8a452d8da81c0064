"""T-SPMO credit assignment: prefix tries over a group of completions.

Lee & Tong, https://arxiv.org/abs/2504.20834 (T-SPMO; the exact advantage is our reconstruction,
see docs/paper.md):

1. Insert the G completions (token ids) of one prompt into a trie rooted at the end of the prompt.
   For a node (prefix) p: N(p) = completions that start with p, V(p) = mean reward of those.
2. Each edge p -> v gets A(p, v) = V(p + v) - V(p), optionally divided by the group's reward std.
   If all completions through p continue with v then V(p + v) = V(p) and A = 0, so only
   branching points carry signal.
3. Each unique (p, v) pair with A != 0 counts once, however many completions share it:
   J = sum_{(p,v) in U} w(p,v) * pi(v|x,p) / sg(pi(v|x,p)) * A(p, v) / sum_{(p,v) in U} w(p,v).

Because every completion through p + v has the token v at position |p|, the pair can be trained
on any one of those rows: :func:`pairs_to_token_tensors` puts it on the lowest-index row, so the
pairs of a group pile up on few rows (rows with no pair are never run forward).

Shape legend: B = N * G rows (groups contiguous), T = padded completion length, N = prompts,
G = completions per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

WEIGHTINGS = ("uniform", "visit")


@dataclass(frozen=True)
class PrefixPair:
    """One (prefix p, next token v) edge of a group's trie with a non-zero advantage."""

    prefix_len: int  # |p|; v sits at completion position prefix_len
    token_id: int  # v
    advantage: float  # A(p, v) = V(p + v) - V(p), divided by the group's reward std if asked
    visits: int  # N(p + v): completions of the group that start with p + v
    row: int  # lowest index (within the group) of a completion that starts with p + v


@dataclass
class TokenCredit:
    """T-SPMO pairs of a whole batch laid out as per-token tensors for the loss."""

    update_mask: torch.Tensor  # [B, T] bool, True = a pair sits here (row = its representative)
    token_advantages: torch.Tensor  # [B, T] float32, A(p, v) of that pair, 0 elsewhere
    token_weights: torch.Tensor  # [B, T] float32, pair weight (1 or N(p + v)), 0 elsewhere
    num_pairs: int  # |U| summed over groups
    nonzero_adv_tokens: int  # completion positions whose (prefix, token) edge is a pair


class PrefixTrie:
    """Trie of token-id sequences with per-node visit count, reward sum and first row."""

    def __init__(self) -> None:
        self.children: list[dict[int, int]] = [{}]  # node id -> {token id: child node id}
        self.visits: list[int] = [0]
        self.reward_sum: list[float] = [0.0]
        self.first_row: list[int] = [-1]
        self.depth: list[int] = [0]

    def insert(self, tokens: Sequence[int], reward: float, row: int) -> None:
        node = 0
        self._visit(node, reward, row)
        for token in tokens:
            child = self.children[node].get(token)
            if child is None:
                child = len(self.visits)
                self.children[node][token] = child
                self.children.append({})
                self.visits.append(0)
                self.reward_sum.append(0.0)
                self.first_row.append(row)
                self.depth.append(self.depth[node] + 1)
            node = child
            self._visit(node, reward, row)

    def _visit(self, node: int, reward: float, row: int) -> None:
        self.visits[node] += 1
        self.reward_sum[node] += reward
        if self.first_row[node] < 0:
            self.first_row[node] = row

    def value(self, node: int) -> float:
        return self.reward_sum[node] / self.visits[node]


def group_pairs(
    completions: Sequence[Sequence[int]],
    rewards: Sequence[float],
    *,
    normalise_std: bool = True,
    eps: float = 1e-4,
    min_visits: int = 1,
) -> list[PrefixPair]:
    """All (prefix, token) pairs with A != 0 of one group, each unique pair once.

    ``completions``: G token-id lists (no padding); ``rewards``: G floats. ``normalise_std``
    divides every A by (sample std of the group's rewards + eps), the same scale as GRPO's
    advantage; ``min_visits`` drops pairs with N(p + v) below it. Equal rewards give no pairs.
    """
    if len(completions) != len(rewards):
        raise ValueError(
            f"{len(completions)} completions but {len(rewards)} rewards; pass one reward each"
        )
    r = [float(x) for x in rewards]
    if len(r) < 2 or max(r) == min(r):
        return []  # no baseline to compare against: every V(p) equals every V(p + v)
    scale = 1.0
    if normalise_std:
        mean = sum(r) / len(r)
        std = (sum((x - mean) ** 2 for x in r) / (len(r) - 1)) ** 0.5  # sample std, as in GRPO
        scale = 1.0 / (std + eps)
    # V(p + v) - V(p) is a difference of means: rounding can leave ~1e-16 where the exact value
    # is 0 (two branches with the same mean). Treat anything below this as zero.
    tol = 1e-12 * max(1.0, max(abs(x) for x in r))

    trie = PrefixTrie()
    for row, (tokens, reward) in enumerate(zip(completions, r, strict=True)):
        trie.insert(tokens, reward, row)

    pairs: list[PrefixPair] = []
    for node, kids in enumerate(trie.children):
        for token, child in kids.items():
            if trie.visits[child] == trie.visits[node] or trie.visits[child] < min_visits:
                continue  # one way on (same completions, same mean: A = 0), or too rare
            advantage = trie.value(child) - trie.value(node)
            if abs(advantage) <= tol:
                continue
            pairs.append(
                PrefixPair(
                    prefix_len=trie.depth[node],
                    token_id=token,
                    advantage=advantage * scale,
                    visits=trie.visits[child],
                    row=trie.first_row[child],
                )
            )
    return pairs


def pairs_to_token_tensors(
    pairs_by_group: Sequence[Sequence[PrefixPair]],
    *,
    group_size: int,
    num_positions: int,
    weighting: str = "uniform",
    device: torch.device | str = "cpu",
) -> TokenCredit:
    """Lay out the pairs of N groups (group i = rows i*G .. i*G+G-1) as [B, T] tensors.

    Pair (p, v) of group i goes to row i*G + pair.row, position pair.prefix_len. ``weighting``:
    "uniform" (every pair 1) or "visit" (pair weight N(p + v)).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"unknown pair weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}"
        )
    B, T = len(pairs_by_group) * group_size, num_positions
    rows, cols, adv, weight = [], [], [], []
    nonzero = 0
    for g, pairs in enumerate(pairs_by_group):
        for pair in pairs:
            if pair.row >= group_size or pair.prefix_len >= T:
                raise ValueError(
                    f"pair {pair} does not fit a group of {group_size} x {T} positions"
                )
            rows.append(g * group_size + pair.row)
            cols.append(pair.prefix_len)
            adv.append(pair.advantage)
            weight.append(float(pair.visits) if weighting == "visit" else 1.0)
            nonzero += pair.visits  # each completion through p + v has this edge at |p|
    index = (torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))
    update_mask = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    update_mask[index] = True
    token_advantages = torch.zeros(B, T)  # [B, T]
    token_advantages[index] = torch.tensor(adv, dtype=torch.float32)
    token_weights = torch.zeros(B, T)  # [B, T]
    token_weights[index] = torch.tensor(weight, dtype=torch.float32)
    if int(update_mask.sum()) != len(rows):
        # Cannot happen for pairs from group_pairs: a row holds one token at each position.
        raise ValueError(
            "two pairs landed on the same (row, position); pairs must come from group_pairs"
        )
    return TokenCredit(
        update_mask=update_mask.to(device),
        token_advantages=token_advantages.to(device),
        token_weights=token_weights.to(device),
        num_pairs=len(rows),
        nonzero_adv_tokens=nonzero,
    )
