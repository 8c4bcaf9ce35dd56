"""The report's statistics against brute force and known values."""

from __future__ import annotations

import itertools
import math

import pytest

from testtime.benchmark.stats import (
    best_of_majority_top_k,
    bom_pass_at_k,
    cost_to_reach,
    ks_for,
    pass_at_k,
    wilson_interval,
)


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (5, 2), (10, 3), (10, 10), (7, 0), (12, 11)])
def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_correct_sample(n: int, c: int) -> None:
    flags = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(flags, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_refuses_k_above_n() -> None:
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # textbook 95% Wilson for 8/10
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_ks_for_powers_of_two_and_n() -> None:
    assert ks_for(1) == [1]
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(11) == [1, 2, 4, 8, 11]
    assert ks_for(0) == []


def test_best_of_majority_filters_rare_answers_then_ranks_by_reward() -> None:
    samples = ([{"answer": "7", "score": 0.4, "correct": True}] * 3
               + [{"answer": "9", "score": 0.6, "correct": False}] * 3
               + [{"answer": "1", "score": 0.99, "correct": False}])  # rare: filtered at threshold 0.2
    assert best_of_majority_top_k(samples, 1) == ["9"]
    assert best_of_majority_top_k(samples, 2) == ["9", "7"]
    assert not bom_pass_at_k(samples, 1)
    assert bom_pass_at_k(samples, 2)
    # Without scores the ranking is by frequency.
    unscored = [{"answer": "a"}] * 2 + [{"answer": "b"}] * 3
    assert best_of_majority_top_k(unscored, 1) == ["b"]
    assert best_of_majority_top_k([{"answer": None}], 1) == []


def test_cost_to_reach_interpolates_on_log_spend() -> None:
    pts = [(100.0, 0.2), (1000.0, 0.6), (10000.0, 0.8)]
    spend, exact = cost_to_reach(pts, 0.4)
    assert exact and spend == pytest.approx(math.sqrt(100 * 1000))  # halfway on log scale
    assert cost_to_reach(pts, 0.9) == (None, False)
    assert cost_to_reach(pts, 0.1) == (100.0, False)  # already there at the cheapest point
    # A dip does not make a larger budget worse than a smaller one (running max).
    assert cost_to_reach([(10.0, 0.5), (100.0, 0.3), (1000.0, 0.7)], 0.5) == (10.0, False)
