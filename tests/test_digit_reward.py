"""benchmarks/digit_reward.py, the partial-credit reward tried for the quickstart, by hand."""

from __future__ import annotations

import pytest

from tokenrl.tasks.base import Example


@pytest.fixture(scope="module")
def digit_reward(load_benchmark):
    return load_benchmark("digit_reward")


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("3564\n", 1.0),  # right
        ("3564\n7", 1.0),  # read up to the newline
        ("3574\n", 0.5 * 3 / 4),  # three of four digits in place
        ("35640\n", 0.5 * 4 / 5),  # four in place, over the longer length 5
        ("564\n", 0.0),  # shifted: no digit in place
        ("abc\n", 0.0),  # not a number
        ("", 0.0),
    ],
)
def test_partial_credit_by_hand(digit_reward, completion: str, expected: float) -> None:
    gold = Example(id="x", question="891*4=", answer="3564")
    assert digit_reward.score(completion, gold) == pytest.approx(expected)
