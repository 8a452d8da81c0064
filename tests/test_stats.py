"""Statistics helpers against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tokenrl.stats import mcnemar_exact, mean_ci, mean_pass_at_k, pass_at_k, wilson_interval


def test_wilson_interval_hand_values() -> None:
    # 0/10, z = 1.96: centre = (0 + 1.9208/10) / (1 + 3.8416/10) = 0.19208 / 1.38416 = 0.1387701;
    # half = 1.96 * sqrt(0 + 3.8416/400) / 1.38416 = 1.96 * 0.098 / 1.38416 = 0.1387701 -> [0, 0.2775402]
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775402, abs=1e-6)
    # 5/10: centre = (0.5 + 0.19208) / 1.38416 = 0.5; half = 1.96 * sqrt(0.025 + 0.009604) / 1.38416
    #      = 1.96 * 0.1860215 / 1.38416 = 0.2634104 -> [0.2365896, 0.7634104]
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2365896, abs=1e-6)
    assert high == pytest.approx(0.7634104, abs=1e-6)
    # 10/10 mirrors 0/10
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(1 - 0.2775402, abs=1e-6)
    assert high == 1.0


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(30, 100, z=0.0)  # z = 0: the interval collapses to p
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(8, 0, 1) == 0.0
    assert pass_at_k(8, 2, 1) == pytest.approx(2 / 8)  # pass@1 = c / n
    # n = 4, c = 1, k = 2: 1 - C(3, 2) / C(4, 2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n = 10, c = 3, k = 5: 1 - C(7, 5) / C(10, 5) = 1 - 21/252 = 11/12
    assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12)
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every draw of 3 holds a correct one
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def test_mean_pass_at_k() -> None:
    # problems with 0, 1 and 4 of 4 correct, k = 2: (0 + 0.5 + 1) / 3
    assert mean_pass_at_k([0, 1, 4], n=4, k=2) == pytest.approx(0.5)


def test_mean_ci_hand_values() -> None:
    # values 1, 2, 3: mean 2, s = 1, half = 1.96 / sqrt(3) = 1.131607
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert low == pytest.approx(2 - 1.96 / math.sqrt(3))
    assert high == pytest.approx(2 + 1.96 / math.sqrt(3))
    assert mean_ci([4.0]) == (4.0, 4.0, 4.0)


def test_mcnemar_exact_hand_values() -> None:
    # 1 vs 5 discordant: P(Bin(6, 1/2) <= 1) = 7/64; two-sided 14/64
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # 0 vs 10: 2 / 1024
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
