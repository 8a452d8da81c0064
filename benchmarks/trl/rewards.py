"""The reward of the whole-step benchmarks (workloads C), the same function for TRL and ours."""

from __future__ import annotations

import zlib
from typing import Any

from tokenrl.answers import is_correct


def bench_reward(completion: str, example: Any) -> float:
    """The task's exact-match reward (0 or 1) plus a tie-breaker in [0, 0.001) from a hash of the
    completion text.

    Why the tie-breaker: an untrained model (C-i's random tiny model) scores 0 on every
    completion; tokenrl skips the update of groups with equal rewards (no signal) while TRL runs
    it with zero advantages, so with the plain reward the speed comparison would measure that
    skip and not the update. Distinct completions get distinct rewards, so every step of both
    runs a full update.
    """
    tie = zlib.crc32(completion.encode("utf-8")) / 2**32 * 1e-3
    return (1.0 if is_correct(completion, example.answer) else 0.0) + tie
