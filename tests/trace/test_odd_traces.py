"""Hand-edited or foreign traces: the index, `trace show`, the span plan and pictures never crash."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from testtime.errors import UserError
from testtime.trace.events import EVENT_KINDS
from testtime.trace.index import TraceIndex
from testtime.trace.otel import plan_spans
from testtime.trace.render import show

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=6)
_fields = ("node", "parent", "step", "score", "tokens", "text", "visits", "q", "f", "weight", "step_scores",
           "usage", "latency_s", "role", "model", "params", "budget", "t", "round", "reason", "answer",
           "strategy", "started_at", "trace_version", "passed", "error")
_event = st.fixed_dictionaries(
    {"kind": st.sampled_from(sorted(EVENT_KINDS) + ["something_new"]),
     "stage": st.none() | st.sampled_from(["a", "b"])},
    optional={k: (st.integers(0, 5) if k in ("node", "parent") else _json) for k in _fields})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_event, max_size=25))
def test_any_events_index_plan_and_show_without_crashing(tmp_path: Path, events):
    idx = TraceIndex.from_events(events)
    for item in idx.items():
        assert isinstance(idx.detail(item.key), str)
    idx.answer_node(), idx.best_node(), idx.chosen_path(), idx.spend_rows(), idx.search("score>0.5")
    plans = plan_spans(events)
    assert plans and all(p.end is not None and p.end >= p.start for p in plans)
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events) or "\n")
    try:
        show(str(path), console=Console(file=io.StringIO(), width=100))
    except UserError as exc:  # the documented outcome when no line is drawable
        assert "no readable trace events" in str(exc) or "empty trace" in str(exc)


def test_junk_usage_is_skipped_by_show_counted_as_zero_by_the_sums_and_huge_numbers_do_not_crash(tmp_path: Path):
    from testtime.trace.index import number
    from testtime.trace.otel import _secs, _usage_attrs
    from testtime.trace.render import collect

    assert number(10**400) is None and number(True) is None and number(float("inf")) is None and number(2) == 2.0
    assert _secs(10**400) == 0.0 and _usage_attrs({"input_tokens": float("inf"), "calls": True}) == {}
    path = tmp_path / "junk.jsonl"
    rows = [{"kind": "run_start", "run_id": "r", "t": 0, "question": "q"},
            {"kind": "model_call", "run_id": "r", "t": 1, "role": "solve",
             "usage": {"calls": "x", "input_tokens": [1], "output_tokens": 7, "usd": 10**400}},
            {"kind": "node_added", "run_id": "r", "t": 2, "node": 1, "score": 10**400},
            {"kind": "stage_end", "run_id": "r", "t": 3, "score": 10**400}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = io.StringIO()
    skipped = show(str(path), console=Console(file=out, width=120))
    assert [line for line, _ in skipped] == [2]  # the junk usage line is skipped and counted
    assert "score=1000000000000000000" in out.getvalue()  # drawn, cut short
    spend = collect(rows)[1]["(run)"].spend["solve"]
    assert (spend.calls, spend.input_tokens, spend.output_tokens, spend.usd) == (0, 0, 7, 0.0)
