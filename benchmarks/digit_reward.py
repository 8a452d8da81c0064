"""A partial-credit reward for multiplication, tried once for the quickstart (docs/quickstart.md).

A right product scores 1; a wrong one written as digits scores half the share of its digits that
match the gold answer's at the same position (counted from the left, over the longer of the
two); anything else 0. Used as a custom reward (docs/reliability.md, "Custom rewards"):

    PYTHONPATH=benchmarks tokenrl train OUT/configs/sgrpo.yaml --task.reward digit_reward:score

It reads the compact style only (the completion up to its first newline is the answer).
"""

from __future__ import annotations

from tokenrl.tasks.base import Example


def score(completion: str, example: Example) -> float:
    """1.0 if right; 0.5 * (digits in the right place) / max(len) if a wrong number; else 0.0."""
    text = completion.split("\n", 1)[0].strip()
    gold = example.answer
    if text == gold:
        return 1.0
    if not text.isdigit():
        return 0.0
    same = sum(a == b for a, b in zip(text, gold, strict=False))
    return 0.5 * same / max(len(gold), len(text))
