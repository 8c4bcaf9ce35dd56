"""Outcome verifiers that compare a candidate's final answer with the reference.

* ``math`` -- equivalence via the math-verify library (``1/2`` == ``0.5`` ==
  ``\\frac{1}{2}``, units and ``\\text{}`` stripped), after a cheap normalised
  string match;
* ``exact`` -- normalised string equality (:func:`normalize_answer`);
* ``regex:PATTERN`` -- the candidate text matches a regular expression (no
  reference needed);
* ``numeric[:TOL]`` -- |answer - reference| <= max(TOL, rel x |reference|);
* ``choice`` -- the chosen multiple-choice letter equals the reference letter
  (``problem.meta["choices"]`` maps option texts to letters).

All of them read the final answer with :func:`extract_answer` (last
``\\boxed{}``, then "answer is X", then "#### X", then the last number). A
problem without a reference answer cannot be checked: the verdict is neutral
(score 0.5, not passed, ``data["checked"] = False``).
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from testtime.errors import UserError
from testtime.verifiers.answer import extract_answer, extract_choice, normalize_answer, parse_number
from testtime.verifiers.base import Verdict, Verifier

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem


def _emit(ctx: RunContext, name: str, verdict: Verdict) -> Verdict:
    ctx.tracer.emit("verdict", verifier=name, score=verdict.score, passed=verdict.passed,
                    detail=verdict.detail)
    return verdict


def _unchecked(why: str) -> Verdict:
    return Verdict(score=0.5, passed=False, detail=why, data={"checked": False})


def _pass(ok: bool, detail: str, **data: Any) -> Verdict:
    return Verdict(score=1.0 if ok else 0.0, passed=ok, detail=detail, data={"checked": True, **data})


def math_equal(answer: str, reference: str, *, timeout: int | None = 5) -> bool:
    """Whether two answers are mathematically equivalent (math-verify).

    math-verify's own timeouts use ``SIGALRM``, which only works on the main
    thread; elsewhere they are switched off.
    """
    if normalize_answer(answer) == normalize_answer(reference):
        return True
    from math_verify import parse, verify

    if threading.current_thread() is not threading.main_thread():
        timeout = None
    gold = _parse(parse, reference, timeout)
    pred = _parse(parse, answer, timeout)
    if not gold or not pred:
        return False
    try:
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # sympy can fail on odd input; unequal is the honest answer
        return False


def _parse(parse: Any, text: str, timeout: int | None) -> list[Any]:
    # Bare answers ("1/2", "5 cm") parse as expressions; latex needs $...$ to
    # be found by the latex extractor, so try both.
    for form in (text, f"${text}$"):
        try:
            out = parse(form, parsing_timeout=timeout)
        except Exception:
            out = []
        if out:
            return out
    return []


class _ReferenceVerifier(Verifier):
    """Shared flow: no reference -> neutral; no answer -> fail; else compare."""

    def _extract(self, problem: Problem, candidate: str) -> str | None:
        return extract_answer(candidate)

    def _compare(self, answer: str, reference: str, problem: Problem) -> Verdict:
        raise NotImplementedError

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        if problem.answer is None or str(problem.answer).strip() == "":
            return _emit(ctx, self.name, _unchecked("cannot check: the problem has no reference answer"))
        answer = self._extract(problem, candidate)
        if answer is None:
            return _emit(ctx, self.name, _pass(False, "no final answer found in the candidate"))
        return _emit(ctx, self.name, self._compare(answer, str(problem.answer), problem))


class MathVerifier(_ReferenceVerifier):
    """``math``: equivalence of the final answer and the reference (math-verify).

    Args:
        timeout: seconds math-verify may spend parsing / comparing (main
            thread only).
    """

    name = "math"

    def __init__(self, *, timeout: int = 5) -> None:
        self.timeout = timeout

    def _compare(self, answer: str, reference: str, problem: Problem) -> Verdict:
        ok = math_equal(answer, reference, timeout=self.timeout)
        rel = "equals" if ok else "differs from"
        return _pass(ok, f"answer {answer!r} {rel} reference {reference!r}", answer=answer)


class ExactVerifier(_ReferenceVerifier):
    """``exact``: normalised string equality of the final answer and the reference."""

    name = "exact"

    def _compare(self, answer: str, reference: str, problem: Problem) -> Verdict:
        ok = normalize_answer(answer) == normalize_answer(reference)
        rel = "equals" if ok else "differs from"
        return _pass(ok, f"answer {answer!r} {rel} reference {reference!r}", answer=answer)


class NumericVerifier(_ReferenceVerifier):
    """``numeric[:TOL]``: numbers within an absolute or relative tolerance.

    Args:
        tol: absolute tolerance (default 1e-6).
        rel: relative tolerance (fraction of |reference|, default 0).
    """

    name = "numeric"

    def __init__(self, tol: float = 1e-6, *, rel: float = 0.0) -> None:
        if tol < 0 or rel < 0:
            raise UserError(f"numeric tolerances must be >= 0, got tol={tol}, rel={rel}")
        self.tol = tol
        self.rel = rel

    def _compare(self, answer: str, reference: str, problem: Problem) -> Verdict:
        ref = parse_number(reference)
        if ref is None:
            return _unchecked(f"cannot check: reference {reference!r} is not a number")
        got = parse_number(answer)
        if got is None:
            return _pass(False, f"answer {answer!r} is not a number", answer=answer)
        err = abs(got - ref)
        ok = err <= max(self.tol, self.rel * abs(ref))
        return _pass(ok, f"|{got:g} - {ref:g}| = {err:.3g} ({'within' if ok else 'beyond'} tolerance)",
                     answer=answer, error=err)


class ChoiceVerifier(_ReferenceVerifier):
    """``choice``: multiple choice; compares option letters.

    The reference may be a letter (``"B"``, ``"(B)"``) or, with
    ``problem.meta["choices"]`` (a list of option texts, A first), an option's
    text.
    """

    name = "choice"

    def _extract(self, problem: Problem, candidate: str) -> str | None:
        return extract_choice(candidate, problem.meta.get("choices"))

    def _compare(self, answer: str, reference: str, problem: Problem) -> Verdict:
        ref = extract_choice(reference, problem.meta.get("choices"))
        if ref is None:
            return _unchecked(f"cannot check: reference {reference!r} names no option")
        ok = answer == ref
        return _pass(ok, f"chose {answer}, reference {ref}", answer=answer)


class RegexVerifier(Verifier):
    """``regex:PATTERN``: passes when the candidate text matches ``PATTERN``.

    Uses :func:`re.search` on the full candidate text (anchor the pattern to
    be strict); no reference answer is needed.
    """

    name = "regex"

    def __init__(self, pattern: str, *, flags: int = 0) -> None:
        if not pattern:
            raise UserError("regex verifier needs a pattern: --verifier 'regex:The answer is 4\\b'")
        try:
            self.pattern = re.compile(pattern, flags)
        except re.error as exc:
            raise UserError(f"bad regex {pattern!r} for --verifier regex: {exc}") from None

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        m = self.pattern.search(candidate)
        detail = f"matched {m.group(0)[:80]!r}" if m else f"no match for /{self.pattern.pattern}/"
        return _emit(ctx, self.name, _pass(m is not None, detail))


__all__ = ["ChoiceVerifier", "ExactVerifier", "MathVerifier", "NumericVerifier", "RegexVerifier",
           "math_equal"]
