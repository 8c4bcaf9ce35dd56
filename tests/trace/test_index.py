"""The trace index behind `trace browse`, node_scored updates, trace versions and old traces."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from tests.trace.sim_traces import sim_trace
from testtime.cli import main
from testtime.trace.events import TRACE_VERSION, Tracer
from testtime.trace.index import Follower, TraceIndex
from testtime.trace.jsonl import JsonlWriter, read_events
from testtime.trace.render import render

V1 = Path(__file__).parent / "data" / "trace_v1_beam.jsonl"


def _show(events) -> str:
    buf = io.StringIO()
    Console(file=buf, width=250, color_system=None).print(render(events))
    return buf.getvalue()


def _synthetic(path: Path) -> None:
    """MCTS-, A*- and PF-like nodes whose numbers arrive after them (node_scored)."""
    tracer = Tracer("synthrun", [JsonlWriter(path)])
    tracer.emit("run_start", question="q", strategy="mcts", model="sim", budget={"tokens": 100})
    tracer.emit("strategy_start", strategy="mcts", params={})
    tracer.emit("node_added", node=1, parent=0, step=1, score=None, tokens=5, text="first step")
    tracer.emit("node_added", node=2, parent=1, step=2, score=None, tokens=7, text="second step", terminal=True)
    tracer.emit("node_scored", node=1, score=0.625, visits=3, q=0.5, prior=0.25)
    tracer.emit("node_scored", node=2, score=0.875, step_scores=[0.625, 0.875])
    tracer.emit("node_scored", node=1, visits=4, q=0.55)  # no score: the earlier one stays
    tracer.emit("node_selected", node=2, reason="final")
    tracer.emit("strategy_end", strategy="mcts", answer="4", stopped_reason="done")
    tracer.emit("strategy_start", strategy="astar", params={})
    tracer.emit("node_added", node=1, parent=0, step=1, score=0.5, tokens=3, text="astar step", f=1.25, g=1.0,
                h=0.25)
    tracer.emit("node_added", node=2, parent=1, step=2, score=0.4, tokens=3, text="pf step")
    tracer.emit("node_scored", node=2, weight=0.125)
    tracer.emit("strategy_end", strategy="astar", answer="4", stopped_reason="done")
    tracer.emit("run_end", answer="4", stopped_reason="done", usage={"tokens": 10})
    tracer.sinks[0].close()


def test_node_scored_updates_reach_trace_show_with_mcts_astar_and_pf_numbers(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    _synthetic(path)
    out = _show(read_events(path))
    assert "#1 step 1 score=0.625 N=4 Q=0.550 P=0.250" in out
    assert "#2 step 2 score=0.875" in out
    assert "score=0.500 f=1.250 g=1.000 h=0.250" in out
    assert "score=0.400 w=0.125" in out
    assert "score=-" not in out


def test_index_applies_node_scored_and_keeps_earlier_score(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    _synthetic(path)
    idx = TraceIndex.from_file(path)
    n1 = idx.nodes["(run)#0:1"]
    assert n1.numbers == {"score": 0.625, "visits": 4.0, "q": 0.55, "prior": 0.25}
    assert idx.nodes["(run)#0:2"].step_scores == [0.625, 0.875]
    assert idx.answer_node().key == "(run)#0:2"
    assert idx.best_node().key == "(run)#0:2"
    assert [n.key for n in idx.search("visits>=4")] == ["(run)#0:1"]
    assert [n.key for n in idx.search("f<2")] == ["(run)#1:1"]
    assert [n.key for n in idx.search("PF STEP")] == ["(run)#1:2"]
    detail = idx.detail("node:(run)#0:2")
    assert "score: 0.875" in detail and "step scores: 0.625, 0.875" in detail and "selected: final" in detail
    assert detail.rstrip().endswith("second step")


def test_run_start_carries_trace_version_and_start_time(tmp_path: Path):
    sim_trace(tmp_path / "t.jsonl", budget="tokens=800")
    start = read_events(tmp_path / "t.jsonl")[0]
    assert start["kind"] == "run_start"
    assert start["trace_version"] == TRACE_VERSION == 2
    assert isinstance(start["started_at"], float) and start["started_at"] > 1.6e9
    assert TraceIndex.from_file(tmp_path / "t.jsonl").version == 2


def test_tracer_accepts_kinds_it_does_not_know(tmp_path: Path):
    seen = []
    Tracer("r", [seen.append]).emit("made_up_kind", x=1)
    assert seen[0].kind == "made_up_kind" and seen[0].data == {"x": 1}
    idx = TraceIndex.from_events([{"kind": "made_up_kind", "x": 1}])
    assert idx.unknown_kinds == {"made_up_kind"}


def test_trace_show_still_reads_version_1_traces(capsys):
    assert main(["trace", "show", str(V1)]) == 0
    out = capsys.readouterr().out
    assert "strategy beam" in out and "score=0." in out
    idx = TraceIndex.from_file(V1)
    assert idx.version == 1 and len(idx.nodes) == 6
    assert sum(n.score is not None for n in idx.nodes.values()) == 5  # as written then: one unscored


def test_spend_rows_equal_the_runs_usage_by_role(tmp_path: Path):
    result = sim_trace(tmp_path / "t.jsonl")
    rows = {(r[0], r[1]): r for r in TraceIndex.from_file(tmp_path / "t.jsonl").spend_rows()}
    for role, u in result.usage["by_role"].items():
        _, _, calls, tin, tout, usd, _ = rows[("total", role)]
        assert (calls, tin, tout) == (u["calls"], u["input_tokens"], u["output_tokens"])
        assert abs(usd - u["usd"]) < 1e-9


def test_follower_reads_only_complete_lines_and_restarts_on_rewrite(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    f = Follower(path)
    assert f.read_new() == []  # not there yet
    path.write_text(json.dumps({"kind": "a"}) + "\n" + '{"kind": "b", "x"')
    assert [e["kind"] for e in f.read_new()] == ["a"]
    with open(path, "a") as fh:
        fh.write(': 1}\nnot json\n')
    assert [e["kind"] for e in f.read_new()] == ["b"] and f.skipped == 1
    path.write_text(json.dumps({"kind": "c"}) + "\n")
    assert [e["kind"] for e in f.read_new()] == ["c"]


def test_live_view_takes_scores_that_arrive_after_the_node():
    from testtime.budget import Budget, BudgetLedger
    from testtime.trace.live import LiveView

    view = LiveView(BudgetLedger(Budget(tokens=100)), console=Console(file=io.StringIO(), width=120, height=40))
    tracer = Tracer("r", [view])
    tracer.emit("strategy_start", strategy="mcts", params={})
    tracer.emit("node_added", node=1, parent=0, step=1, score=None, tokens=3, text="x")
    tracer.emit("node_scored", node=1, score=0.75, visits=2, q=0.5)
    assert view.nodes == 1 and view.best_score == 0.75
    view.console.print(view.render())
    assert "score=0.750 N=2 Q=0.500" in view.console.file.getvalue()
