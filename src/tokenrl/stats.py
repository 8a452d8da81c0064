"""Small pure statistics for evaluations: intervals for accuracies, pass@k, a paired test.

Every function takes plain numbers and returns plain numbers; nothing here knows about models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

__all__ = ["mcnemar_exact", "mean_ci", "mean_pass_at_k", "pass_at_k", "wilson_interval"]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a proportion ``successes / n``.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not zero-width at 0/n or
    n/n, which matters for the near-0% accuracies of small models. ``n = 0`` gives ``(0, 1)``.
    Wilson (1927), https://doi.org/10.1080/01621459.1927.10502953
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(
            f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}"
        )
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clamp: at p = 0 or 1 rounding can leave the bound a hair outside [0, 1]
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    The probability that ``k`` samples drawn without replacement from the ``n`` contain at least
    one correct one. Chen et al. 2021, https://arxiv.org/abs/2107.03374 (eq. 1). Computed
    exactly with integers, so large ``n`` does not lose precision.
    """
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems; ``correct_counts[i]`` = correct samples of problem ``i``
    out of ``n`` samples each."""
    if not correct_counts:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


def mean_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and a normal-approximation interval
    ``mean -/+ z * s / sqrt(len)`` with ``s`` the sample standard deviation (ddof = 1).

    For a single value the interval is ``(mean, mean)``: there is no spread to estimate.
    Use :func:`wilson_interval` for 0/1 outcomes instead.
    """
    if not values:
        raise ValueError("mean_ci needs at least one value")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, mean, mean
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    half = z * math.sqrt(var / len(values))
    return mean, mean - half, mean + half


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes on the same problems.

    ``only_a`` = problems system A got right and B wrong, ``only_b`` = the reverse; problems both
    got right or both wrong carry no information. Under "no difference" the discordant problems
    split like fair coin flips, so p = min(1, 2 * P(Binomial(only_a + only_b, 1/2) <= min)).
    Use it to say whether RL changed accuracy on a fixed test set.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"mcnemar_exact needs counts >= 0, got {only_a}, {only_b}")
    m = only_a + only_b
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, float(2 * Fraction(tail, 2**m)))
