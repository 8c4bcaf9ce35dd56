"""The live view of `testtime run`: the trace tree, cut to the terminal, plus budget bars."""

from __future__ import annotations

import io

from rich.console import Console

from testtime.api import arun, build_context
from testtime.budget import Budget, BudgetLedger, Usage
from testtime.cli import main
from testtime.models.scripted import ScriptedModel
from testtime.search.registry import make_strategy
from testtime.sim.prm import SimPRM
from testtime.trace.events import Tracer
from testtime.trace.live import LiveView
from testtime.trace.render import TraceTree


def _console(height: int = 40) -> Console:
    return Console(record=True, width=120, height=height, file=io.StringIO(), color_system=None)


def _frame(view: LiveView) -> str:
    view.console.print(view.render())
    return view.console.export_text()


def _workflow_events(tracer: Tracer, ledger: BudgetLedger) -> None:
    """What a two-stage workflow with a beam search stage emits."""
    tracer.emit("run_start", task="demo-task", stages=["plan", "solve"], budget={"tokens": 1000})
    plan = tracer.for_stage("plan")
    plan.emit("stage_start", stage="plan", model="sim", strategy="single", budget={"tokens": 300})
    plan.emit("strategy_start", strategy="single", params={})
    ledger.charge(Usage(input_tokens=20, output_tokens=30, calls=1), role="solve")
    plan.emit("model_call", role="solve", model="sim", n=1, latency_s=0.1,
              usage={"input_tokens": 20, "output_tokens": 30, "calls": 1})
    plan.emit("strategy_end", strategy="single", answer="a plan", stopped_reason="done")
    plan.emit("stage_end", stage="plan", answer="a plan", score=None, rounds=1, stopped_reason="done")
    solve = tracer.for_stage("solve")
    solve.emit("stage_start", stage="solve", model="sim", strategy="beam", budget={"tokens": 700})
    solve.emit("strategy_start", strategy="beam", params={"beam_width": 2, "aggregation": None})
    solve.emit("node_added", node=1, parent=0, step=1, score=0.9, tokens=7, terminal=False, text="step one")
    solve.emit("node_added", node=2, parent=0, step=1, score=0.15, tokens=6, terminal=False, text="bad step")
    solve.emit("node_pruned", node=2, reason="beam")
    solve.emit("node_selected", node=1, reason="beam")
    solve.emit("search_round", round=1, alive=1, best_score=0.9)
    solve.emit("node_added", node=3, parent=1, step=2, score=0.85, tokens=11, terminal=True,
               text="The answer is 42.")
    ledger.charge(Usage(input_tokens=150, output_tokens=250, calls=3), role="solve")
    ledger.charge(Usage(input_tokens=60, output_tokens=3, calls=3), role="verify")
    solve.emit("model_call", role="verify", model="sim:prm", n=1, latency_s=0.0,
               usage={"input_tokens": 60, "output_tokens": 3, "calls": 3})
    solve.emit("budget_refused", role="solve", dimension="tokens", requested=900, remaining=487)


def test_running_frame_shows_stages_nodes_round_and_bars():
    ledger = BudgetLedger(Budget.parse("tokens=1000"))
    tracer = Tracer("run42")
    view = LiveView(ledger, title="demo-task", strategy="task demo-task", model="sim", console=_console())
    tracer.add_sink(view)
    _workflow_events(tracer, ledger)
    held = ledger.reserve(Usage(input_tokens=100, output_tokens=100), role="solve")
    out = _frame(view)
    held.release()
    lines = out.splitlines()
    assert "run run42" in out and "demo-task" in out
    # The finished stage folds to its summary line; the running one shows its tree.
    assert "stage plan" in out and "answer=a plan" in out
    assert any("stage solve" in ln and "(running)" in ln for ln in lines)
    assert "strategy beam" in out and "round 1: alive=1 best=0.900" in out
    assert "aggregation=None" not in out  # unset parameters are left out while watching
    one = next(i for i, ln in enumerate(lines) if "#1 step 1 score=0.900 tok=7" in ln)
    three = next(i for i, ln in enumerate(lines) if "#3 step 2 score=0.850 tok=11 [end]" in ln)
    assert three > one and lines[three].index("#3") > lines[one].index("#1")  # nested under #1
    assert "★ #1" in lines[one] and "◀ best" in lines[one]
    assert any("✂ #2 step 1 score=0.150" in ln for ln in lines)
    assert "budget refused (solve): tokens needs 900, left 487" in out
    bar_line = next(ln for ln in lines if "513 / 1,000" in ln)
    assert "tokens" in bar_line and "█" in bar_line and "▒" in bar_line and "(+200 in flight)" in bar_line
    assert "nodes 3" in out and "best 0.900" in out and "refused 1" in out
    assert "solve: 450 tok (4 calls)" in out and "verify: 63 tok (3 calls)" in out


def test_finished_frame_shows_every_stage_and_answer():
    ledger = BudgetLedger(Budget.parse("tokens=1000"))
    tracer = Tracer("run42")
    view = LiveView(ledger, console=_console())
    tracer.add_sink(view)
    _workflow_events(tracer, ledger)
    solve = tracer.for_stage("solve")
    solve.emit("strategy_end", strategy="beam", answer="42", stopped_reason="budget_exhausted")
    solve.emit("stage_end", stage="solve", answer="42", score=0.85, rounds=1, stopped_reason="budget_exhausted")
    tracer.emit("run_end", answer="42", stopped_reason="budget_exhausted")
    out = _frame(view)
    assert "answer=42 (budget_exhausted)" in out.splitlines()[1]
    # Room enough: finished stages keep their nodes instead of folding.
    assert "#3 step 2 score=0.850 tok=11" in out and "(running)" not in out


