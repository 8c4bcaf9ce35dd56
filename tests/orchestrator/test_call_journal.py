"""The call journal: write-ahead entries, replay on resume, abandoned calls, stage seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from testtime.budget import Budget, BudgetLedger, Usage
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import Generation, TokenLogprob
from testtime.models.scripted import FunctionModel
from testtime.orchestrator import Workflow, load_task
from testtime.orchestrator.checkpoint import CallJournal
from testtime.orchestrator.state import WorkflowRuntime
from testtime.trace.events import Tracer
from testtime.verifiers.scripted import FunctionVerifier

WORST = Usage(input_tokens=100, output_tokens=50, calls=1)


def _gen(text: str, seed: int = 0) -> Generation:
    lp = (TokenLogprob("The", -0.25, (("The", -0.25), ("A", -1.5))), TokenLogprob(" end", -0.125))
    return Generation(text=text, finish_reason="eos", logprobs=lp, model="m", thinking=f"thought {seed}",
                      usage=Usage(input_tokens=10, output_tokens=3, cached_tokens=4, calls=1, usd=0.002,
                                  reasoning_tokens=1), raw={"not": "kept"})


def test_completed_call_round_trips_through_a_new_process_with_logprobs(tmp_path: Path):
    db = tmp_path / "j.sqlite"
    gens = [_gen("The end.", 1), Generation(text="plain", logprobs=None)]
    usage = Usage(input_tokens=10, output_tokens=5, calls=1, usd=0.002, reasoning_tokens=1)
    with CallJournal(db, "r", fresh=True) as first:
        first.begin("s/solve/0|abc|0", WORST, "solve")
        first.complete("s/solve/0|abc|0", gens, usage, "solve")
        assert first.lookup("s/solve/0|abc|0") is None  # this process's own calls are not replays
    with CallJournal(db, "r") as second:
        assert second.epoch == 2
        replay = second.lookup("s/solve/0|abc|0")
        assert replay is not None and replay.usage == usage
        got = replay.generations
        assert [g.text for g in got] == ["The end.", "plain"]
        assert got[0].logprobs == gens[0].logprobs and got[1].logprobs is None
        assert (got[0].finish_reason, got[0].model, got[0].thinking, got[0].usage) == \
            ("eos", "m", "thought 1", gens[0].usage)
        assert got[0].raw is None
        # Replayed once per process; unknown keys are not replays.
        assert second.lookup("s/solve/0|abc|0") is None
        assert second.lookup("s/solve/0|other|0") is None
        assert second.take_stage("") == {}  # the replay accounted for its spend


def test_failed_attempts_before_a_completed_one_are_replayed_with_it(tmp_path: Path):
    db = tmp_path / "j.sqlite"
    billed = Usage(input_tokens=100, output_tokens=7, calls=1)
    ok = Usage(input_tokens=100, output_tokens=20, calls=1)
    with CallJournal(db, "r", fresh=True) as j:
        j.begin("k|0", WORST, "solve")
        j.abort("k|0", billed, "solve")  # a cut stream, settled at what it may have cost
        j.begin("k|0", WORST, "solve")
        j.abort("k|0", None, "solve")  # a 500 reply: released
        j.begin("k|0", WORST, "solve")
        j.complete("k|0", [Generation(text="ok")], ok, "solve")
        assert j.counts() == {"aborted": 2, "done": 1}
    with CallJournal(db, "r") as j:
        replay = j.lookup("k|0")
        assert replay is not None and replay.usage == billed + ok
        assert replay.usage.calls == 2


def test_pending_calls_are_abandoned_and_charged_once_per_resumed_process(tmp_path: Path):
    db = tmp_path / "j.sqlite"
    done_usage = Usage(input_tokens=10, output_tokens=5, calls=1)
    with CallJournal(db, "r", fresh=True) as killed:  # the process dies with "b|0" in flight
        stage = killed.for_stage("s")
        stage.begin("b|0", WORST, "solve")
        stage.begin("a|0", WORST, "verify")
        stage.complete("a|0", [Generation(text="x")], done_usage, "verify")
    with CallJournal(db, "r") as first_resume:
        found = first_resume.abandon_pending()
        assert (found.count, found.usage, found.by_stage) == (1, WORST, {"s": 1})
        assert first_resume.counts() == {"abandoned": 1, "done": 1}
        taken = first_resume.take_stage("s")
        assert taken == {"solve": WORST, "verify": done_usage}  # a|0 was not replayed here
        assert first_resume.take_stage("s") == {} and first_resume.take_all() == {}  # charged once
    with CallJournal(db, "r") as second_resume:
        again = second_resume.abandon_pending()
        assert again.count == 0  # reported by the first resume only
        assert second_resume.lookup("a|0") is not None  # the done call replays
        # ...and the abandoned one is still paid for, once, in this process's ledger.
        assert second_resume.take_all() == {"s": {"solve": WORST}}
        totals = second_resume.totals()
    assert totals == {"s": {"solve": WORST, "verify": done_usage}}


def test_a_new_run_with_an_old_run_id_starts_an_empty_journal(tmp_path: Path):
    db = tmp_path / "j.sqlite"
    with CallJournal(db, "r", fresh=True) as j:
        j.begin("k|0", WORST, "solve")
        j.complete("k|0", [Generation(text="x")], WORST, "solve")
    with CallJournal(db, "other", fresh=True) as j:
        j.begin("k|0", WORST, "solve")
    with CallJournal(db, "r", fresh=True) as j:
        assert j.epoch == 1 and j.entries() == [] and j.lookup("k|0") is None
    with CallJournal(db, "other") as j:
        assert j.counts() == {"pending": 1}  # other runs' entries are untouched


def test_stage_seconds_continue_from_the_journal_on_resume(tmp_path: Path):
    db = tmp_path / "j.sqlite"
    clock = {"t": 0.0}
    with CallJournal(db, "r", fresh=True, clock=lambda: clock["t"] + 100.0) as j:
        view = j.for_stage("s", lambda: clock["t"])
        clock["t"] = 12.5
        view.begin("k|0", WORST, "solve")
        clock["t"] = 40.0
        view.complete("k|0", [Generation(text="x")], WORST, "solve")
        j.for_stage("other", lambda: 3.0).begin("o|0", WORST, "solve")
    with CallJournal(db, "r") as j:
        assert j.stage_elapsed("s") == 40.0 and j.stage_elapsed("other") == 3.0
        assert j.elapsed() == 140.0
        wf = Workflow("w", model=FunctionModel(lambda r: "x"))
        wf.stage("s", "q")
        root = RunContext(model=FunctionModel(lambda r: "x"), ledger=BudgetLedger(Budget(seconds=60)),
                          tracer=Tracer())
        rt = WorkflowRuntime(workflow=wf, root=root, journal=j)
        ledger = rt.stage_ledger("s", {"seconds": 45.0})
        assert ledger.elapsed() >= 40.0  # the 45 s stage limit has 5 s left, not 45
        assert root.ledger.elapsed() < 40.0  # the offset is the stage's own


def test_journal_on_an_unwritable_path_is_a_user_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot open the call journal"):
        CallJournal(blocker / "sub" / "j.sqlite", "r")


class _Crash(Exception):
    pass


def _two_stage_run_that_dies_in_b(budget: str):
    """A two-stage workflow whose stage b raises :class:`_Crash` while ``crash["on"]``."""
    crash = {"on": True}

    def reply(request):
        if "stage-b" in request.prompt and crash["on"]:
            raise _Crash("dies")
        return f"The answer is {request.seed % 10}."

    def build() -> Workflow:
        wf = Workflow("r", model=FunctionModel(reply), budget=budget, seed=3)
        wf.stage("a", "stage-a")
        wf.stage("b", "stage-b {stages.a.answer}")
        return wf

    return crash, build


async def test_resume_charges_a_call_left_in_flight_once_across_two_resumes(tmp_path: Path):
    """In-process: a run dies in stage b; a call of b was in flight (a pending entry)."""
    crash, build = _two_stage_run_that_dies_in_b("tokens=5000")

    db = tmp_path / "ck.sqlite"
    with pytest.raises(_Crash):
        await build().arun(checkpoint=db, run_id="r1")
    with CallJournal(db, "r1") as j:  # as if a request of b had been sent when the process died
        j.for_stage("b").begin("b/solve/0|lost|0", WORST, "solve")
    crash["on"] = False
    events: list = []
    first = await build().arun(resume="r1", checkpoint=db, on_event=events.append)
    clean = await build().arun()
    assert first.answer == clean.answer
    # The abandoned call is charged (at its worst case) with stage b, on top of the clean spend.
    assert first.usage["tokens"] == clean.usage["tokens"] + WORST.tokens
    assert first.stages["b"]["usage"]["tokens"] == clean.stages["b"]["usage"]["tokens"] + WORST.tokens
    abandoned = [e for e in events if e.kind == "abandoned_calls"]
    assert len(abandoned) == 1 and abandoned[0].data["count"] == 1
    # Resuming the finished run again charges it once more in that process's ledger, not twice.
    events.clear()
    second = await build().arun(resume="r1", checkpoint=db, on_event=events.append)
    assert second.usage["tokens"] == first.usage["tokens"]
    assert not [e for e in events if e.kind == "abandoned_calls"]


def test_options_of_every_stage_are_checked_when_the_task_file_loads(tmp_path: Path):
    task = tmp_path / "task.yaml"
    task.write_text("""\
