"""Workflow builder, nodes, loops, budget shares, routes, streaming, resume."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from testtime.budget import Budget
from testtime.errors import UserError
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.orchestrator import Route, Stage, Workflow
from testtime.orchestrator.checkpoint import CallJournal
from testtime.verifiers.scripted import FunctionVerifier


def _reply(request):
    p = request.prompt or ""
    if p.startswith("Plan"):
        return "First add the numbers. Then check."
    if "previous attempt" in p:
        return "Checked again. The answer is 5."
    return "Quick guess. The answer is 4."


def _passes_on_five(problem, text):
    return 1.0 if "answer is 5" in text else 0.0


async def test_plan_solve_with_verify_refine_loop():
    model = FunctionModel(_reply, name="m")
    wf = Workflow("t", models={"m": model}, budget="tokens=5000", seed=1)
    wf.stage("plan", "Plan for {inputs.question}", model="m", share=0.2)
    wf.stage("solve", "{inputs.question}\nPlan: {stages.plan.text}", model="m", after=["plan"],
             verifier=FunctionVerifier(_passes_on_five), max_rounds=3)
    r = await wf.arun({"question": "2+3?"})
    assert r.answer == "5" and r.stopped_reason == "verified"
    assert r.stages["solve"]["rounds"] == 2 and r.stages["solve"]["passed"] is True
    assert [h["passed"] for h in r.stages["solve"]["history"]] == [False, True]
    # The plan's text reached the solve prompt through the template.
    assert any("First add the numbers" in (q.prompt or "") for q in model.requests)
    assert r.usage["calls"] == 3 and r.usage["tokens"] <= 5000
    assert set(r.usage["by_stage"]) == {"plan", "solve"}
    assert r.usage["by_stage"]["plan"]["calls"] == 1


async def test_loop_ends_at_max_rounds_when_verifier_never_passes():
    wf = Workflow("t", model=FunctionModel(lambda r: "The answer is 1.", name="m"), budget="tokens=5000")
    wf.stage("s", "Q?", verifier=FunctionVerifier(lambda p, t: 0.0), max_rounds=3)
    r = await wf.arun()
    assert r.stages["s"]["rounds"] == 3 and r.stages["s"]["passed"] is False
    assert r.usage["calls"] == 3 and r.stopped_reason == "done"


async def test_loop_ends_when_budget_refuses_and_spend_stays_within_limit():
    wf = Workflow("t", model=FunctionModel(lambda r: "word " * 30 + "The answer is 1.", name="m"),
                  budget="tokens=260")
    wf.stage("s", "Q?", verifier=FunctionVerifier(lambda p, t: 0.0), max_rounds=50, max_tokens=40)
    r = await wf.arun()
    assert r.stopped_reason == "budget_exhausted"
    assert 1 <= r.stages["s"]["rounds"] < 50
    assert r.usage["tokens"] <= 260


async def test_unused_budget_rolls_over_to_later_stages():
    seen = []
    model = FunctionModel(lambda r: "The answer is 1.", name="m")
    wf = Workflow("t", model=model, budget="tokens=1000")
    for name in ("a", "b", "c"):
        wf.stage(name, f"{name}?", share=1.0, max_tokens=50)
    r = await wf.arun(on_event=lambda e: seen.append(e) if e.kind == "stage_start" else None)
    limits = {e.stage: e.data["budget"]["tokens"] for e in seen}
    assert limits["a"] == 333  # a third of everything at the start
    spent_a = r.stages["a"]["usage"]["tokens"]
    assert limits["b"] == (1000 - spent_a) // 2  # half of what a left
    spent_b = r.stages["b"]["usage"]["tokens"]
    assert limits["c"] == 1000 - spent_a - spent_b  # the last stage gets all that is left
    assert limits["c"] > 333


async def test_dag_branches_join_and_route_on_score():
    model = FunctionModel(lambda r: f"The answer is {len(r.prompt or '') % 3}.", name="m")
    wf = Workflow("dag", model=model, budget="tokens=5000")
    wf.stage("left", "left {inputs.x}")
    wf.stage("right", "right {inputs.x}")
    wf.stage("join", "L={stages.left.answer} R={stages.right.answer}", after=["left", "right"],
             verifier=FunctionVerifier(lambda p, t: 0.2), max_rounds=1)
    wf.stage("easy", "easy path {stages.join.answer}")
    wf.stage("hard", "hard path {stages.join.answer}")
    wf.route(after="join", cases=[("score >= 0.5", "easy")], default="hard")
    r = await wf.arun({"x": "1"})
    assert r.stages["left"]["status"] == r.stages["right"]["status"] == "done"
    assert r.stages["join"]["route"] == "hard"
    assert r.stages["easy"]["status"] == "skipped" and r.stages["hard"]["status"] == "done"
    assert r.output == "hard"
    assert any((q.prompt or "").startswith("L=") for q in model.requests)


def test_validation_errors_name_the_problem():
    wf = Workflow("bad", model="scripted")
    wf.stage("a", "uses {stages.b.answer}")
    wf.stage("b", "x", after=["a"])
    with pytest.raises(UserError, match="does not run before"):
        wf.validate()
    cyc = Workflow("cyc", model="scripted")
    cyc.stage("a", "x", after=["b"])
    cyc.stage("b", "y", after=["a"])
    with pytest.raises(UserError, match="cycle"):
        cyc.validate()
    with pytest.raises(UserError, match="share"):
        Stage(name="s", prompt="x", share=0)
    with pytest.raises(UserError, match="route condition"):
        Route(after="a", cases=[("score ~ 3", "b")])


async def test_missing_input_is_a_user_error():
    wf = Workflow("t", model="scripted", inputs={"question": None})
    wf.stage("s", "{inputs.question}")
    with pytest.raises(UserError, match="--input question=VALUE"):
        await wf.arun({})


async def test_models_reach_nodes_through_runtime_context_not_globals():
    # Two workflows with different models run concurrently in one loop.
    def wf_for(answer: str) -> Workflow:
        wf = Workflow(f"w{answer}", model=FunctionModel(lambda r, a=answer: f"The answer is {a}.", latency=0.01),
                      budget="tokens=2000")
        wf.stage("a", "q")
        wf.stage("b", "again {stages.a.answer}")
        return wf

    r1, r2 = await asyncio.gather(wf_for("1").arun(), wf_for("2").arun())
    assert (r1.answer, r2.answer) == ("1", "2")


async def test_astream_yields_typed_events_ending_with_run_end():
    wf = Workflow("t", model=ScriptedModel(["The answer is 3."]), budget="tokens=1000")
    wf.stage("a", "q")
    kinds = [e.kind async for e in wf.astream({})]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert "stage_start" in kinds and "model_call" in kinds and "stage_end" in kinds


class _Crash(Exception):
    """Not a model error: it ends the run (like a bug or an interrupt would)."""


async def test_resume_after_failure_does_not_reissue_completed_calls(tmp_path: Path):
    fail = {"on": True}
    calls = {"a": 0, "b": 0}

    def reply(request):
        stage = "a" if "stage-a" in request.prompt else "b"
        calls[stage] += 1
        if stage == "b" and fail["on"]:
            raise _Crash("process dies here")
        return f"The answer is {request.seed % 10}."

    def build() -> Workflow:
        wf = Workflow("r", model=FunctionModel(reply), budget="tokens=3000", seed=3)
        wf.stage("a", "stage-a {inputs.q}")
        wf.stage("b", "stage-b {stages.a.answer}")
        return wf

    db = tmp_path / "ck.sqlite"
    with pytest.raises(_Crash):
        await build().arun({"q": "x"}, checkpoint=db, run_id="r1")
    assert calls == {"a": 1, "b": 1}
    fail["on"] = False
    r = await build().arun(resume="r1", checkpoint=db)
    assert calls == {"a": 1, "b": 2}  # a's call was not re-issued
    ref = await build().arun({"q": "x"})
    assert r.answer == ref.answer and r.stages["a"]["answer"] == ref.stages["a"]["answer"]
    with CallJournal(db, "r1") as journal:
        assert sum(u.tokens for roles in journal.totals().values() for u in roles.values()) == r.usage["tokens"]
    with pytest.raises(UserError, match="no checkpointed run"):
        await build().arun(resume="nope", checkpoint=db)
    other = Workflow("r", model=FunctionModel(reply), budget="tokens=3000")
    other.stage("z", "different")
    with pytest.raises(UserError, match="different definition"):
        await other.arun(resume="r1", checkpoint=db)


def test_sync_run_and_budget_object():
    wf = Workflow("t", model=ScriptedModel(["The answer is 3."]))
    wf.stage("a", "q")
    r = wf.run(budget=Budget(tokens=500))
    assert r.answer == "3" and r.budget == {"tokens": 500}
