"""Helpers for step-level search tests: a RunContext around scripted fakes."""

from __future__ import annotations

import random

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.models.base import Model
from testtime.search.base import Problem

PROBLEM = Problem(question="What is 2+3?", answer="5", id="p1")


def make_ctx(model: Model, *, prm=None, verifier=None, budget: str | Budget | None = None,
             seed: int = 0, **kw) -> RunContext:
    """A seeded context; ``budget`` is a spec string like ``"tokens=2k"``."""
    limits = budget if isinstance(budget, Budget) else Budget.parse(budget)
    return RunContext(model=model, prm=prm, verifier=verifier, ledger=BudgetLedger(limits),
                      rng=random.Random(seed), seed=seed, **kw)


def within_budget(ctx: RunContext) -> bool:
    """spent <= limit on every limited dimension and no open reservation."""
    for dim, lim in ctx.ledger.budget.limits().items():
        if dim != "seconds" and ctx.ledger.spent(dim) > lim + 1e-9:
            return False
    return ctx.ledger.open_reservations() == 0
