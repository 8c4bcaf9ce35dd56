"""Solve-Detect-Verify: chunked solving, early stop at completion points, revisions."""

from __future__ import annotations

import pytest

import testtime
from testtime.budget import Budget, BudgetLedger, Usage
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import Generation, GenerationRequest
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.search.base import Problem
from testtime.search.registry import make_strategy
from testtime.search.solve_detect_verify import SolveDetectVerify, completion_point
from testtime.trace.events import Tracer
from testtime.verifiers.generative import GenRM
from testtime.verifiers.math import MathVerifier

PROBLEM = Problem(question="What is 2 + 2?", answer="4")
RAMBLE = " ".join(["Wait, let me double check this again carefully."] + ["More checking words here."] * 20)


def streaming_solver(first: str, revised: str = "2 + 2 = 4. The answer is 4.") -> FunctionModel:
    """Continues ``first`` (or ``revised`` once feedback was given) from request.prefix, chunk by chunk."""

    def fn(req: GenerationRequest) -> Generation:
        revising = any("Verifier feedback" in m["content"] for m in req.chat_messages())
        words = (revised if revising else first).split()
        done = len(req.prefix.split())
        chunk = words[done: done + req.max_tokens]
        end = done + len(chunk) >= len(words)
        text = (" " if done else "") + " ".join(chunk)
        return Generation(text=text, finish_reason="eos" if end else "length",
                          usage=Usage(input_tokens=10, output_tokens=len(chunk)))

    return FunctionModel(fn, name="solver")


def _ctx(model: FunctionModel, verifier=None, budget: str = "tokens=100000") -> RunContext:
    ctx = RunContext(model=model, verifier=verifier or MathVerifier(), ledger=BudgetLedger(Budget.parse(budget)),
                     tracer=Tracer())
    ctx.max_tokens = 400
    return ctx


def test_completion_point() -> None:
    markers = ("Wait", "Hmm")
    assert completion_point("The answer is 4. Wait, maybe not", markers, ended=False) == len("The answer is 4. ")
    assert completion_point("Wait, the answer is 4.", markers, ended=False) == len("Wait, the answer is 4.")
    assert completion_point("Still thinking. Hmm", markers, ended=False) is None
    assert completion_point("no answer but done", markers, ended=True) == len("no answer but done")
    assert completion_point("The answer is 4. Waiting room", markers, ended=False) == len("The answer is 4. Waiting room")


async def test_stops_at_the_first_verified_completion_point() -> None:
    solver = streaming_solver("2 + 2 = 4. The answer is 4. " + RAMBLE)
    ctx = _ctx(solver)
    result = await SolveDetectVerify(chunk_tokens=8).search(PROBLEM, ctx)
    assert result.stopped_reason == "verified" and result.answer == "4"
    assert result.text.endswith("The answer is 4.") and "Wait" not in result.text
    assert result.stats["early_cuts"] == 1 and result.stats["verifications"] == 1
    # It stopped after two chunks instead of generating the ~110-word ramble.
    assert solver.calls == 2
    assert ctx.ledger.usage.output_tokens <= 16


async def test_rejection_feeds_back_and_the_revision_is_verified() -> None:
    solver = streaming_solver("2 + 2 = 5. The answer is 5.")
    ctx = _ctx(solver)
    result = await SolveDetectVerify(chunk_tokens=64).search(PROBLEM, ctx)
    assert result.stopped_reason == "verified" and result.answer == "4"
    assert result.stats["attempts"] == 2 and [c.score for c in result.candidates] == [0.0, 1.0]
    revision = solver.requests[-1].chat_messages()
    assert revision[-2] == {"role": "assistant", "content": "2 + 2 = 5. The answer is 5."}
    assert "differs from reference '4'" in revision[-1]["content"]


async def test_runs_out_of_revisions_and_returns_the_best_attempt() -> None:
    solver = streaming_solver("The answer is 5.", revised="The answer is 6.")
    ctx = _ctx(solver)
    result = await SolveDetectVerify(max_revisions=2).search(PROBLEM, ctx)
    assert result.stopped_reason == "done" and result.stats["attempts"] == 3
    assert len(result.candidates) == 3 and result.answer == "6"


