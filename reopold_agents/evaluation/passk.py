"""Sampling-based accuracy estimators: pass@1 and the unbiased pass@k of Chen et al. (2021).

Why the estimator and not "any of the first k samples": drawing n >= k samples and averaging over all
k-subsets has far lower variance, and the product form below never forms a huge binomial coefficient.
"""

from __future__ import annotations

from typing import Sequence


def _check(n: int, c: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"n: need at least one sample, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c: number of correct samples must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k: must be in [1, n={n}], got {k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct) when c are correct.

    ``1 - C(n-c, k) / C(n, k)`` computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (numerically stable:
    every factor is in [0, 1], no factorials).
    """
    _check(n, c, k)
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def pass_at_1(correct: Sequence[bool | float]) -> float:
    """Mean success over samples (equals ``pass_at_k(n, c, 1)`` for 0/1 outcomes)."""
    if not correct:
        raise ValueError("correct: need at least one sample")
    return float(sum(float(x) for x in correct) / len(correct))


def scaling_ks(n: int) -> list[int]:
    """The k values of a test-time scaling curve: 1, 2, 4, ... up to n, and n itself."""
    if n < 1:
        raise ValueError(f"n: need at least one sample, got {n}")
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks
