"""benchmarks/digit_reward.py, the partial-credit reward tried for the quickstart, by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tokenrl.tasks.base import Example

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "digit_reward.py"


def score(completion: str, answer: str) -> float:
    spec = importlib.util.spec_from_file_location("digit_reward", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.score(completion, Example(id="x", question="891*4=", answer=answer))


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
def test_partial_credit_by_hand(completion: str, expected: float) -> None:
    assert score(completion, "3564") == pytest.approx(expected)
