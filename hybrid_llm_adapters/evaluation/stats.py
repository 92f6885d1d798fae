"""Confidence intervals for accuracies measured on small samples."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; unlike the normal interval it stays inside [0, 1] and
    is usable at the sample sizes a 2-core machine affords."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def ratio_interval(a: int, n_a: int, b: int, n_b: int, z: float = 1.96) -> tuple[float, float] | None:
    """Approximate 95 % interval of (a/n_a) / (b/n_b) by the log method (Katz); None when undefined."""
    if min(a, b, n_a, n_b) <= 0:
        return None
    r = (a / n_a) / (b / n_b)
    se = math.sqrt(max(1 / a - 1 / n_a + 1 / b - 1 / n_b, 0.0))
    return (r * math.exp(-z * se), r * math.exp(z * se))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value for paired outcomes: ``only_a`` problems right under A only, ``only_b``
    under B only (the binomial test on the discordant pairs)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)
