"""pass@k / maj@k against hand-computed values and brute-force enumeration of k-subsets."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from reopold_agents.evaluation.answers import extract_answer, normalize_answer, vote_key
from reopold_agents.evaluation.majority import maj_at_k
from reopold_agents.evaluation.passk import pass_at_1, pass_at_k, scaling_ks


def brute_pass_at_k(correct: list[bool], k: int) -> Fraction:
    subsets = list(itertools.combinations(range(len(correct)), k))
    return Fraction(sum(any(correct[i] for i in s) for s in subsets), len(subsets))


def brute_maj_at_k(keys: list, correct: list, k: int) -> Fraction:
    """Enumerate every k-subset; ties split evenly; abstentions (None) do not vote."""
    total, subsets = Fraction(0), list(itertools.combinations(range(len(keys)), k))
    for sub in subsets:
        votes: dict = {}
        for i in sub:
            if keys[i] is not None:
                votes.setdefault(keys[i], []).append(Fraction(int(correct[i])))
        if not votes:
            continue
        top = max(len(v) for v in votes.values())
        winners = [v for v in votes.values() if len(v) == top]
        total += sum(sum(v) / len(v) for v in winners) / len(winners)
    return total / len(subsets)


def test_pass_at_k_hand_computed():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # only 1 wrong sample: every pair holds a correct one
    assert pass_at_1([True, False, False, True]) == 0.5


def test_pass_at_k_matches_enumeration_and_closed_form():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 10)
        correct = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(correct), k) == pytest.approx(float(brute_pass_at_k(correct, k)), abs=1e-12)


def test_pass_at_k_numerically_stable_for_large_n():
    n, c, k = 10_000, 3, 5000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert 0.0 <= pass_at_k(1000, 1, 1) <= 1.0


@pytest.mark.parametrize("bad", [(0, 0, 1), (4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)])
def test_pass_at_k_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        pass_at_k(*bad)


def test_maj_at_k_hand_computed():
    # Plain vote over all samples: "a" (correct) wins 3 to 1.
    assert maj_at_k(["a", "a", "a", "b"], [1, 1, 1, 0], 4) == 1.0
    # Tie 2-2 between correct "a" and wrong "b": broken uniformly -> 1/2.
    assert maj_at_k(["a", "a", "b", "b"], [1, 1, 0, 0], 4) == pytest.approx(0.5)
    # k=2 over [a, a, b]: subsets {a,a}->1, {a,b}->1/2 (twice) => (1 + 0.5 + 0.5)/3.
    assert maj_at_k(["a", "a", "b"], [1, 1, 0], 2) == pytest.approx(2 / 3)
    # Abstentions do not vote; a subset of only abstentions is wrong.
    assert maj_at_k([None, None, "a"], [0, 0, 1], 2) == pytest.approx(2 / 3)
    assert maj_at_k([None, None], [0, 0], 1) == 0.0
    # The wrong answer has a plurality: 3 "b" vs 2 "a".
    assert maj_at_k(["a", "a", "b", "b", "b"], [1, 1, 0, 0, 0], 5) == 0.0
    # maj@1 equals pass@1.
    assert maj_at_k(["a", "b", "c", "a"], [1, 0, 0, 1], 1) == pytest.approx(0.5)


def test_maj_at_k_matches_brute_force_enumeration():
    rng = random.Random(1)
    for _ in range(250):
        n = rng.randint(1, 9)
        keys = [rng.choice([None, "a", "b", "c", "d"]) for _ in range(n)]
        # Mostly consistent verdicts per answer, sometimes mixed (credit becomes a fraction).
        correct = [(k == "a") if rng.random() < 0.85 else rng.random() < 0.5 for k in keys]
        for k in range(1, n + 1):
            assert maj_at_k(keys, correct, k) == pytest.approx(float(brute_maj_at_k(keys, correct, k)), abs=1e-12)


def test_maj_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k"):
        maj_at_k(["a"], [1], 2)
    with pytest.raises(ValueError, match="length"):
        maj_at_k(["a", "b"], [1], 1)


def test_scaling_ks():
    assert scaling_ks(1) == [1]
    assert scaling_ks(8) == [1, 2, 4, 8]
    assert scaling_ks(6) == [1, 2, 4, 6]


def test_answer_extraction_and_normalisation():
    assert extract_answer(r"so x = \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_answer(r"\boxed{a} then \boxed{\sqrt{4}}") == r"\sqrt{4}"
    assert extract_answer("<answer>Paris</answer>") == "Paris"
    assert extract_answer("I think 3 then 7") is None  # not in the envs' answer format: abstains
    assert extract_answer("no idea") is None
    assert normalize_answer(r"\frac{1}{2}") == normalize_answer("0.50") == "1/2"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer(" Paris. ") == "paris"
    assert normalize_answer("") is None
    # Verified-correct samples vote for the gold key, whatever their surface form.
    assert vote_key("0.5", True, r"\frac{1}{2}") == vote_key("1/2", True, "0.5")
    assert vote_key(None, False, "3") is None
