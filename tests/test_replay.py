"""T-SPMO replay buffer and prefix sampling."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tokenrl.algorithms import ReplayBuffer, ReplayConfig, cut_position, sample_replay_prefixes
from tokenrl.rollout import RolloutBatch


def test_stores_only_successful_without_duplicates_fifo() -> None:
    buf = ReplayBuffer(capacity=2)
    assert not buf.add("q1", [1, 2], [3, 4, 5], 0.0)  # failed: not stored
    assert buf.add("q1", [1, 2], [3, 4, 5], 1.0)
    assert not buf.add("q1", [1, 2], [3, 4, 5], 1.0)  # duplicate
    assert buf.add("q2", [7], [8, 9], 1.0)
    assert buf.add("q3", [7], [8, 9, 10], 1.0)  # capacity 2: q1 is dropped
    assert [i.prompt_key for i in buf.items] == ["q2", "q3"]
    assert buf.add("q1", [1, 2], [3, 4, 5], 1.0)  # evicted, so no longer a duplicate
    every = ReplayBuffer(capacity=4, only_successful=False)
    assert every.add("q", [1], [2, 3], 0.0) and len(every) == 1


def test_add_rollouts_strips_padding() -> None:
    pad = 0
    batch = RolloutBatch(
        prompt_ids=torch.tensor([[pad, 5, 6], [pad, 5, 6], [7, 8, 9], [7, 8, 9]]),
        prompt_mask=torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.bool),
        completion_ids=torch.tensor([[1, 2, pad], [3, pad, pad], [4, 4, 4], [5, 5, pad]]),
        completion_mask=torch.tensor(
            [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool
        ),
        truncated=torch.zeros(4, dtype=torch.bool),
        texts=[""] * 4,
        group_size=2,
        prompt_index=torch.tensor([0, 0, 1, 1]),
    )
    buf = ReplayBuffer(capacity=10)
    assert buf.add_rollouts(batch, torch.tensor([1.0, 0.0, 1.0, 1.0]), ["a", "b"]) == 3
    stored = [(i.prompt_key, i.prompt_ids, i.completion_ids) for i in buf.items]
    assert stored == [("a", (5, 6), (1, 2)), ("b", (7, 8, 9), (4, 4, 4)), ("b", (7, 8, 9), (5, 5))]


def test_prefixes_are_prefixes_of_successful_completions() -> None:
    buf = ReplayBuffer(capacity=10)
    buf.add("ok1", [1, 2], [10, 11, 12, 13, 14], 1.0)
    buf.add("ok2", [3], [20, 21, 22], 1.0)
    buf.add("bad", [4], [30, 31, 32], 0.0)  # not stored
    buf.add("short", [5], [40], 1.0)  # stored, but 1 token cannot be cut
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        for pre in sample_replay_prefixes(buf, 5, ReplayConfig(), generator=gen):
            src = pre.source
            assert src.reward >= 1.0 and pre.prompt_key in ("ok1", "ok2")
            assert 1 <= pre.cut <= len(src.completion_ids) - 1
            assert pre.input_ids == list(src.prompt_ids) + list(src.completion_ids[: pre.cut])


def test_random_cut_is_uniform_on_1_to_n_minus_1() -> None:
    gen = torch.Generator().manual_seed(0)
    counts = Counter(cut_position(5, ReplayConfig(cut="random"), 0.0, gen) for _ in range(4000))
    assert set(counts) == {1, 2, 3, 4}
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values())


def test_growing_cut() -> None:
    cfg = ReplayConfig(cut="growing", min_frac=0.2, max_frac=0.8)
    # n = 100: progress 0 -> 0.2 * 100 = 20; 0.5 -> 0.5 * 100 = 50; 1 -> 80.
    assert [cut_position(100, cfg, p, None) for p in (0.0, 0.5, 1.0)] == [20, 50, 80]
    # Clamped to [1, n - 1]: n = 3 at progress 0 -> round(0.6) = 1; max_frac 1 -> 2, not 3.
    assert cut_position(3, cfg, 0.0, None) == 1
    assert cut_position(3, ReplayConfig(cut="growing", max_frac=1.0), 1.0, None) == 2
    with pytest.raises(ValueError, match="cannot be cut"):
        cut_position(1, cfg, 0.0, None)


def test_sampling_is_seeded_and_without_replacement() -> None:
    buf = ReplayBuffer(capacity=10)
    for i in range(6):
        buf.add(f"q{i}", [i], [i, i + 1, i + 2, i + 3], 1.0)
    a = sample_replay_prefixes(buf, 4, ReplayConfig(), generator=torch.Generator().manual_seed(3))
    b = sample_replay_prefixes(buf, 4, ReplayConfig(), generator=torch.Generator().manual_seed(3))
    assert a == b and len({p.prompt_key for p in a}) == 4
    assert len(sample_replay_prefixes(buf, 99, ReplayConfig())) == 6


@pytest.mark.parametrize(
    "field,value",
    [
        ("every", -1),
        ("groups_per_step", 0),
        ("cut", "late"),
        ("min_frac", 0.9),
        ("max_frac", 1.5),
        ("capacity", 0),
    ],
)
def test_config_validation(field: str, value) -> None:
    cfg = ReplayConfig(**{field: value})
    with pytest.raises(ValueError, match="Fix:"):
        cfg.validate()
    ReplayConfig().validate()
