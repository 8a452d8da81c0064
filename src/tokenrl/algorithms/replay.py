"""T-SPMO replay: continue stored successful completions from a cut, so late tokens get credit.

A prompt's trie branches mostly near its root, so T-SPMO's pairs sit on the first tokens. Replay
(Lee & Tong, https://arxiv.org/abs/2504.20834; how the cut m is chosen and how often replay runs
are ours) takes a stored completion y of prompt x, cuts it at m, and samples a fresh group of
continuations from x + y[:m]; the trie of that group is rooted at the cut, so its pairs sit
deeper in the solution. The trainer treats x + y[:m] as the prompt of that group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokenrl.rollout import RolloutBatch

CUT_SCHEDULES = ("random", "growing")


@dataclass
class ReplayConfig:
    """How the trainer runs replay (all [ours]; the paper gives no values)."""

    every: int = 0
    """Run a replay step every this many training steps; 0 = never (replay off)."""

    groups_per_step: int = 2
    """Replay prefixes sampled per replay step; each gets a fresh group of G continuations."""

    cut: str = "random"
    """Where to cut a stored completion of length n: "random" = m uniform in [1, n - 1];
    "growing" = m = round(f * n) with f rising linearly from min_frac to max_frac over training,
    so credit moves from early to late tokens as training goes on."""

    min_frac: float = 0.2
    """Cut fraction at the start of training ("growing")."""

    max_frac: float = 0.8
    """Cut fraction at the end of training ("growing")."""

    capacity: int = 512
    """Completions kept; the oldest are dropped first."""

    only_successful: bool = True
    """Store only completions with reward >= success_threshold (continuing a wrong solution
    teaches less than continuing a right one)."""

    success_threshold: float = 1.0
    """Reward at or above which a completion counts as successful (exact-match reward = 1)."""

    def validate(self) -> None:
        def fail(what: str, fix: str) -> None:
            raise ValueError(f"replay: {what}. Fix: {fix}")

        if self.every < 0:
            fail(f"every={self.every} is negative", "use 0 (off) or a step interval >= 1")
        if self.groups_per_step < 1:
            fail(
                f"groups_per_step={self.groups_per_step} samples nothing",
                "use groups_per_step >= 1",
            )
        if self.cut not in CUT_SCHEDULES:
            fail(f"cut={self.cut!r} is unknown", f"choose one of {', '.join(CUT_SCHEDULES)}")
        if not 0.0 <= self.min_frac <= self.max_frac <= 1.0:
            fail(
                f"min_frac={self.min_frac}, max_frac={self.max_frac} is not a range inside [0, 1]",
                "use 0 <= min_frac <= max_frac <= 1 (the cut is a fraction of the completion)",
            )
        if self.capacity < 1:
            fail(f"capacity={self.capacity} holds nothing", "use capacity >= 1")


@dataclass(frozen=True)
class ReplayItem:
    """One stored completion."""

    prompt_key: str  # identifies the problem (its reward needs the gold answer)
    prompt_ids: tuple[int, ...]  # unpadded prompt token ids
    completion_ids: tuple[int, ...]  # unpadded completion token ids
    reward: float


@dataclass(frozen=True)
class ReplayPrefix:
    """A replay group's prompt: the original prompt plus the first ``cut`` completion tokens."""

    prompt_key: str
    input_ids: list[int]  # prompt_ids + completion_ids[:cut]
    cut: int  # m
    source: ReplayItem


class ReplayBuffer:
    """FIFO store of completions (successful only, by default), without duplicates."""

    def __init__(
        self, capacity: int, *, only_successful: bool = True, success_threshold: float = 1.0
    ) -> None:
        self.capacity = capacity
        self.only_successful = only_successful
        self.success_threshold = success_threshold
        self.items: deque[ReplayItem] = deque()
        self._keys: set[tuple[str, tuple[int, ...], tuple[int, ...]]] = set()

    @classmethod
    def from_config(cls, cfg: ReplayConfig) -> ReplayBuffer:
        return cls(
            cfg.capacity,
            only_successful=cfg.only_successful,
            success_threshold=cfg.success_threshold,
        )

    def __len__(self) -> int:
        return len(self.items)

    def add(
        self,
        prompt_key: str,
        prompt_ids: Sequence[int],
        completion_ids: Sequence[int],
        reward: float,
    ) -> bool:
        """Store one completion; False if it was filtered out or is already stored."""
        if self.only_successful and reward < self.success_threshold:
            return False
        item = ReplayItem(prompt_key, tuple(prompt_ids), tuple(completion_ids), float(reward))
        key = (item.prompt_key, item.prompt_ids, item.completion_ids)
        if key in self._keys:
            return False  # a duplicate would only make this completion more likely to be replayed
        if len(self.items) >= self.capacity:
            old = self.items.popleft()
            self._keys.discard((old.prompt_key, old.prompt_ids, old.completion_ids))
        self.items.append(item)
        self._keys.add(key)
        return True

    def add_rollouts(
        self, batch: RolloutBatch, rewards: torch.Tensor, prompt_keys: Sequence[str]
    ) -> int:
        """Store the rows of a rollout batch; ``prompt_keys[i]`` names the batch's prompt i.

        Returns how many were stored. ``rewards`` [B].
        """
        return sum(self.add(*item) for item in rollout_items(batch, rewards, prompt_keys))


