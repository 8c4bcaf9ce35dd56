"""Every registered strategy's trace has search nodes, and each ends up with a numeric score.

Scores may come on ``node_added`` or on a later ``node_scored`` (the trace
index applies both). Runs on model sim with the calibrated sim PRM (and the
math verifier for strategies that need one) at a small budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trace.sim_traces import sim_trace
from testtime.errors import UserError
from testtime.search.registry import available_strategies
from testtime.trace.index import TraceIndex


@pytest.mark.parametrize("strategy", available_strategies())
def test_every_node_of_the_strategys_trace_carries_a_numeric_score(tmp_path: Path, strategy: str):
    path = tmp_path / "t.jsonl"
    try:
        sim_trace(path, strategy, budget="tokens=3000")
    except UserError as exc:
        if "verifier" not in str(exc):
            raise
        sim_trace(path, strategy, budget="tokens=3000", verifier="math")
    idx = TraceIndex.from_file(path)
    nodes = list(idx.nodes.values())
    assert nodes, f"{strategy} traced no search nodes: the browser and `trace render` show nothing of it"
    unscored = [f"#{n.node}" for n in nodes if n.score is None]
    assert not unscored, f"{strategy}: {len(unscored)} of {len(nodes)} nodes have no score: {unscored[:10]}"
