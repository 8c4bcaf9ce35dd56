"""Traces of real runs on the seeded simulator, for the trace tests."""

from __future__ import annotations

from pathlib import Path

import testtime


def sim_trace(path: Path, strategy: str = "beam", *, budget: str = "tokens=3000", seed: int = 1,
              question: str = "What is 17+25?", **kwargs) -> testtime.Result:
    """Run ``strategy`` on model sim with the calibrated sim PRM, tracing to ``path``."""
    kwargs.setdefault("prm", "sim:calibrated")
    return testtime.run(question, model="sim", strategy=strategy, budget=budget, seed=seed,
                        trace=str(path), **kwargs)


async def asim_trace(path: Path, strategy: str = "beam", *, budget: str = "tokens=3000", seed: int = 1,
                     question: str = "What is 17+25?", **kwargs) -> testtime.Result:
    """:func:`sim_trace` for tests already inside an event loop."""
    kwargs.setdefault("prm", "sim:calibrated")
    return await testtime.arun(question, model="sim", strategy=strategy, budget=budget, seed=seed,
                               trace=str(path), **kwargs)