def rollout_items(
    batch: RolloutBatch, rewards: torch.Tensor, prompt_keys: Sequence[str]
) -> list[tuple[str, list[int], list[int], float]]:
    """The rows of a rollout batch as ``(prompt_key, prompt_ids, completion_ids, reward)``, the
    arguments of :meth:`ReplayBuffer.add` (plain Python, so processes can exchange them).

    ``prompt_keys[i]`` names the batch's prompt i; ``rewards`` [B].
    """
    completions = batch.completion_token_lists()
    return [
        (
            prompt_keys[int(batch.prompt_index[row])],
            batch.prompt_ids[row][batch.prompt_mask[row]].tolist(),
            completion,
            float(rewards[row]),
        )
        for row, completion in enumerate(completions)
    ]


def cut_position(
    length: int, cfg: ReplayConfig, progress: float, generator: torch.Generator | None
) -> int:
    """Where to cut a completion of ``length`` >= 2 tokens: m in [1, length - 1].

    ``progress`` in [0, 1] is the fraction of training done ("growing" schedule).
    """
    if length < 2:
        raise ValueError(
            f"a completion of {length} token(s) cannot be cut with tokens left on both sides"
        )
    if cfg.cut == "random":
        return int(torch.randint(1, length, (1,), generator=generator))
    frac = cfg.min_frac + (cfg.max_frac - cfg.min_frac) * min(max(progress, 0.0), 1.0)
    return min(max(round(frac * length), 1), length - 1)


def sample_replay_prefixes(
    buffer: ReplayBuffer,
    num: int,
    cfg: ReplayConfig,
    *,
    progress: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[ReplayPrefix]:
    """Up to ``num`` distinct stored completions (uniformly, without replacement), each cut at m.

    Completions shorter than 2 tokens cannot be cut and are skipped.
    """
    usable = [item for item in buffer.items if len(item.completion_ids) >= 2]
    order = torch.randperm(len(usable), generator=generator).tolist()[:num]
    out = []
    for i in order:
        item = usable[i]
        m = cut_position(len(item.completion_ids), cfg, progress, generator)
        out.append(
            ReplayPrefix(
                item.prompt_key, list(item.prompt_ids) + list(item.completion_ids[:m]), m, item
            )
        )
    return out


@dataclass(frozen=True)
class ReplayPrompt:
    """One replay group for the step: continue ``input_ids`` (prompt + a stored prefix)."""

    prompt_key: str  # the problem (scored against its gold answer)
    input_ids: list[int]
    prefix_ids: list[int]  # the completion prefix inside input_ids; scored with the completion


class Replay:
    """T-SPMO's replay as the algorithm's hook into the trainer (``Algorithm.replay``).

    Each step the trainer asks :meth:`prompts` for extra groups to sample beside the fresh ones
    (every ``cfg.every`` steps, once something is stored), and hands the scored fresh rollouts to
    :meth:`observe`. The draws use a generator seeded once from the run's seed, the same on every
    rank of a data-parallel run (all ranks observe all rollouts), so every rank draws the same
    list. :meth:`state_dict` holds only tensors and plain lists (a safe checkpoint).
    """

    def __init__(self, cfg: ReplayConfig, seed: int) -> None:
        self.cfg = cfg
        self.buffer = ReplayBuffer.from_config(cfg)
        self.generator = torch.Generator().manual_seed(seed + 1)

    def prompts(self, step: int, total_steps: int) -> list[ReplayPrompt]:
        """The replay groups of step ``step`` (0-based) of ``total_steps``: none on most steps."""
        if (step + 1) % self.cfg.every or not len(self.buffer):
            return []
        progress = step / max(total_steps - 1, 1)
        prefixes = sample_replay_prefixes(
            self.buffer,
            self.cfg.groups_per_step,
            self.cfg,
            progress=progress,
            generator=self.generator,
        )
        return [
            ReplayPrompt(p.prompt_key, p.input_ids, list(p.source.completion_ids[: p.cut]))
            for p in prefixes
        ]

    def observe(self, items: list[tuple[str, list[int], list[int], float]]) -> None:
        """Store fresh rollouts, as :func:`rollout_items` gives them (every rank's, in order)."""
        for item in items:
            self.buffer.add(*item)

    def state_dict(self) -> dict:
        items = [
            [i.prompt_key, list(i.prompt_ids), list(i.completion_ids), i.reward]
            for i in self.buffer.items
        ]
        return {"generator": self.generator.get_state(), "items": items}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.buffer = ReplayBuffer.from_config(self.cfg)
        for key, prompt_ids, completion_ids, reward in state["items"]:
            self.buffer.add(key, prompt_ids, completion_ids, reward)
