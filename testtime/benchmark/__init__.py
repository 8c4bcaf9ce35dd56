"""``testtime bench``: strategies compared on one ledger over datasets, HumanEval or the simulator.

One bench path: a dataset source (:mod:`~testtime.benchmark.sources`) -> an
executor (local asyncio in :mod:`~testtime.benchmark.sweep`, Ray in
:mod:`~testtime.benchmark.ray_exec`) -> the append-only results store
(:mod:`~testtime.benchmark.store`) -> reports and plots drawn from the store
only (:mod:`~testtime.benchmark.report`, :mod:`~testtime.benchmark.plots`).

Python API::

    from testtime.benchmark import SweepSpec, run_sweep
    outcome = run_sweep(SweepSpec(dataset="data.jsonl", model="openai:my-model", strategies="single,best_of_n",
                                  budgets="tokens=2k,8k", out="results/"))
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "SweepSpec": "testtime.benchmark.sweep",
    "SweepOutcome": "testtime.benchmark.sweep",
    "run_sweep": "testtime.benchmark.sweep",
    "plan_sweep": "testtime.benchmark.sweep",
    "ResultsStore": "testtime.benchmark.store",
    "write_report": "testtime.benchmark.report",
    "summarize": "testtime.benchmark.report",
    "load_source": "testtime.benchmark.sources",
    "pass_at_k": "testtime.benchmark.stats",
    "wilson_interval": "testtime.benchmark.stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: `testtime bench --help` should not import the whole sweep machinery.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'testtime.benchmark' has no attribute {name!r}")
