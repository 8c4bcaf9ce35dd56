"""PRMs: generative judge, vLLM pooling endpoint (loopback), policy confidence."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.loopback import LoopbackServer, Reply
from testtime.context import RunContext
from testtime.errors import CapabilityError, MissingDependency, ModelAPIError
from testtime.models.base import Generation, GenerationRequest, TokenLogprob
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.search.base import Problem
from testtime.trace.events import Tracer
from testtime.verifiers.prm import (
    ConfidencePRM,
    LLMJudgePRM,
    confidence,
    parse_score,
    parse_step_scores,
    positive_probs,
)
from testtime.verifiers.registry import load_prm

PROBLEM = Problem(question="What is 3 * 4 + 1?", answer="13")
STEPS = ["3 * 4 = 12.", "12 + 1 = 14, which is wrong.", "The answer is 14."]


def _ctx(model: Any = None) -> tuple[RunContext, list]:
    events: list = []
    tracer = Tracer()
    tracer.add_sink(events.append)
    return RunContext(model=model or ScriptedModel(["x"]), tracer=tracer), events


# ------------------------------------------------------------- llm judge
@pytest.mark.parametrize(("text", "score"), [
    ("0.8", 0.8), ("80%", 0.8), ("4/5", 0.8), ("8", 0.8), ("correct", 1.0), ("Incorrect.", 0.0),
    ("**0.25**", 0.25), ("✓", 1.0), ("banana", None), ("", None), ("42", None),
])
def test_parse_score(text: str, score: float | None) -> None:
    got = parse_score(text)
    assert got == (pytest.approx(score) if score is not None else None)


def test_parse_step_scores_is_lenient() -> None:
    text = "Here you go:\nStep 1: 0.9\n**Step 3** - incorrect\nstep 2 = 70%\nStep 7: 1"
    assert parse_step_scores(text, 3) == [0.9, pytest.approx(0.7), 0.0]
    assert parse_step_scores("0.9\n0.1", 2) == [0.9, 0.1]  # positional fallback
    assert parse_step_scores("Step 1: 0.9 Step 2: 0.8", 2) == [0.9, 0.8]  # several on one line
    assert parse_step_scores("no idea", 2) == [None, None]


async def test_llm_judge_one_call_scores_all_steps() -> None:
    judge = ScriptedModel(["Step 1: 0.95\nStep 2: 0.1\nStep 3: 0.2"], logprobs=False)
    ctx, events = _ctx()
    prm = LLMJudgePRM(judge, aggregation="mean")
    scores = await prm.score_steps(PROBLEM, STEPS, ctx)
    assert scores == [0.95, 0.1, 0.2]
    assert await prm.score(PROBLEM, STEPS, ctx) == pytest.approx((0.95 + 0.1 + 0.2) / 3)
    assert "Step 2: 12 + 1 = 14" in judge.requests[0].prompt
    assert ctx.ledger.usage_by_role()["verify"].calls == 2
    assert any(e.kind == "prm_scores" for e in events)


async def test_llm_judge_missing_scores_are_neutral_and_noted() -> None:
    ctx, events = _ctx()
    scores = await LLMJudgePRM(ScriptedModel(["Step 1: 1.0"])).score_steps(PROBLEM, STEPS, ctx)
    assert scores == [1.0, 0.5, 0.5]
    assert any(e.kind == "note" and "[2, 3]" in e.data["message"] for e in events)


async def test_llm_judge_per_step_mode() -> None:
    def fn(req: GenerationRequest) -> str:
        return "Score: 0.1" if "wrong" in req.prompt.split("Solution so far:")[1].splitlines()[-3] else "Score: 0.9"

    judge = FunctionModel(fn)
    ctx, _ = _ctx()
    scores = await LLMJudgePRM(judge, per_step=True).score_steps(PROBLEM, STEPS[:2], ctx)
    assert scores == [0.9, 0.1] and judge.calls == 2


# -------------------------------------------------------------- vLLM PRM
PRM_MODEL = "Qwen/Qwen2.5-Math-PRM-7B"


def _model_check(body: dict[str, Any]) -> Reply | None:
    if body.get("model") != PRM_MODEL:
        return Reply(status=404, body={"error": {"message": "model not found"}})
    return None


def _pooling(body: dict[str, Any]) -> Reply:
    """vLLM's /pooling for a Qwen2.5-Math-PRM-style model: one pair per separator."""
    if (err := _model_check(body)) is not None:
        return err
    pieces = body["input"].split("<extra_0>")[:-1]
    rows = [[0.9, 0.1] if "wrong" in p else [0.2, 0.8] for p in pieces]
    return Reply(body={"object": "list", "data": [{"index": 0, "object": "pooling", "data": rows}],
                       "usage": {"prompt_tokens": len(body["input"].split())}})


