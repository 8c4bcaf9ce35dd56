"""The thinking/answer split in traces: `trace show`, the browser and the live view.

The traces come from real runs of the seeded thinking simulator
(``--model sim:thinking --thinking-budget ... --answer-budget ...``), so
the numbers shown are checked against the run's own ``usage``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from testtime.cli import main
from testtime.trace.browse import TraceBrowser
from testtime.trace.events import Tracer
from testtime.trace.index import TraceIndex
from testtime.trace.jsonl import read_events

V1_TRACE = Path(__file__).parent / "data" / "trace_v1_beam.jsonl"
RUN = ["run", "What is 3+4?", "--model", "sim:thinking", "--thinking-budget", "200", "--answer-budget", "32",
       "--budget", "tokens=4000"]


@pytest.fixture
def wide(monkeypatch):
    # Rich reads the width from COLUMNS: one summary line per line, whole table columns.
    monkeypatch.setenv("COLUMNS", "200")


def _thinking_run(tmp_path: Path, capsys) -> tuple[Path, dict]:
    path = tmp_path / "think.jsonl"
    assert main([*RUN, "--trace", str(path), "--json"]) == 0
    usage = json.loads(capsys.readouterr().out)["usage"]
    return path, usage


@pytest.fixture
def thinking_run(tmp_path: Path, capsys) -> tuple[Path, dict]:
    """A thinking run's trace and usage, made outside the async test's event loop."""
    return _thinking_run(tmp_path, capsys)


def _show(path: Path, capsys) -> str:
    assert main(["trace", "show", str(path)]) == 0
    return capsys.readouterr().out


def test_trace_show_sums_thinking_events_to_the_runs_reasoning_tokens(tmp_path: Path, capsys, wide):
    path, usage = _thinking_run(tmp_path, capsys)
    reasoning = usage["reasoning_tokens"]
    assert reasoning > 0
    events = [e for e in read_events(path) if e["kind"] == "thinking"]
    assert events, "the thinking run emitted no thinking events"
    out = _show(path, capsys)
    line = next(ln for ln in out.splitlines() if ln.startswith("thinking: "))
    m = re.match(r"thinking: (\d+) generations?, ([\d,]+) thinking \+ ([\d,]+) answer tokens \((\d+)% thinking\)"
                 r"; ended: (.*); forced (\d+)", line)
    assert m, line
    gens, think, answer, pct, ended, forced = m.groups()
    assert int(gens) == len(events)
    assert int(think.replace(",", "")) == reasoning
    # Every output token of this run belongs to a thinking generation: the rest is answer.
    assert int(answer.replace(",", "")) == usage["output_tokens"] - reasoning
    assert int(pct) == round(100 * reasoning / usage["output_tokens"])
    assert Counter(dict((k, int(v)) for k, v in (p.rsplit(" ", 1) for p in ended.split(", ")))) \
        == Counter(e["ended"] for e in events)
    assert int(forced) == sum(e["forced"] for e in events)
    # The usage table gains a thinking column holding usage.reasoning_tokens, beside output tokens.
    header = next(ln for ln in out.splitlines() if "output tok" in ln)
    cols = [c.strip() for c in re.split(r"[┃│]", header)[1:-1]]
    assert cols[cols.index("output tok") + 1] == "think tok"
    total = next(ln for ln in out.splitlines() if ln.startswith("│ total"))
    cells = [c.strip() for c in total.split("│")[1:-1]]
    at = cols.index("think tok")
    assert cells[at - 1] == f"{usage['output_tokens']:,}"
    assert cells[at] == f"{reasoning:,}"


def test_old_trace_without_thinking_events_prints_no_thinking_line_or_column(capsys, wide):
    assert not [e for e in read_events(V1_TRACE) if e["kind"] == "thinking"]
    out = _show(V1_TRACE, capsys)
    assert "Budget by stage and role" in out  # it did print the table
    assert not any(ln.startswith("thinking") for ln in out.splitlines())
    assert "think" not in out


def test_thinking_events_with_wrong_types_count_as_zero_not_crash(tmp_path: Path, capsys, wide):
    path = tmp_path / "odd.jsonl"
    rows = [{"kind": "run_start", "run_id": "r", "t": 0, "question": "q"},
            {"kind": "thinking", "run_id": "r", "t": 1, "thinking_tokens": "lots", "answer_tokens": None,
             "forced": True, "ended": 3, "budget": "big"},
            {"kind": "thinking", "run_id": "r", "t": 2, "thinking_tokens": 50, "answer_tokens": 10,
             "forced": 1, "ended": "model", "budget": {"thinking": 64, "answer": 16}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _show(path, capsys)
    line = next(ln for ln in out.splitlines() if ln.startswith("thinking: "))
    # The "budget" of the first is not an object: trace show skips that event as unreadable.
    assert line.startswith("thinking: 1 generation, 50 thinking + 10 answer tokens (83% thinking)"), line
    assert "ended: model 1; forced 1" in line
    idx = TraceIndex.from_events(rows)
    assert idx.thinking.generations == 2 and idx.thinking.thinking_tokens == 50  # the index keeps both
    assert "thinking tokens: 0" in idx.detail("event:1")


async def test_browser_shows_a_thinking_events_data_and_the_split_in_the_spend_panel(thinking_run):
    path, usage = thinking_run
    events = read_events(path)
    i = next(k for k, e in enumerate(events) if e["kind"] == "thinking")
    e = events[i]
    idx = TraceIndex.from_file(path)
    assert idx.thinking.thinking_tokens == usage["reasoning_tokens"]
    app = TraceBrowser(path, index=idx)
    async with app.run_test(size=(180, 50)) as pilot:
        assert app.jump(f"event:{i}")
        await pilot.pause()
        detail = str(app.query_one("#detail").render())
        assert f"thinking tokens: {e['thinking_tokens']:,} of {e['budget']['thinking']:,}" in detail
        assert f"answer tokens: {e['answer_tokens']:,} of {e['budget']['answer']:,}" in detail
        assert f"ended: {e['ended']}" in detail
        assert e["thinking"][:200] in detail  # the thinking text itself
        spend = app._spend_table()
        headers = [str(c.header) for c in spend.columns]
        assert headers[headers.index("output tok") + 1] == "thinking"
        thinking_cells = list(spend.columns[headers.index("thinking")].cells)
        assert f"{usage['reasoning_tokens']:,}" in thinking_cells
        assert str(spend.caption).startswith(f"thinking: {len([x for x in events if x['kind'] == 'thinking'])} "
                                             f"generations, {usage['reasoning_tokens']:,} thinking")
        # The run's detail pane says it too.
        assert f"{usage['reasoning_tokens']:,} thinking +" in idx.detail("run")


async def test_browser_spend_panel_of_an_old_trace_has_no_thinking_column():
    app = TraceBrowser(V1_TRACE, index=TraceIndex.from_file(V1_TRACE))
    async with app.run_test(size=(180, 50)):
        spend = app._spend_table()
        assert "thinking" not in [str(c.header) for c in spend.columns]
        assert spend.caption is None


def test_live_view_and_summary_show_thinking_tokens(capsys):
    assert main(RUN) == 0
    cap = capsys.readouterr()
    # Live view (stderr): the role line names the thinking part of the role's tokens.
    m = re.search(r"solve: ([\d,]+) tok \(([\d,]+) thinking, (\d+) calls\)", cap.err)
    assert m, cap.err[-2000:]
    # End-of-run summary (stdout): a thinking column beside output tokens, equal to the role line's.
    header = next(ln for ln in cap.out.splitlines() if "output tok" in ln)
    cols = [c.strip() for c in re.split(r"[┃│]", header)[1:-1]]
    assert cols[cols.index("output tok") + 1] == "thinking"
    total = next(ln for ln in cap.out.splitlines() if ln.startswith("│ total"))
    assert [c.strip() for c in total.split("│")[1:-1]][cols.index("thinking")] == m.group(2)


def test_live_view_of_a_run_without_thinking_shows_no_thinking(capsys):
    assert main(["run", "What is 3+4?", "--model", "sim", "--budget", "tokens=2000"]) == 0
    cap = capsys.readouterr()
    assert "solve: " in cap.err and "thinking" not in cap.err
    assert "thinking" not in cap.out


def test_each_workflow_stage_gets_its_own_thinking_line(tmp_path: Path, capsys, wide):
    events: list[dict] = []
    tracer = Tracer("wf")
    tracer.add_sink(lambda e: events.append(e.to_dict()))
    tracer.emit("run_start", task="two-stages")
    for stage, (think, answer) in {"plan": (30, 5), "solve": (70, 15)}.items():
        st = tracer.for_stage(stage)
        st.emit("stage_start", stage=stage)
        st.emit("model_call", role="solve", usage={"input_tokens": 1, "output_tokens": think + answer,
                                                   "reasoning_tokens": think, "calls": 1})
        st.emit("thinking", thinking_tokens=think, answer_tokens=answer, forced=0, ended="model",
                budget={"thinking": 100, "answer": 20})
        st.emit("stage_end", stage=stage)
    path = tmp_path / "wf.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    lines = [ln.strip(" │├└─") for ln in _show(path, capsys).splitlines()]
    assert "thinking: 1 generation, 30 thinking + 5 answer tokens (86% thinking); ended: model 1; forced 0" in lines
    assert "thinking: 1 generation, 70 thinking + 15 answer tokens (82% thinking); ended: model 1; forced 0" in lines
    assert "thinking: 2 generations, 100 thinking + 20 answer tokens (83% thinking); ended: model 2; forced 0" in lines
