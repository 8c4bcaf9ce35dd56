"""Property tests: the budget invariant under concurrency, failures and cancellation.

For random limits, >= 100 concurrent fake model calls with random usage,
random failures and random cancellations: spent <= limit on every limited
dimension, and no reservation is left open.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testtime.budget import DIMENSIONS, Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import BudgetExhausted, ModelAPIError
from testtime.models.base import Generation, GenerationRequest
from testtime.models.prices import Price
from testtime.models.scripted import FunctionModel

limits = st.fixed_dictionaries(
    {},
    optional={
        "tokens": st.integers(0, 5000),
        "input_tokens": st.integers(0, 3000),
        "output_tokens": st.integers(0, 3000),
        "calls": st.integers(0, 150),
        "usd": st.floats(0, 0.05, allow_nan=False),
    },
)


def _model(seed: int, fail_rate: float) -> FunctionModel:
    rng = random.Random(seed)
    holder: dict[str, FunctionModel] = {}

    async def reply(req: GenerationRequest) -> Generation:
        await asyncio.sleep(rng.random() * 0.002)
        if rng.random() < fail_rate:
            raise ModelAPIError("injected failure", retryable=True)
        m = holder["m"]
        out = rng.randint(0, req.max_tokens)
        return Generation(text="x " * out, usage=m.usage(m.input_upper_bound(req) - rng.randint(0, 3), out))

    model = FunctionModel(reply, price=Price(input=1.0, output=3.0))
    holder["m"] = model
    return model


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lim=limits,
    n_calls=st.integers(100, 160),
    seed=st.integers(0, 10_000),
    fail_rate=st.floats(0, 0.3),
    cancel_rate=st.floats(0, 0.3),
    use_child=st.booleans(),
)
def test_spent_never_exceeds_limit_under_concurrency(lim, n_calls, seed, fail_rate, cancel_rate, use_child):
    root = BudgetLedger(Budget(**lim))
    ledger = root.share(0.7, name="stage") if use_child and not root.budget.is_unlimited() else root
    ctx = RunContext(model=_model(seed, fail_rate), ledger=ledger)
    rng = random.Random(seed)

    async def one(i: int) -> str:
        req = GenerationRequest(prompt=f"question {i} " + "w " * rng.randint(0, 20),
                                n=rng.randint(1, 3), max_tokens=rng.randint(1, 60))
        try:
            await ctx.generate(req, role=rng.choice(["solve", "verify"]))
            return "ok"
        except BudgetExhausted:
            return "refused"
        except ModelAPIError:
            return "failed"

    async def main() -> list[object]:
        tasks = [asyncio.create_task(one(i)) for i in range(n_calls)]
        await asyncio.sleep(0)
        for t in tasks:
            if rng.random() < cancel_rate:
                asyncio.get_running_loop().call_later(rng.random() * 0.003, t.cancel)
        return await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    for node in {root, ledger}:
        for dim in DIMENSIONS:
            limit = node.limit(dim)
            if limit is not None and dim != "seconds":
                assert node.spent(dim) <= limit + 1e-9, (dim, node.spent(dim), limit)
            assert node.reserved(dim) == 0, (dim, node.reserved(dim))
        assert node.open_reservations() == 0
    # Children's spend is included in the parent's.
    assert root.usage.tokens == ledger.usage.tokens