def test_many_nodes_are_capped_to_the_screen_with_best_and_latest():
    ledger = BudgetLedger(Budget.parse("tokens=1000000"))
    tracer = Tracer("big")
    view = LiveView(ledger, console=_console(height=30))
    tracer.add_sink(view)
    tracer.emit("run_start", question="q", budget={"tokens": 1e6})
    tracer.emit("strategy_start", strategy="beam", params={})
    for i in range(1, 2001):
        score = 0.999 if i == 777 else (i % 100) / 1000
        tracer.emit("node_added", node=i, parent=max(0, i - 4), step=(i + 3) // 4, score=score, tokens=5,
                    terminal=False, text=f"step {i}\n\nwith a blank line")
        if i % 3 == 0:
            tracer.emit("node_pruned", node=i, reason="beam")
    out = _frame(view)
    lines = out.splitlines()
    assert len(lines) <= 30  # the frame fits the terminal: nothing scrolls or flickers
    assert any("#777 step 195 score=0.999" in ln and "◀ best" in ln for ln in lines)
    assert any("#2000 step 500" in ln for ln in lines)  # the latest node
    more = next(ln for ln in lines if "more node(s)" in ln)
    shown = sum(1 for ln in lines if " step " in ln and "score=" in ln)
    assert f"+{2000 - shown} more node(s), 666 pruned in all" in more


def test_live_tree_shows_what_trace_show_shows_when_it_fits():
    events: list[dict] = []
    tracer = Tracer("same")
    tracer.add_sink(lambda e: events.append(e.to_dict()))
    _workflow_events(tracer, BudgetLedger(Budget.parse("tokens=1000")))
    tt = TraceTree.from_events(events)

    def text(tree) -> list[str]:
        c = Console(file=io.StringIO(), width=200, color_system=None)
        c.print(tree)
        return [ln for ln in c.file.getvalue().splitlines() if " step " in ln]

    full, live = text(tt.tree()), text(tt.live_tree(max_lines=40))
    assert len(full) == 3 and [ln.strip("│ ├└─") for ln in full] == [
        ln.strip("│ ├└─").replace("◀ best ", "") for ln in live]


def test_redraws_overwrite_in_place_instead_of_erasing():
    buf = io.StringIO()
    console = Console(file=buf, width=80, height=30, force_terminal=True, color_system=None)
    ledger = BudgetLedger(Budget.parse("tokens=100"))
    view = LiveView(ledger, console=console, refresh_per_second=0.5)
    tracer = Tracer("ip")
    tracer.add_sink(view)
    with view:
        tracer.emit("strategy_start", strategy="beam", params={})
        view._live.refresh()
        start = len(buf.getvalue())
        tracer.emit("node_added", node=1, parent=0, step=1, score=0.5, tokens=3, terminal=False, text="x")
        view._live.refresh()
        redraw = buf.getvalue()[start:]
    assert "\x1b[1A" in redraw and "#1 step 1" in redraw
    assert "\x1b[2K" not in redraw  # no line is blanked before it is redrawn


async def test_print_summary_after_a_scripted_run():
    model = ScriptedModel(["The answer is 4.", "The answer is 4.", "The answer is 5."])
    ctx = build_context(model=model, budget="tokens=2000", seed=0)
    console = _console()
    view = LiveView(ctx.ledger, title="2+2?", strategy="self_consistency", model=model.spec,
                    context=ctx, console=console)
    ctx.tracer.add_sink(view)
    result = await arun("What is 2+2?", strategy="self_consistency", n=3, context=ctx)
    view.print_summary(result, console)
    out = console.export_text()
    assert "Answer: 4" in out and "Stopped:" in out and "Spend" in out and "Candidates: 3 samples" in out


async def test_real_beam_search_on_the_simulator_renders_live():
    ctx = build_context(model="sim", budget="tokens=3000", seed=0, prm=SimPRM())
    console = Console(record=True, width=120, height=40, file=io.StringIO(), force_terminal=True)
    with LiveView(ctx.ledger, title="What is 2+2?", strategy="beam", model=ctx.model.spec,
                  context=ctx, console=console, refresh_per_second=50) as view:
        ctx.tracer.add_sink(view)
        result = await arun("What is 2+2?", strategy=make_strategy("beam"), seed=0, context=ctx)
    view.print_summary(result, console)
    out = console.export_text()
    assert result.answer is not None and result.usage["tokens"] <= 3000
    assert "strategy beam" in out and "score=" in out and "tok=" in out
    assert f"answer={result.answer}" in out and "/ 3,000" in out
    assert f"Answer: {result.answer}" in out


def test_cli_run_without_json_draws_the_tree_then_the_summary(capsys):
    assert main(["run", "What is 2+2?", "--model", "sim", "--strategy", "self_consistency",
                 "--budget", "tokens=3000", "--n", "3", "--seed", "0"]) == 0
    cap = capsys.readouterr()
    assert "strategy self_consistency" in cap.err and "tokens" in cap.err and "/ 3,000" in cap.err
    assert "answer=" in cap.err.splitlines()[1]
    assert "Answer:" in cap.out and "Spend" in cap.out
