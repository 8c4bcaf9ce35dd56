"""Solve-vs-verify budget split."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testtime.errors import UserError
from testtime.verifiers.allocation import split_budget


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def test_solutions_scale_faster_than_verifications_with_the_default_exponents() -> None:
    budgets = [1e5 * 2**i for i in range(10)]
    splits = [split_budget(c, solution_cost=500, verification_cost=300, fill=False) for c in budgets]
    s_slope = _slope(budgets, [s.solutions for s in splits])
    v_slope = _slope(budgets, [s.verifications for s in splits])
    # Growth rates follow a : b = 0.57 : 0.39, i.e. about C^0.59 and C^0.41.
    assert s_slope == pytest.approx(0.57 / 0.96, abs=0.05)
    assert v_slope == pytest.approx(0.39 / 0.96, abs=0.05)


def test_exponents_are_overridable() -> None:
    verify_heavy = split_budget(1e6, solution_cost=500, verification_cost=300,
                                solution_exponent=0.3, verification_exponent=0.7, fill=False)
    default = split_budget(1e6, solution_cost=500, verification_cost=300, fill=False)
    assert verify_heavy.verifications > default.verifications
    assert verify_heavy.solutions < default.solutions


@given(total=st.floats(0, 1e7), sc=st.floats(1, 5000), vc=st.floats(1, 5000), fill=st.booleans())
def test_split_never_exceeds_the_budget(total: float, sc: float, vc: float, fill: bool) -> None:
    s = split_budget(total, solution_cost=sc, verification_cost=vc, fill=fill)
    assert s.total_tokens <= total + 1e-6
    assert s.leftover_tokens == pytest.approx(total - s.total_tokens)
    assert s.solutions >= 0 and s.verifications >= 0


def test_tiny_budgets_fall_back_to_pure_solving() -> None:
    s = split_budget(1200, solution_cost=500, verification_cost=800)
    assert (s.solutions, s.verifications) == (2, 0)
    assert split_budget(100, solution_cost=500, verification_cost=1).solutions == 0


def test_fill_spends_leftover_on_solutions_and_cap_is_respected() -> None:
    plain = split_budget(50_000, solution_cost=500, verification_cost=300, fill=False)
    filled = split_budget(50_000, solution_cost=500, verification_cost=300)
    assert filled.solutions >= plain.solutions and filled.leftover_tokens <= plain.leftover_tokens
    assert split_budget(1e7, solution_cost=10, verification_cost=10, max_solutions=16).solutions == 16


def test_bad_inputs_are_user_errors() -> None:
    with pytest.raises(UserError):
        split_budget(100, solution_cost=0, verification_cost=1)
    with pytest.raises(UserError):
        split_budget(100, solution_cost=1, verification_cost=1, solution_exponent=-1)
