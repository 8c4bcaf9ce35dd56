"""--verifier / --prm spec parsing and python:module:function callables."""

from __future__ import annotations

from pathlib import Path

import pytest

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.trace.events import Tracer
from testtime.verifiers.code import CodeVerifier
from testtime.verifiers.flexive import FlexiVe
from testtime.verifiers.generative import GenRM
from testtime.verifiers.math import MathVerifier, NumericVerifier, RegexVerifier
from testtime.verifiers.prm import ConfidencePRM, LLMJudgePRM
from testtime.verifiers.pyfunc import PythonPRM, PythonVerifier
from testtime.verifiers.registry import load_prm, load_verifier, split_options

FIXTURES = Path(__file__).parent / "fixtures" / "user_checks.py"


@pytest.fixture
def ctx() -> tuple[RunContext, list]:
    events: list = []
    tracer = Tracer()
    tracer.add_sink(events.append)
    return RunContext(model=ScriptedModel(["The answer is 4."]), tracer=tracer), events


def test_split_options() -> None:
    assert split_options("genrm:openai:gpt-4o-mini?m=4&max_tokens=64") == (
        "genrm:openai:gpt-4o-mini", {"m": "4", "max_tokens": "64"})
    assert split_options("math") == ("math", {})


def test_forms_build_the_right_objects() -> None:
    assert isinstance(load_verifier("math"), MathVerifier)
    num = load_verifier("numeric:0.01?rel=0.1")
    assert isinstance(num, NumericVerifier) and num.tol == 0.01 and num.rel == 0.1
    rx = load_verifier("regex:^The answer is \\d+?$")
    assert isinstance(rx, RegexVerifier) and rx.pattern.pattern == "^The answer is \\d+?$"
    code = load_verifier("code?wall_s=2&memory_mb=128")
    assert isinstance(code, CodeVerifier) and code.limits.wall_s == 2.0 and code.limits.memory_mb == 128
    g = load_verifier("genrm:scripted:Verdict: Yes?m=4&max_tokens=64&logprobs=false")
    assert isinstance(g, GenRM) and g.m == 4 and g.max_tokens == 64 and g.logprobs is False
    assert g.model is not None and g.model.spec.startswith("scripted")
    f = load_verifier("flexive:policy?k=6&max_disagreement=0.0")
    assert isinstance(f, FlexiVe) and f.k == 6 and f.model is None
    assert type(load_verifier("sim:noisy")).__name__ == "SimVerifier"
    assert isinstance(load_prm("prm:confidence?metric=certainty&aggregation=last"), ConfidencePRM)
    judge = load_prm("prm:llm:policy?per_step=yes&aggregation=product")
    assert isinstance(judge, LLMJudgePRM) and judge.per_step and judge.aggregation == "product"
    assert load_prm("sim:overconfident?aggregation=last").aggregation == "last"


@pytest.mark.parametrize("spec", ["nope", "math:extra", "genrm", "genrm:policy?m=zero", "math?bogus=1",
                                  "code?wall_s=-1", "flexive:policy?k=0", "python:nomodule_xyz:f"])
def test_bad_verifier_specs_are_user_errors(spec: str) -> None:
    with pytest.raises(UserError):
        load_verifier(spec)


@pytest.mark.parametrize("spec", ["prm", "prm:nope", "prm:confidence?aggregation=median", "prm:vllm",
                                  "prm:confidence?metric=vibes", "whatever"])
def test_bad_prm_specs_are_user_errors(spec: str) -> None:
    with pytest.raises(UserError):
        load_prm(spec)


def test_unknown_spec_lists_the_forms() -> None:
    with pytest.raises(UserError, match="genrm:MODEL_SPEC.*flexive"):
        load_verifier("nope")
    with pytest.raises(UserError, match="prm:confidence"):
        load_prm("nope")


async def test_python_callables_from_a_file(ctx: tuple[RunContext, list]) -> None:
    c, events = ctx
    problem = Problem(question="2+2?")
    v = load_verifier(f"python:{FIXTURES}:contains_four")
    assert isinstance(v, PythonVerifier)
    assert (await v.verify(problem, "it is 4", c)).passed
    assert not (await v.verify(problem, "it is 5", c)).passed
    half = load_verifier(f"python:{FIXTURES}:half_score?threshold=0.6")
    verdict = await half.verify(problem, "x", c)
    assert verdict.score == 0.5 and not verdict.passed
    assert any(e.kind == "note" and e.data["message"] == "half_score called" for e in events)
    custom = await load_verifier(f"python:{FIXTURES}:verdict_fn").verify(problem, "x", c)
    assert custom.detail == "custom"


async def test_python_callable_errors(ctx: tuple[RunContext, list]) -> None:
    c, events = ctx
    verdict = await load_verifier(f"python:{FIXTURES}:broken").verify(Problem(question="?"), "x", c)
    assert not verdict.passed and "RuntimeError: oops" in verdict.detail
    assert any(e.kind == "error" for e in events)
    with pytest.raises(UserError, match="returned str"):
        await load_verifier(f"python:{FIXTURES}:wrong_type").verify(Problem(question="?"), "x", c)
    with pytest.raises(UserError, match="no callable"):
        load_verifier(f"python:{FIXTURES}:missing")


async def test_python_callable_by_module_path(ctx: tuple[RunContext, list]) -> None:
    v = load_verifier("python:testtime.verifiers.answer:has_final_answer")
    # has_final_answer(problem, candidate) would be called with 2 args; it takes 1 -> an error verdict.
    verdict = await v.verify(Problem(question="?"), "The answer is 4.", ctx[0])
    assert not verdict.passed and "TypeError" in verdict.detail


async def test_python_prm(ctx: tuple[RunContext, list]) -> None:
    prm = load_prm(f"python:{FIXTURES}:step_lengths?aggregation=mean")
    assert isinstance(prm, PythonPRM)
    scores = await prm.score_steps(Problem(question="?"), ["abcde", "abcdefghijkl"], ctx[0])
    assert scores == [0.5, 1.0]
    assert await prm.score(Problem(question="?"), ["abcde", "abcdefghijkl"], ctx[0]) == 0.75