async def test_budget_exhaustion_is_anytime() -> None:
    solver = streaming_solver("The answer is 5.", revised="The answer is 6.")
    ctx = _ctx(solver, budget="tokens=300")
    result = await SolveDetectVerify(chunk_tokens=16, max_revisions=50).search(PROBLEM, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert result.answer in ("5", "6") and ctx.ledger.usage.tokens <= 300


async def test_without_detection_it_verifies_only_when_the_solver_stops() -> None:
    solver = streaming_solver("The answer is 4. " + RAMBLE)
    ctx = _ctx(solver)
    result = await SolveDetectVerify(chunk_tokens=8, detect=False).search(PROBLEM, ctx)
    assert result.stopped_reason == "verified" and "Wait" in result.text
    assert solver.calls > 10


async def test_needs_a_verifier() -> None:
    ctx = RunContext(model=ScriptedModel(["The answer is 4."]))
    with pytest.raises(UserError, match="--verifier"):
        await SolveDetectVerify().search(PROBLEM, ctx)
    with pytest.raises(UserError):
        SolveDetectVerify(chunk_tokens=0)


def test_registered_under_its_name() -> None:
    assert isinstance(make_strategy("solve_detect_verify", chunk_tokens=32), SolveDetectVerify)


async def test_arun_with_genrm_reports_solve_and_verify_spend() -> None:
    judge = ScriptedModel(["Looks right.\nVerdict: Yes"], name="judge", logprobs=False)
    result = await testtime.arun(PROBLEM, model=streaming_solver("2 + 2 = 4. The answer is 4."),
                                 strategy="solve_detect_verify", verifier=GenRM(judge, m=2),
                                 budget="tokens=5000", strategy_options={"chunk_tokens": 4})
    assert result.stopped_reason == "verified" and result.answer == "4"
    by_role = result.usage["by_role"]
    assert set(by_role) == {"solve", "verify"}
    # GenRM(m=2) on a backend without native n sends two requests.
    assert by_role["verify"]["calls"] == 2 and by_role["solve"]["calls"] == 3
    for key in ("input_tokens", "output_tokens", "calls"):
        assert by_role["solve"][key] + by_role["verify"][key] == result.usage[key]


# ------------------------------------------------------------ on the stream
LONG_REPLY = ("Let me think about this " * 25 + "so the answer is 42. Wait, let me double-check "
              + "every step again " * 60 + "The answer is 42.")


@pytest.mark.parametrize("mode", ["auto", "stream"])
async def test_detection_stops_the_stream_at_the_completion_point(mode: str) -> None:
    from testtime.api import build_context
    from testtime.testing.loopback import LoopbackOpenAIServer
    from testtime.verifiers.scripted import ScriptedVerifier

    problem = Problem(question="What is 40 + 2?", answer="42")
    full = len(LONG_REPLY.split())
    with LoopbackOpenAIServer(reply=LONG_REPLY) as srv:
        ctx = build_context(model="openai:loopback", base_url=srv.base_url, budget="tokens=20000")
        ctx.verifier = ScriptedVerifier(reference=True)
        try:
            result = await SolveDetectVerify(mode=mode).search(problem, ctx)
            streamed = ctx.ledger.usage
            srv_requests = srv.served.requests
            bodies = list(srv.requests)
        finally:
            await ctx.model.aclose()
    assert (result.answer, result.stopped_reason) == ("42", "verified")
    assert result.text.endswith("so the answer is 42.") and "Wait" not in result.text
    assert result.stats["stream_stops"] == 1
    # One request, closed right after the answer: billed for what arrived,
    # far less than the whole reply.
    assert srv_requests == 1 and streamed.calls == 1
    answer_at = LONG_REPLY.split().index("42.") + 1
    assert answer_at <= streamed.output_tokens <= answer_at + 2 < 0.5 * full
    assert bodies[0].get("stream") is True and not bodies[0].get("messages")[-1]["role"] == "assistant"


async def test_streamed_attempts_are_settled_within_budget_on_adversarial_streams() -> None:
    from testtime.testing.adversarial import CutStream, HonestModel
    from testtime.verifiers.scripted import ScriptedVerifier

    reply = "Two plus two is four, so the answer is 4. Wait, let me re-check " + "this again " * 30
    for model in (HonestModel(reply), CutStream(reply, after_k=5, p=1.0, seed=1)):
        ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=400)),
                         verifier=ScriptedVerifier(reference=True))
        result = await SolveDetectVerify(mode="stream", max_revisions=2).search(PROBLEM, ctx)
        assert ctx.ledger.open_reservations() == 0 and ctx.ledger.spent("tokens") <= 400
        # Never counts less than the backend billed (prompt + tokens sent).
        assert ctx.ledger.usage.output_tokens >= model.log.billed.output_tokens
        assert ctx.ledger.usage.input_tokens >= model.log.billed.input_tokens
        if isinstance(model, HonestModel):
            assert result.answer == "4" and result.stopped_reason == "verified"
            assert ctx.ledger.usage.output_tokens < len(reply.split())
