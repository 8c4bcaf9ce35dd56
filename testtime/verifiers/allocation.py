"""Solve-vs-verify budget split: how many solutions, how many verifications each.

"When To Solve, When To Verify" finds that at a fixed budget the
compute-optimal number of solutions grows about as ``C^0.57`` and the number
of verifications per solution about as ``C^0.39``: scale solutions faster than
verifications. :func:`split_budget` turns that law into integers for a token
budget.

Normalisation. Solutions and verifications follow one growth path indexed
by a compute scale ``x``::

    S(x) = s0 * x**a        V(x) = v0 * x**b        (a = 0.57, b = 0.39)

(``s0 = v0 = 1`` by default: one solution, one verification at ``x = 1``),
and we take the largest ``x`` whose cost fits the budget, with

    cost(S, V) = S * solution_cost + S * V * verification_cost.

Once verification dominates the cost, ``C ~ x**(a+b)``, so ``S ~
C**(a/(a+b))`` and ``V ~ C**(b/(a+b))``: the ratio of the two growth rates
is exactly ``a : b``; with the defaults (``a + b = 0.96``) that is ``S ~
C^0.59`` and ``V ~ C^0.41``. Budget the path leaves unspent (it moves in
integer steps) goes to extra solutions when ``fill`` is on. When not even one
solution with ``min_verifications`` verifications fits, the split is pure
solving (``V = 0``): at tiny budgets self-consistency beats verification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from testtime.errors import UserError

#: Reported compute-optimal exponents (solutions, verifications per solution).
SOLUTION_EXPONENT = 0.57
VERIFICATION_EXPONENT = 0.39


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveVerifySplit:
    """A split of a token budget between solving and verifying.

    Attributes:
        solutions: number of solutions to sample (S).
        verifications: verifications per solution (V).
        solve_tokens / verify_tokens: their expected cost.
        leftover_tokens: budget left unallocated.
    """

    solutions: int
    verifications: int
    solve_tokens: float
    verify_tokens: float
    leftover_tokens: float

    @property
    def total_tokens(self) -> float:
        return self.solve_tokens + self.verify_tokens


def _cost(s: int, v: int, sc: float, vc: float) -> float:
    return s * sc + s * v * vc


def split_budget(total_tokens: float, *, solution_cost: float, verification_cost: float,
                 solution_exponent: float = SOLUTION_EXPONENT,
                 verification_exponent: float = VERIFICATION_EXPONENT,
                 base_solutions: float = 1.0, base_verifications: float = 1.0,
                 min_verifications: int = 1, max_solutions: int | None = None,
                 fill: bool = True) -> SolveVerifySplit:
    """Choose S solutions and V verifications per solution within ``total_tokens``.

    Args:
        total_tokens: the budget to split.
        solution_cost: expected tokens of one solution (prompt + output).
        verification_cost: expected tokens of one verification.
        solution_exponent / verification_exponent: growth exponents a, b.
        base_solutions / base_verifications: s0, v0 of the growth path.
        min_verifications: below this V the split falls back to pure solving.
        max_solutions: cap on S (e.g. what the strategy can use).
        fill: spend what the path leaves on extra solutions.

    Returns:
        A :class:`SolveVerifySplit` whose ``total_tokens <= total_tokens``.

    Raises:
        UserError: non-positive costs, negative exponents or budget.
    """
    if solution_cost <= 0 or verification_cost <= 0:
        raise UserError(f"solution_cost and verification_cost must be > 0, got {solution_cost}, {verification_cost}")
    if solution_exponent < 0 or verification_exponent < 0 or solution_exponent + verification_exponent <= 0:
        raise UserError("exponents must be >= 0 and not both 0")
    if total_tokens < 0 or base_solutions <= 0 or base_verifications <= 0 or min_verifications < 0:
        raise UserError("total_tokens, base_* and min_verifications must be non-negative (bases > 0)")
    cap = max_solutions if max_solutions is not None else math.inf
    sc, vc = float(solution_cost), float(verification_cost)

    def at(x: float) -> tuple[int, int]:
        s = max(1, math.floor(base_solutions * x ** solution_exponent + 1e-9))
        v = max(min_verifications, math.floor(base_verifications * x ** verification_exponent + 1e-9))
        return int(min(s, cap)), v

    s0, v0 = at(1.0)
    if _cost(s0, v0, sc, vc) > total_tokens:
        s = int(min(cap, total_tokens // sc))
        return SolveVerifySplit(solutions=s, verifications=0, solve_tokens=s * sc, verify_tokens=0.0,
                                leftover_tokens=total_tokens - s * sc)
    lo, hi = 1.0, 2.0
    while _cost(*at(hi), sc, vc) <= total_tokens and hi < 1e18:
        lo, hi = hi, hi * 2
    for _ in range(200):  # bisection on the compute scale x
        mid = (lo + hi) / 2
        if _cost(*at(mid), sc, vc) <= total_tokens:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * hi:
            break
    s, v = at(lo)
    if fill:
        while s < cap and _cost(s + 1, v, sc, vc) <= total_tokens:
            s += 1
    spent = _cost(s, v, sc, vc)
    return SolveVerifySplit(solutions=s, verifications=v, solve_tokens=s * sc,
                            verify_tokens=s * v * vc, leftover_tokens=total_tokens - spent)


__all__ = ["SOLUTION_EXPONENT", "VERIFICATION_EXPONENT", "SolveVerifySplit", "split_budget"]
