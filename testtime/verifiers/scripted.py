"""Fake PRMs and verifiers for tests -- yours and ours.

They go through the same interfaces (and, when asked to cost something, the
same ledger) as real ones, so a strategy tested against them runs its real
code path:

* :class:`ScriptedPRM` scores each step from a mapping ``{substring: score}``
  matched against the step text (or from a function, like FunctionPRM).
* :class:`FunctionPRM` calls ``fn(problem, steps)``.
* :class:`ScriptedVerifier` scores a candidate from ``{substring: score}``
  matched against the candidate text, or by comparing its final answer with
  ``problem.answer``.
* :class:`FunctionVerifier` calls ``fn(problem, candidate)``.

Example::

    prm = ScriptedPRM({"good": 0.9, "bad": 0.1}, default=0.5)
    ctx = RunContext(model=ScriptedModel(...), prm=prm, verifier=ScriptedVerifier(reference=True))
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from testtime.budget import Usage
from testtime.verifiers.answer import extract_answer, normalize_answer
from testtime.verifiers.base import AGGREGATIONS, ProcessRewardModel, Verdict, Verifier

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem

StepFn = Callable[["Problem", Sequence[str]], "float | Sequence[float] | Awaitable[float | Sequence[float]]"]
VerifyFn = Callable[["Problem", str], "float | bool | Verdict | Awaitable[float | bool | Verdict]"]


def _clip(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


def _charge(ctx: RunContext, tokens: int, role: str) -> None:
    """Reserve then settle ``tokens`` input tokens (one call) on the ledger.

    Raises BudgetExhausted when they do not fit, like a real model-backed
    scorer would.
    """
    if tokens <= 0:
        return
    usage = Usage(input_tokens=tokens, calls=1)
    ctx.ledger.reserve(usage, role=role).settle(usage)


class FunctionPRM(ProcessRewardModel):
    """A PRM whose step scores come from ``fn(problem, steps)``.

    ``fn`` (sync or async) returns either one score per step, or a single
    number: the score of the *last* step of ``steps``, in which case earlier
    steps are scored by calling ``fn`` on each prefix.

    Args:
        fn: the scoring function; scores are clipped to [0, 1].
        aggregation: how :meth:`score` folds step scores.
        tokens_per_step: if > 0, each call reserves and settles this many
            input tokens per step on ``ctx.ledger`` (role ``"verify"``) and
            so can raise BudgetExhausted -- for budget tests.
        name: a label for traces.

    Attributes:
        calls: how many times :meth:`score_steps` was called.
        requests: the ``(problem.id, tuple(steps))`` of each call.
    """

    def __init__(self, fn: StepFn, *, aggregation: str = "min", tokens_per_step: int = 0,
                 name: str = "function-prm") -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
        self.fn = fn
        self.aggregation = aggregation
        self.tokens_per_step = tokens_per_step
        self.label = name
        self.calls = 0
        self.requests: list[tuple[str, tuple[str, ...]]] = []

    async def _call(self, problem: Problem, steps: Sequence[str]) -> Any:
        out = self.fn(problem, list(steps))
        if inspect.isawaitable(out):
            out = await out
        return out

    async def score_steps(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> list[float]:
        _charge(ctx, self.tokens_per_step * len(steps), "verify")
        self.calls += 1
        self.requests.append((problem.id, tuple(steps)))
        if not steps:
            return []
        out = await self._call(problem, steps)
        if isinstance(out, Real):
            scores = [_clip(await self._call(problem, steps[: i + 1])) for i in range(len(steps) - 1)]
            scores.append(_clip(out))
        else:
            scores = [_clip(s) for s in out]
            if len(scores) != len(steps):
                raise ValueError(f"PRM function returned {len(scores)} scores for {len(steps)} steps")
        ctx.tracer.emit("prm_scores", prm=self.label, scores=scores,
                        aggregate=self._agg(scores))
        return scores

    def _agg(self, scores: list[float]) -> float:
        from testtime.verifiers.base import aggregate

        return aggregate(scores, self.aggregation)


class ScriptedPRM(FunctionPRM):
    """A PRM that scores each step by the substrings it contains.

    Args:
        scores: ``{substring: score}``; a step gets the score of the first
            key (in insertion order) found in its text, else ``default``.
            A callable is accepted too and behaves like :class:`FunctionPRM`.
        default: the score of a step no key matches.
        aggregation, tokens_per_step, name: as for :class:`FunctionPRM`.

    Example::

        prm = ScriptedPRM({"correct": 0.95, "mistake": 0.05}, default=0.5)
    """

    def __init__(self, scores: Mapping[str, float] | StepFn, *, default: float = 0.5,
                 aggregation: str = "min", tokens_per_step: int = 0, name: str = "scripted-prm") -> None:
        if callable(scores):
            fn: StepFn = scores
        else:
            table = {str(k): _clip(v) for k, v in scores.items()}

            def fn(problem: Problem, steps: Sequence[str]) -> list[float]:
                return [next((v for k, v in table.items() if k in s), _clip(default)) for s in steps]

        super().__init__(fn, aggregation=aggregation, tokens_per_step=tokens_per_step, name=name)
        self.default = default


def _verdict(out: Any, threshold: float) -> Verdict:
    if isinstance(out, Verdict):
        return out
    if isinstance(out, bool):
        return Verdict(score=1.0 if out else 0.0, passed=out)
    score = _clip(out)
    return Verdict(score=score, passed=score >= threshold)


class FunctionVerifier(Verifier):
    """A verifier that calls ``fn(problem, candidate_text)``.

    ``fn`` (sync or async) returns a :class:`Verdict`, a bool (pass/fail,
    score 1/0) or a score in [0, 1] (passes at ``threshold``).

    Args:
        fn: the judging function.
        threshold: the score at which a numeric result passes.
        tokens_per_call: if > 0, each call reserves and settles this many
            input tokens on ``ctx.ledger`` (role ``"verify"``).

    Attributes:
        calls: how many candidates were verified.
        seen: the candidate texts, in order.
    """

    name = "function-verifier"

    def __init__(self, fn: VerifyFn, *, threshold: float = 0.5, tokens_per_call: int = 0) -> None:
        self.fn = fn
        self.threshold = threshold
        self.tokens_per_call = tokens_per_call
        self.calls = 0
        self.seen: list[str] = []

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        _charge(ctx, self.tokens_per_call, "verify")
        self.calls += 1
        self.seen.append(candidate)
        out = self.fn(problem, candidate)
        if inspect.isawaitable(out):
            out = await out
        verdict = _verdict(out, self.threshold)
        ctx.tracer.emit("verdict", verifier=self.name, score=verdict.score, passed=verdict.passed,
                        detail=verdict.detail)
        return verdict


class ScriptedVerifier(FunctionVerifier):
    """A verifier driven by substrings of the candidate or the reference answer.

    Args:
        scores: ``{substring: score or bool}``; the first key (in insertion
            order) found in the candidate decides, else ``default``.
        reference: when True and ``problem.answer`` is set, a candidate whose
            extracted final answer equals it (normalised) scores 1.0, any
            other 0.0; ``scores`` is then consulted only when the problem has
            no reference answer.
        default: the score when nothing matches.
        threshold, tokens_per_call: as for :class:`FunctionVerifier`.

    Example::

        ScriptedVerifier(reference=True)             # exact-answer checker
        ScriptedVerifier({"answer is 5": True})      # substring rules
    """

    name = "scripted-verifier"

    def __init__(self, scores: Mapping[str, float | bool] | None = None, *, reference: bool = False,
                 default: float = 0.0, threshold: float = 0.5, tokens_per_call: int = 0) -> None:
        table = dict(scores or {})
        self.reference = reference
        self.default = default

        def fn(problem: Problem, candidate: str) -> float | bool:
            if reference and problem.answer is not None:
                got = normalize_answer(extract_answer(candidate))
                return got is not None and got == normalize_answer(problem.answer)
            for key, value in table.items():
                if key in candidate:
                    return value
            return default

        super().__init__(fn, threshold=threshold, tokens_per_call=tokens_per_call)


__all__ = ["FunctionPRM", "FunctionVerifier", "ScriptedPRM", "ScriptedVerifier"]