models:
  m: "scripted:The answer is 7."
stages:
  - name: first
    prompt: "Plan"
    model: m
  - name: last
    prompt: "Solve"
    model: m
    strategy: {name: self_consistency, nn: 3}
""")
    with pytest.raises(UserError) as info:
        load_task(task)
    msg = str(info.value)
    assert f"{task}:10: stages[1].strategy" in msg and "stage 'last'" in msg and "'nn'" in msg


@pytest.mark.parametrize("kw, expect", [
    ({"strategy": "self_consistency", "strategy_options": {"n": "many"}}, "stage 'last' strategy: .*'n'"),
    ({"strategy": "beam"}, "stage 'last' strategy: 'beam' needs a PRM"),
    ({"verifier": "genrm:judge?bogus=1"}, "stage 'last' verifier: unknown option"),
    ({"verifier": "genrm:nosuch:model"}, "stage 'last' verifier: unknown model spec"),
    ({"verifier": "nonsense"}, "stage 'last' verifier: unknown verifier spec"),
    ({"verifier": "check"}, "verifiers.check: unknown option"),
    ({"strategy": "beam", "prm": "prm:zzz"}, "stage 'last' prm: unknown PRM kind"),
])
async def test_bad_options_or_specs_in_a_later_stage_fail_before_any_call(kw, expect):
    calls = []
    model = FunctionModel(lambda r: calls.append(r) or "The answer is 1.")
    wf = Workflow("w", models={"judge": model}, model=model, verifiers={"check": "genrm:judge?zz=1"})
    wf.stage("first", "q")
    wf.stage("last", "q2", **kw)
    if kw.get("verifier") != "check":
        wf.verifiers.clear()
    with pytest.raises(UserError, match=expect):
        await wf.arun()
    assert calls == []


def _fp(**changes) -> str:
    model = FunctionModel(lambda r: "x", name="m")
    opts = {"models": {"m": model, "j": "sim"}, "verifiers": {"v": "genrm:j"}, "budget": "tokens=1000"}
    opts.update({k: v for k, v in changes.items() if k in opts})
    wf = Workflow("w", **opts)
    wf.stage("a", "q", model="m", strategy="self_consistency",
             strategy_options=changes.get("options", {"n": 3}), verifier=changes.get("verifier", "v"))
    wf.stage("b", "q2", model="m")
    wf.route(after="a", cases=changes.get("cases", [("score >= 0.5", "b")]), default="end")
    return wf.fingerprint()


@pytest.mark.parametrize("change", [
    {"models": {"m": FunctionModel(lambda r: "x", name="m"), "j": "sim:other"}},
    {"verifiers": {"v": "genrm:j?m=4"}},
    {"options": {"n": 4}},
    {"verifier": "math"},
    {"budget": "tokens=2000"},
    {"cases": [("score >= 0.9", "b")]},
])
def test_fingerprint_covers_models_verifiers_options_budget_and_routes(change):
    assert _fp() == _fp()  # built twice (new objects): the same definition
    assert _fp(**change) != _fp()


async def test_a_stage_resumed_after_a_crash_keeps_the_budget_it_was_carved(tmp_path: Path):
    crash, build = _two_stage_run_that_dies_in_b("tokens=5000,seconds=900")

    db = tmp_path / "ck.sqlite"
    starts: list = []
    with pytest.raises(_Crash):
        await build().arun(checkpoint=db, run_id="r1",
                           on_event=lambda e: starts.append(e) if e.kind == "stage_start" else None)
    crash["on"] = False
    await build().arun(resume="r1", checkpoint=db,
                       on_event=lambda e: starts.append(e) if e.kind == "stage_start" else None)
    carved = [e.data["budget"] for e in starts if e.stage == "b"]
    # Not re-carved from what is left now (the seconds used so far would count twice).
    assert len(carved) == 2 and carved[0] == carved[1]


async def test_a_stage_resumed_at_a_later_node_counts_the_spend_of_its_checkpointed_nodes(tmp_path: Path):
    """Killed in refine: solve's calls do not run again, but the re-run refine sees their spend."""
    crash = {"on": False}
    refine_max_tokens: list[int] = []

    class Crash(Exception):
        pass

    def reply(request):
        if "previous attempt" in (request.prompt or ""):
            refine_max_tokens.append(request.max_tokens)
            if crash["on"]:
                raise Crash("dies in refine")
        return "word " * 60 + "The answer is 1."

    def build() -> Workflow:
        # The budget binds: refine's request is shortened to fit what solve left.
        wf = Workflow("w", model=FunctionModel(reply), budget="tokens=400", seed=1)
        wf.stage("b", "Question?", verifier=FunctionVerifier(lambda p, t: 0.0), max_rounds=2, max_tokens=200)
        return wf

    clean = await build().arun()
    clean_refine = refine_max_tokens.pop()
    assert clean_refine < 200
    db = tmp_path / "ck.sqlite"
    crash["on"] = True
    with pytest.raises(Crash):
        await build().arun(checkpoint=db, run_id="r1")
    crash["on"] = False
    refine_max_tokens.clear()
    resumed = await build().arun(resume="r1", checkpoint=db)
    assert refine_max_tokens == [clean_refine]
    assert resumed.usage["tokens"] == clean.usage["tokens"] <= 400
    assert resumed.answer == clean.answer


def test_stage_limits_reach_later_processes_even_when_one_made_no_call(tmp_path: Path):
    db = tmp_path / "j.sqlite"
    with CallJournal(db, "r", fresh=True) as first:
        assert first.epoch == 1 and first.stage_limits("b") is None
    with CallJournal(db, "r") as second:  # starts stage b, dies before any call
        second.record_stage_limits("b", {"tokens": 1234, "seconds": 10.5})
        assert second.stage_limits("b") is None  # this process's own carve is in its state
    with CallJournal(db, "r") as third:
        assert third.epoch == 3
        assert third.stage_limits("b") == {"tokens": 1234, "seconds": 10.5}
