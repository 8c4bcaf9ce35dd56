"""Property: every strategy, any budget -> spent <= limit, no open reservation."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.step_fakes import PROBLEM, make_ctx
from testtime.budget import Budget
from testtime.models.prices import Price
from testtime.models.scripted import ScriptedModel
from testtime.search.base import SearchResult
from testtime.search.registry import available_strategies, make_strategy
from testtime.verifiers.scripted import ScriptedPRM, ScriptedVerifier

#: Strategies that search one problem with a model (+ PRM / verifier). Others
#: (multi-stage agents) have their own budget tests.
CANDIDATES = ("single", "self_consistency", "weighted_self_consistency", "best_of_n",
              "best_of_majority", "beam", "dvts", "mcts", "astar", "particle_filter", "entropic_pf")
STRATEGIES = [s for s in CANDIDATES if s in available_strategies()]
STOP_REASONS = {"done", "budget_exhausted", "verified"}


def model() -> ScriptedModel:
    return ScriptedModel(
        {
            "Good-route": ["The answer is 5.", "so more\n\n"],
            "Bad-route": ["The answer is 7.", "hmm longer thinking here\n\n"],
            "*": ["Bad-route one two three\n\n", "Good-route one\n\n", "The answer is 5.",
                  "Good-route\n\nThe answer is 5."],
        },
        price=Price(1.0, 4.0),
    )


budgets = st.fixed_dictionaries(
    {"tokens": st.integers(0, 4000)},
    optional={
        "output_tokens": st.integers(0, 600),
        "calls": st.integers(0, 30),
        "usd": st.floats(0.0, 0.004, allow_nan=False),
    },
)


def test_all_strategies_are_covered() -> None:
    for name in ("mcts", "astar", "particle_filter", "entropic_pf", "single", "self_consistency"):
        assert name in STRATEGIES


@settings(max_examples=12 * len(STRATEGIES), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(STRATEGIES), limits=budgets, seed=st.integers(0, 2**16),
       prm_cost=st.sampled_from([0, 3]), with_verifier=st.booleans(), max_tokens=st.sampled_from([16, 64]))
def test_spent_never_exceeds_the_limit(name: str, limits: dict, seed: int, prm_cost: int,
                                       with_verifier: bool, max_tokens: int) -> None:
    budget = Budget(**limits)
    ctx = make_ctx(model(), budget=budget, seed=seed,
                   prm=ScriptedPRM({"Good": 0.9, "Bad": 0.2, "answer is 5": 0.95}, tokens_per_step=prm_cost),
                   verifier=ScriptedVerifier(reference=True, tokens_per_call=prm_cost) if with_verifier else None,
                   max_tokens=max_tokens, step_max_tokens=8)
    result = asyncio.run(make_strategy(name).search(PROBLEM, ctx))
    assert isinstance(result, SearchResult)
    assert result.stopped_reason in STOP_REASONS
    for dim, lim in budget.limits().items():
        assert ctx.ledger.spent(dim) <= lim + 1e-12, (name, dim, ctx.ledger.spent(dim), lim)
    assert ctx.ledger.open_reservations() == 0
    assert ctx.ledger.reserved("tokens") == 0
