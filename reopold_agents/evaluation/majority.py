"""maj@k: accuracy of the majority-voted answer among k samples, as an exact expectation over k-subsets.

Definition (used everywhere in this project):
    Draw k of the n samples uniformly without replacement. Samples whose answer could not be extracted
    abstain. The answer with the most votes wins; a tie among t answers is broken uniformly at random, so
    each tied answer wins with probability 1/t. If every drawn sample abstains, the vote is wrong.
    maj@k is the expected correctness of the winner over all C(n, k) subsets and tie-breaks.

Like unbiased pass@k, this averages over subsets instead of using "the first k samples", so the
scaling curve is smooth and does not depend on sample order. maj@n is the plain vote over all samples
(ties split evenly), and maj@1 equals pass@1 when each answer group is uniformly right or wrong.

The exact value is a dynamic programme over answer groups (no enumeration of subsets).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

MAX_SAMPLES = 1000  # C(n, k) must stay inside float64's range


@dataclass(frozen=True)
class AnswerGroup:
    """All samples that gave one (normalised) answer: ``count`` votes, ``credit`` = fraction correct."""

    key: Hashable
    count: int
    credit: float


def group_answers(keys: Sequence[Hashable | None], correct: Sequence[bool | float]) -> tuple[list[AnswerGroup], int]:
    """Group samples by answer key; returns (groups in first-seen order, number of abstaining samples).

    A group's credit is the mean correctness of its members: 1 or 0 whenever the verifier is consistent
    per answer, a fraction otherwise (the expected correctness of a randomly picked representative).
    """
    if len(keys) != len(correct):
        raise ValueError(f"keys and correct differ in length ({len(keys)} vs {len(correct)})")
    members: OrderedDict[Hashable, list[float]] = OrderedDict()
    abstain = 0
    for key, ok in zip(keys, correct):
        if key is None:
            abstain += 1
        else:
            members.setdefault(key, []).append(float(ok))
    groups = [AnswerGroup(k, len(v), sum(v) / len(v)) for k, v in members.items()]
    return groups, abstain


def _ways_target_wins(target: AnswerGroup, others: list[AnswerGroup], abstain: int, k: int) -> float:
    """Sum over k-subsets in which ``target`` is among the winners of 1/(number of tied winners)."""
    total = 0.0
    for j in range(1, min(k, target.count) + 1):  # votes the target gets in the subset
        # ways[s, t]: ways to pick s samples from the other groups, each with <= j votes, t of them == j.
        ways = np.zeros((k + 1, len(others) + 1))
        ways[0, 0] = 1.0
        for grp in others:
            new = ways.copy()  # x = 0 votes from this group
            for x in range(1, min(j, grp.count) + 1):
                coef = float(math.comb(grp.count, x))
                if x < j:
                    new[x:, :] += ways[: k + 1 - x, :] * coef
                else:
                    new[x:, 1:] += ways[: k + 1 - x, :-1] * coef
            ways = new
        rest = k - j
        fill = np.array([math.comb(abstain, rest - s) if rest - s >= 0 else 0 for s in range(k + 1)], dtype=float)
        per_ties = (ways * fill[:, None]).sum(axis=0)  # [t]
        tie_weight = 1.0 / np.arange(1, len(others) + 2)
        total += math.comb(target.count, j) * float((per_ties * tie_weight).sum())
    return total


def maj_at_k_groups(groups: Sequence[AnswerGroup], abstain: int, k: int) -> float:
    """maj@k from answer groups (see the module docstring for the definition)."""
    n = sum(g.count for g in groups) + abstain
    if n < 1:
        raise ValueError("n: need at least one sample")
    if not 1 <= k <= n:
        raise ValueError(f"k: must be in [1, n={n}], got {k}")
    if n > MAX_SAMPLES:
        raise ValueError(f"n: maj@k supports at most {MAX_SAMPLES} samples per task, got {n}")
    if k == n:  # one subset: the plain vote
        if not groups:
            return 0.0
        top = max(g.count for g in groups)
        winners = [g for g in groups if g.count == top]
        return sum(g.credit for g in winners) / len(winners)
    score = 0.0
    for i, target in enumerate(groups):
        if target.credit == 0.0:
            continue
        others = [g for idx, g in enumerate(groups) if idx != i]
        score += target.credit * _ways_target_wins(target, others, abstain, k)
    return min(1.0, max(0.0, score / math.comb(n, k)))


def maj_at_k(keys: Sequence[Hashable | None], correct: Sequence[bool | float], k: int) -> float:
    """maj@k of one task from per-sample answer keys (None = no answer extracted) and correctness."""
    groups, abstain = group_answers(keys, correct)
    return maj_at_k_groups(groups, abstain, k)