def _classify(body: dict[str, Any]) -> Reply:
    if (err := _model_check(body)) is not None:
        return err
    data = [{"index": i, "probs": [0.9, 0.1] if "wrong" in text.split("<extra_0>")[-2] else [0.3, 0.7]}
            for i, text in enumerate(body["input"])]
    return Reply(body={"data": data, "usage": {"prompt_tokens": 10 * len(data)}})


@pytest.fixture
def pooling_server() -> Iterator[LoopbackServer]:
    models = Reply(body={"object": "list", "data": [{"id": PRM_MODEL}]})
    with LoopbackServer({"/pooling": _pooling, "/classify": _classify,
                         "/v1/models": lambda _: models, "/models": lambda _: models}) as srv:
        yield srv


async def test_vllm_prm_over_the_pooling_endpoint(pooling_server: LoopbackServer) -> None:
    prm = load_prm(f"prm:vllm:{pooling_server.url}?aggregation=min")
    ctx, events = _ctx()
    scores = await prm.score_steps(PROBLEM, STEPS, ctx)
    assert scores == [0.8, 0.1, 0.8]
    assert await prm.score(PROBLEM, STEPS, ctx) == 0.1
    last = pooling_server.requests[-1]
    sent = last.body
    assert last.path == "/pooling" and sent["model"] == PRM_MODEL
    assert sent["input"].count("<extra_0>") == 3 and "<|im_start|>user\nWhat is 3 * 4 + 1?" in sent["input"]
    verify = ctx.ledger.usage_by_role()["verify"]
    assert verify.calls == 2 and verify.input_tokens > 0
    assert any(e.kind == "model_call" and e.data["role"] == "verify" for e in events)


async def test_vllm_prm_classify_endpoint_sends_one_input_per_step(pooling_server: LoopbackServer) -> None:
    prm = load_prm(f"prm:vllm:{pooling_server.url}?endpoint=classify&model=Qwen/Qwen2.5-Math-PRM-7B")
    ctx, _ = _ctx()
    scores = await prm.score_steps(PROBLEM, STEPS, ctx)
    assert scores == [0.7, 0.1, 0.7]
    assert len(pooling_server.requests[-1].body["input"]) == 3


async def test_vllm_prm_server_errors_are_model_api_errors(pooling_server: LoopbackServer) -> None:
    prm = load_prm(f"prm:vllm:{pooling_server.url}?model=other")
    ctx, _ = _ctx()
    with pytest.raises(ModelAPIError, match="404"):
        await prm.score_steps(PROBLEM, STEPS, ctx)
    # The 404 reply billed nothing, but it was a request: one call, no tokens.
    assert ctx.ledger.usage.calls == 1 and ctx.ledger.usage.tokens == 0


async def test_vllm_prm_in_process_needs_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        prm = load_prm("prm:vllm:Qwen/Qwen2.5-Math-PRM-7B")
        ctx, _ = _ctx()
        with pytest.raises(MissingDependency, match="testtime\\[vllm\\]"):
            await prm.score_steps(PROBLEM, STEPS, ctx)
    else:
        pytest.skip("vllm is installed; the in-process path needs a GPU and weights")


def test_positive_probs_shapes() -> None:
    assert positive_probs([[0.3, 0.7], [0.6, 0.4]], 1) == [0.7, 0.4]
    assert positive_probs([0.2, 0.9], 1) == [0.2, 0.9]
    assert positive_probs([0.0], 1) == [0.0]
    assert positive_probs([3.0], 1) == [pytest.approx(1 / (1 + math.exp(-3)))]


