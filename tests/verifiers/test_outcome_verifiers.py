"""Answer-comparing verifiers: math (math-verify), exact, numeric, choice, regex."""

from __future__ import annotations

import pytest

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.verifiers.answer import extract_answer, extract_choice, parse_number
from testtime.verifiers.math import (
    ChoiceVerifier,
    ExactVerifier,
    MathVerifier,
    NumericVerifier,
    RegexVerifier,
    math_equal,
)


@pytest.fixture
def ctx() -> RunContext:
    return RunContext(model=ScriptedModel(["unused"]))


@pytest.mark.parametrize(("answer", "reference"), [
    ("1/2", "0.5"),                 # fraction vs decimal
    ("\\frac{1}{2}", "1/2"),        # latex vs plain
    ("\\dfrac{3}{4}", "0.75"),
    ("5 cm", "5"),                  # units stripped
    ("5\\text{ cm}", "5"),
    ("12", "12.0"),
    ("x = 3", "3"),
    ("\\sqrt{4}", "2"),
])
def test_math_equal_accepts_equivalent_forms(answer: str, reference: str) -> None:
    assert math_equal(answer, reference)


@pytest.mark.parametrize(("answer", "reference"), [("1/3", "0.5"), ("\\frac{1}{2}", "2"), ("6 cm", "5")])
def test_math_equal_rejects_different_values(answer: str, reference: str) -> None:
    assert not math_equal(answer, reference)


async def test_math_verifier_reads_the_boxed_answer(ctx: RunContext) -> None:
    v = MathVerifier()
    problem = Problem(question="half of one?", answer="0.5")
    good = await v.verify(problem, "We halve 1, and 3 is not it. So \\boxed{\\frac{1}{2}}", ctx)
    bad = await v.verify(problem, "I think it is 3, so \\boxed{3}", ctx)
    assert good.passed and good.score == 1.0 and good.data["answer"] == "\\frac{1}{2}"
    assert not bad.passed and bad.score == 0.0


async def test_math_verifier_uses_answer_is_and_last_number(ctx: RunContext) -> None:
    v = MathVerifier()
    problem = Problem(question="?", answer="42")
    assert (await v.verify(problem, "The answer is 42.", ctx)).passed
    assert (await v.verify(problem, "adding gives 40 then 42", ctx)).passed
    none = await v.verify(problem, "I do not know", ctx)
    assert not none.passed and "no final answer" in none.detail


async def test_no_reference_gives_a_neutral_unchecked_verdict(ctx: RunContext) -> None:
    verdict = await MathVerifier().verify(Problem(question="?"), "The answer is 3.", ctx)
    assert verdict.score == 0.5 and not verdict.passed and verdict.data["checked"] is False


async def test_exact_is_stricter_than_math(ctx: RunContext) -> None:
    problem = Problem(question="?", answer="1/2")
    assert not (await ExactVerifier().verify(problem, "The answer is 0.5.", ctx)).passed
    assert (await ExactVerifier().verify(problem, "The answer is 1/2.", ctx)).passed
    assert (await MathVerifier().verify(problem, "The answer is 0.5.", ctx)).passed


async def test_numeric_tolerances(ctx: RunContext) -> None:
    problem = Problem(question="pi?", answer="3.14159")
    assert (await NumericVerifier(0.01).verify(problem, "The answer is 3.14.", ctx)).passed
    assert not (await NumericVerifier(0.001).verify(problem, "The answer is 3.14.", ctx)).passed
    assert (await NumericVerifier(0.0, rel=0.01).verify(problem, "The answer is 3.12.", ctx)).passed
    assert not (await NumericVerifier().verify(problem, "The answer is pi.", ctx)).passed
    with pytest.raises(UserError):
        NumericVerifier(-1)


async def test_choice_letters_and_option_texts(ctx: RunContext) -> None:
    v = ChoiceVerifier()
    letter = Problem(question="?", answer="(B)")
    assert (await v.verify(letter, "Reasoning... The answer is (B).", ctx)).passed
    assert not (await v.verify(letter, "Answer: C", ctx)).passed
    texts = Problem(question="Capital of France?", answer="Paris", meta={"choices": ["London", "Paris"]})
    assert (await v.verify(texts, "The answer is B", ctx)).passed
    assert (await v.verify(texts, "The answer is Paris.", ctx)).passed


async def test_regex_verifier(ctx: RunContext) -> None:
    v = RegexVerifier(r"answer is 4\b")
    assert (await v.verify(Problem(question="?"), "so the answer is 4.", ctx)).passed
    assert not (await v.verify(Problem(question="?"), "so the answer is 42.", ctx)).passed
    with pytest.raises(UserError, match="bad regex"):
        RegexVerifier("(")


def test_answer_helpers() -> None:
    assert extract_answer("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert parse_number("1,234.5") == 1234.5 and parse_number("3/4") == 0.75
    assert parse_number("\\frac{1}{4}") == 0.25 and parse_number("50%") == 0.5
    assert parse_number("5 cm") == 5.0 and parse_number("2+3") is None
    assert extract_choice("the answer is a number, namely (C)") == "C"
    assert extract_choice("nothing here") is None
