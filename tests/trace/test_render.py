"""`testtime trace show`: the tree and the per-stage, per-role budget table."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from testtime.cli import main
from testtime.models.scripted import FunctionModel
from testtime.orchestrator import Workflow
from testtime.trace.events import Tracer
from testtime.trace.jsonl import read_events
from testtime.trace.render import render
from testtime.verifiers.scripted import FunctionVerifier


async def _traced_run(path: Path) -> None:
    model = FunctionModel(lambda r: "Careful work. The answer is 5." if "previous" in r.prompt
                          else "The answer is 4.", name="m")
    wf = Workflow("render-demo", model=model, budget="tokens=4000", seed=0)
    wf.stage("plan", "Plan {inputs.q}", share=0.3)
    wf.stage("solve", "{inputs.q} {stages.plan.text}", strategy="self_consistency",
             strategy_options={"n": 3}, verifier=FunctionVerifier(lambda p, t: 1.0 if "5" in t else 0.0))
    await wf.arun({"q": "2+3?"}, trace=path)


def _text(events, **kw) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(render(events, **kw))
    return buf.getvalue()


async def test_tree_shows_stages_strategies_verdicts_and_budget(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    await _traced_run(path)
    out = _text(read_events(path))
    assert "run " in out and "render-demo" in out
    assert "stage plan" in out and "stage solve" in out
    assert "strategy self_consistency" in out
    assert "verify_round round 0" in out and "refine round 1" in out
    assert "Budget by stage and role" in out and "solve" in out
    assert "global budget: tokens=4000" in out


def test_search_nodes_render_nested_with_scores_and_marks():
    tracer = Tracer("x")
    events = []
    tracer.add_sink(lambda e: events.append(e.to_dict()))
    st = tracer.for_stage("s")
    st.emit("strategy_start", strategy="beam", params={"beam_width": 2})
    st.emit("node_added", node=1, parent=0, step=1, score=0.9, tokens=7, terminal=False, text="step one")
    st.emit("node_added", node=2, parent=1, step=2, score=0.8, tokens=5, terminal=True, text="final")
    st.emit("node_added", node=3, parent=0, step=1, score=0.1, tokens=6, terminal=False, text="bad")
    st.emit("node_pruned", node=3, reason="low")
    st.emit("node_selected", node=2, reason="best")
    st.emit("model_call", role="verify", usage={"input_tokens": 3, "output_tokens": 2, "calls": 1})
    out = _text(events)
    lines = out.splitlines()
    i1 = next(i for i, ln in enumerate(lines) if "#1 step 1 score=0.900 tok=7" in ln)
    i2 = next(i for i, ln in enumerate(lines) if "★ #2 step 2" in ln)
    assert i2 > i1 and lines[i2].index("★") > lines[i1].index("#1")  # nested deeper
    assert any("✂ #3" in ln for ln in lines)
    assert any("verify" in ln and "5" in ln for ln in lines)  # budget table row for the verify role
    capped = _text(events, max_nodes=1)
    assert "2 more nodes" in capped


def test_cli_trace_show(tmp_path: Path, capsys):
    path = tmp_path / "t.jsonl"
    tracer = Tracer("abc")
    from testtime.trace.jsonl import JsonlWriter

    w = JsonlWriter(path)
    tracer.add_sink(w)
    tracer.emit("run_start", task="demo", budget={"tokens": 100})
    tracer.for_stage("only").emit("stage_start", stage="only", model="m", strategy="single")
    tracer.emit("run_end", answer="42", stopped_reason="done")
    w.close()
    assert main(["trace", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "abc" in out and "stage only" in out and "answer=42" in out
    assert main(["trace", "show", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["trace", "show", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