# ------------------------------------------------------------ confidence
def test_confidence_metrics() -> None:
    sure = [TokenLogprob("a", math.log(0.9), (("a", math.log(0.9)), ("b", math.log(0.1))))]
    unsure = [TokenLogprob("a", math.log(0.5), (("a", math.log(0.5)), ("b", math.log(0.5))))]
    assert confidence(sure) == pytest.approx(0.9)
    assert confidence(sure, "certainty") > confidence(unsure, "certainty") == pytest.approx(0.0)
    assert confidence([]) is None


async def test_confidence_prm_probes_the_policy_and_caches() -> None:
    def fn(req: GenerationRequest) -> Generation:
        lp = math.log(0.2) if "wrong" in req.prefix.split("\n\n")[-2] else math.log(0.9)
        return Generation(text="next", finish_reason="length", logprobs=(TokenLogprob("next", lp),))

    policy = FunctionModel(fn)
    ctx, _ = _ctx(policy)
    prm = ConfidencePRM(aggregation="min")
    scores = await prm.score_steps(PROBLEM, STEPS, ctx)
    assert scores == [pytest.approx(0.9), pytest.approx(0.2), pytest.approx(0.9)]
    assert all(r.logprobs and r.temperature == 0.0 for r in policy.requests)
    assert ctx.ledger.usage_by_role()["verify"].calls == 3
    await prm.score_steps(PROBLEM, STEPS, ctx)  # same prefixes: served from the cache
    assert policy.calls == 3


async def test_confidence_prm_uses_recorded_logprobs_for_free() -> None:
    policy = FunctionModel(lambda req: "unused")
    ctx, _ = _ctx(policy)
    prm = ConfidencePRM()
    prm.record(STEPS[0], [TokenLogprob("x", math.log(0.6))])
    assert await prm.score_steps(PROBLEM, STEPS[:1], ctx) == [pytest.approx(0.6)]
    assert policy.calls == 0


async def test_confidence_prm_needs_logprobs() -> None:
    ctx, _ = _ctx(ScriptedModel(["x"], logprobs=False))
    with pytest.raises(CapabilityError):
        await ConfidencePRM().score_steps(PROBLEM, STEPS, ctx)


@pytest.mark.slow
async def test_confidence_prm_on_the_embedded_model() -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (extra `local`)")
    from testtime.models.registry import load_model

    policy = load_model("local", n_threads=2)
    ctx, events = _ctx(policy)
    prm = load_prm("prm:confidence?probe_tokens=3&metric=certainty&aggregation=mean")
    steps = ["2 + 2 = 4.", "The answer is 4."]
    scores = await prm.score_steps(Problem(question="What is 2 + 2?"), steps, ctx)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) == 2  # real, step-dependent logprobs
    usage = ctx.ledger.usage_by_role()["verify"]
    assert usage.calls == 2 and 0 < usage.output_tokens <= 6
    assert any(e.kind == "prm_scores" for e in events)


async def test_confidence_prm_uses_logprobs_recorded_during_search() -> None:
    """Steps generated in a search are scored from their own logprobs: no probe calls."""
    from testtime.budget import Budget, BudgetLedger
    from testtime.context import RunContext
    from testtime.models.base import Generation, TokenLogprob
    from testtime.models.scripted import FunctionModel
    from testtime.search.base import Problem
    from testtime.search.beam import BeamSearch
    from testtime.verifiers.prm import ConfidencePRM

    requests: list[GenerationRequest] = []

    def reply(req: GenerationRequest) -> Generation:
        requests.append(req)
        lps = (TokenLogprob("x", -0.2),) if req.logprobs else None
        text = "The answer is 5." if req.prefix else "Add two and three."
        return Generation(text=text, finish_reason="eos" if req.prefix else "stop", logprobs=lps,
                          usage=model.usage(model.input_upper_bound(req), len(text.split())))

    model = FunctionModel(reply)
    prm = ConfidencePRM()
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=20_000)), prm=prm)
    result = await BeamSearch(beam_width=1, expansions=1).search(Problem(question="2+3?"), ctx)
    assert result.answer == "5"
    assert all(r.logprobs for r in requests)          # step requests asked for logprobs
    assert all(r.max_tokens > prm.probe_tokens for r in requests)  # no probe was sent
    assert "Add two and three." in prm._recorded
