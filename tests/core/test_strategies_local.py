"""Every registered strategy runs on the embedded model (plumbing, not quality).

SmolLM2-135M cannot do arithmetic, so answers may be wrong; what must hold is
that each strategy runs end to end on a real backend, spends only what the
budget allows, and reports why it stopped. One process, so the model loads once.
"""

from __future__ import annotations

import pytest

import testtime
from testtime.search.registry import available_strategies, get_strategy_class

pytestmark = pytest.mark.slow

BUDGET = "tokens=700"


@pytest.mark.parametrize("name", available_strategies())
async def test_strategy_runs_on_the_embedded_model(name: str) -> None:
    cls = get_strategy_class(name)
    kwargs: dict[str, object] = {}
    if cls.needs_prm or name in {"weighted_self_consistency", "best_of_n", "best_of_majority"}:
        kwargs["prm"] = "prm:confidence"
    if name == "solve_detect_verify":
        kwargs["verifier"] = "math"
    result = await testtime.arun(
        testtime.Problem(question="What is 2 + 3?", answer="5"),
        model="local", strategy=name, budget=BUDGET, seed=0, max_tokens=40, **kwargs,
    )
    assert result.usage["tokens"] <= 700
    assert result.usage["calls"] >= 1
    assert result.stopped_reason in {"done", "budget_exhausted", "verified"}
    assert result.strategy == name
