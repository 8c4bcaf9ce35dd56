"""One benchmark cell: a problem, a strategy, a budget and a seed -> one store row.

A cell runs through :func:`testtime.api.arun` on its own
:class:`~testtime.context.RunContext` (own ledger limited to the cell's
budget, own tracer, RNG seeded from the sweep seed and the problem id), so
its row depends on nothing but its own configuration: the local and Ray
executors, and a resumed sweep, produce the same rows for the same cell.

:class:`CellEnv` is built from a plain, picklable spec dict (what a Ray worker
receives) plus, optionally, a model object (the Python API); it loads the
models once and reuses them for every cell it runs.

Grading is evaluation, not search: it spends nothing from the cell's budget.
``exact`` compares normalised final answers (the simulator), ``answer`` adds
math-verify equivalence (datasets), ``code`` runs the candidate against the
problem's tests in the sandbox (HumanEval). Every candidate a strategy
returns is graded, so pass@k can be computed from the samples drawn.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testtime.benchmark.sources import grade_answer
from testtime.benchmark.store import ROW_VERSION
from testtime.budget import Budget, BudgetLedger, Usage
from testtime.errors import UserError
from testtime.models.base import Model
from testtime.search.base import Candidate, Problem
from testtime.search.registry import make_strategy
from testtime.verifiers.answer import normalize_answer

#: Sandboxed test runs in flight at once per process (HumanEval grading).
GRADE_CONCURRENCY = 2
#: Seconds one final-answer grading may take off the event loop before it counts as wrong
#: (math-verify's own SIGALRM timeouts are off outside the main thread).
GRADE_TIMEOUT_S = 10.0


def cell_seed(seed: int, problem_id: str) -> int:
    """The RNG seed of a cell: the same for every strategy and budget (common random numbers)."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def problem_to_dict(p: Problem) -> dict[str, Any]:
    return {"question": p.question, "answer": p.answer, "id": p.id, "meta": dict(p.meta)}


def problem_from_dict(d: dict[str, Any]) -> Problem:
    return Problem(question=d["question"], answer=d.get("answer"), id=d.get("id", ""), meta=dict(d.get("meta") or {}))


class CellEnv:
    """Models, scorers and grading for the cells of one sweep.

    Args:
        spec: ``kind`` (file/humaneval/sim), ``suite`` (sim), ``model`` (spec
            or None for the suite's policy), ``model_options``, ``verifier``,
            ``prm``, ``options`` (strategy -> kwargs), ``max_tokens``,
            ``temperature``, ``grader``, ``dataset``, ``config_hash``,
            ``traces`` (a directory for per-cell JSONL traces, or None).
        model: a model object to use instead of loading ``spec["model"]``.
    """

    def __init__(self, spec: dict[str, Any], model: Model | None = None) -> None:
        self.spec = spec
        self._model = model
        self._owns_model = model is None
        self._suite = None
        self._shared: dict[str, Any] | None = None
        self._grade_sem: asyncio.Semaphore | None = None
        self._code_verifier: Any = None
        self._scorer_cache: tuple[Any, Any] | None = None

    # ----------------------------------------------------------- models
    @property
    def suite(self) -> Any:
        if self._suite is None and self.spec["kind"] == "sim":
            from testtime.sim.suites import get_suite

            self._suite = get_suite(self.spec["suite"])
        return self._suite

    def model(self) -> Model:
        if self._model is None:
            if self.spec.get("model"):
                from testtime.models.registry import load_model

                self._model = load_model(self.spec["model"], **dict(self.spec.get("model_options") or {}))
            elif self.suite is not None:
                self._model = self.suite.make_policy()
            else:
                raise UserError("--model is required for this dataset (e.g. local, openai:MODEL, vllm:MODEL)")
        return self._model

    def _sim_shared(self) -> dict[str, Any]:
        # Simulator scorers are stateless: one set for every cell, as testtime.sim.bench does.
        if self._shared is None:
            from testtime.verifiers.registry import load_prm, load_verifier

            s = self.suite
            self._shared = {
                "prm": load_prm(self.spec["prm"]) if self.spec.get("prm") else s.make_prm(),
                "verifier": load_verifier(self.spec["verifier"]) if self.spec.get("verifier") else s.make_verifier(),
            }
        return self._shared

    def context(self, budget: Budget, seed: int, tracer: Any) -> Any:
        """A fresh RunContext for one cell."""
        if self.spec["kind"] == "sim":
            shared = self._sim_shared()
            ctx = self.suite.context(budget, seed=seed, model=self.model(), prm_model=shared["prm"],
                                     verifier_model=shared["verifier"])
            ctx.tracer = tracer
            if self.spec.get("max_tokens"):
                ctx.max_tokens = int(self.spec["max_tokens"])
            if self.spec.get("temperature") is not None:
                ctx.temperature = float(self.spec["temperature"])
            return ctx
        from testtime.api import build_context

        verifier, prm = self._scorers()
        return build_context(model=self.model(), budget=budget, seed=seed, verifier=verifier, prm=prm,
                             tracer=tracer, max_tokens=self.spec.get("max_tokens"),
                             temperature=self.spec.get("temperature"))

    def _scorers(self) -> tuple[Any, Any]:
        # Loaded once and shared by every cell (a genrm verifier's HTTP client
        # would otherwise be opened per cell and never closed); a PRM that
        # records the run's logprobs (prm:confidence) keeps per-run state, so
        # each cell gets its own.
        if self._scorer_cache is None:
            from testtime.context import RunContext
            from testtime.verifiers.registry import load_prm, load_verifier

            probe = RunContext(model=self.model())
            v, p = self.spec.get("verifier"), self.spec.get("prm")
            verifier = load_verifier(v, ctx=probe) if v else None
            prm = load_prm(p, ctx=probe) if p else None
            self._scorer_cache = (verifier, None if hasattr(prm, "record") else prm)
        verifier, prm = self._scorer_cache
        if prm is None and self.spec.get("prm"):
            prm = self.spec["prm"]  # a spec: build_context loads a fresh one for this cell
        return verifier, prm

    def scorer_models(self) -> list[Any]:
        """The policy plus any model behind the verifier/PRM of a probe context (for prices)."""
        ctx = self.context(Budget(), 0, _null_tracer())
        out = [ctx.model]
        for scorer in (ctx.verifier, ctx.prm):
            inner = getattr(scorer, "model", None)
            if isinstance(inner, Model):
                out.append(inner)
        return out

    def usd_per_token(self) -> float:
        """The highest per-token price among the models a cell may call."""
        rate = 0.0
        for m in self.scorer_models():
            price = getattr(m, "price", None)
            if price is not None:
                rate = max(rate, price.max_cost(1_000_000, 0) / 1e6, price.max_cost(0, 1_000_000) / 1e6)
        return rate

    async def aclose(self) -> None:
        """Close the model this env loaded (HTTP pools) on the loop that used it."""
        for scorer in self._scorer_cache or ():
            inner = getattr(scorer, "model", None)
            if isinstance(inner, Model) and inner is not self._model:
                await inner.aclose()
        self._scorer_cache = None
        if self._owns_model and self._model is not None:
            await self._model.aclose()
            self._model = None

    # ---------------------------------------------------------- grading
    async def grade(self, problem: Problem, text: str, answer: str | None) -> bool | None:
        grader = self.spec.get("grader", "answer")
        if grader == "code":
            return await self._grade_code(problem, text)
        if grader == "exact":
            if problem.answer is None:
                return None
            return answer is not None and normalize_answer(answer) == normalize_answer(problem.answer)
        # math-verify is synchronous and can be slow: run it off the event loop the other cells share.
        try:
            return await _off_loop(grade_answer, answer, problem.answer, limit_s=GRADE_TIMEOUT_S)
        except TimeoutError:
            return False  # as math-verify's own timeout would answer

    async def _grade_code(self, problem: Problem, text: str) -> bool:
        from testtime.context import RunContext
        from testtime.verifiers.code import CodeVerifier

        if not text.strip():
            return False
        if self._grade_sem is None:
            self._grade_sem = asyncio.Semaphore(GRADE_CONCURRENCY)
            self._code_verifier = CodeVerifier()
        async with self._grade_sem:
            verdict = await self._code_verifier.verify(problem, text, RunContext(model=self.model()))
        return bool(verdict.passed)

    def sample_answer(self, problem: Problem, cand_text: str, answer: str | None) -> str | None:
        """The answer a sample is stored and grouped under (code: a hash of its program)."""
        if self.spec.get("grader") == "code":
            from testtime.verifiers.code import extract_code

            code = extract_code(cand_text, problem.meta.get("entry_point"))
            if not code.strip():
                return None
            return "code:" + hashlib.sha1(" ".join(code.split()).encode()).hexdigest()[:12]
        return answer


async def _off_loop(fn: Callable[..., Any], *args: Any, limit_s: float) -> Any:
    """``fn(*args)`` on a daemon thread, awaited for at most ``limit_s`` seconds.

    Like :func:`asyncio.to_thread`, but a call that never returns (sympy on a
    pathological expression) is abandoned after ``limit_s`` (TimeoutError)
    and cannot hold up the loop's shutdown or the interpreter's exit, as a
    thread of the loop's default executor would.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def deliver(value: Any, exc: BaseException | None) -> None:
        if fut.done():
            return  # timed out or cancelled: nobody is waiting
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def work() -> None:
        try:
            value, exc = fn(*args), None
        except BaseException as e:  # handed to the awaiting task
            value, exc = None, e
        try:
            loop.call_soon_threadsafe(deliver, value, exc)
        except RuntimeError:
            pass  # the loop closed meanwhile

    threading.Thread(target=work, name="testtime-grade", daemon=True).start()
    return await asyncio.wait_for(fut, limit_s)


def _null_tracer() -> Any:
    from testtime.trace.events import Tracer

    return Tracer()


def _draw_order(cands: list[Candidate]) -> list[Candidate]:
    # Strategies may return candidates ranked (best-of-majority: top-k first);
    # tree node ids follow creation order, so sort by them when all have one.
    if cands and all(isinstance(c.node, int) for c in cands):
        return sorted(cands, key=lambda c: c.node)  # type: ignore[arg-type, return-value]
    return list(cands)


async def run_cell(env: CellEnv, problem: Problem, strategy: str, budget: str, seed: int) -> dict[str, Any]:
    """Run one cell and return its results-store row.

    Raises:
        UserError: the strategy cannot run in this configuration (e.g. needs a PRM).
        Exception: a model failure with no answer at all (the cell is not stored; a rerun retries it).
            Once the cell's context exists, the exception carries what the cell
            spent (:func:`spent_by_failed_cell`), so its sweep hold is settled, not released.
    """
    from testtime.trace.events import Tracer

    limits = Budget.parse(budget)
    s = cell_seed(seed, problem.id)
    tracer = Tracer()
    trace_id: str | None = None
    trace_path = None
    if env.spec.get("traces"):
        trace_id = tracer.run_id
        trace_path = str(Path(env.spec["traces"]) / f"{trace_id}.jsonl")
    ctx = env.context(limits, s, tracer)
    try:
        return await _run_in(env, ctx, problem, strategy, budget, seed, s, trace_id, trace_path)
    except Exception as exc:
        exc.cell_usage = failed_cell_usage(ctx.ledger)  # type: ignore[attr-defined]
        raise


def failed_cell_usage(ledger: BudgetLedger) -> dict[str, Any]:
    """What a cell that raised may have spent: its settled usage plus any holds still open.

    An open hold is a call whose bill is unknown, so it is counted at its
    worst case (never less than the backend may have charged).
    """
    held = Usage(input_tokens=int(ledger.reserved("input_tokens")), output_tokens=int(ledger.reserved("output_tokens")),
                 calls=int(ledger.reserved("calls")), usd=ledger.reserved("usd"))
    return (ledger.usage + held).to_dict()


def spent_by_failed_cell(exc: BaseException) -> dict[str, Any] | None:
    """What a cell that raised ``exc`` spent, for settling its sweep hold.

    None only when it failed before its run context existed (no call was
    made), so its hold can be released.
    """
    return getattr(exc, "cell_usage", None)


async def _run_in(env: CellEnv, ctx: Any, problem: Problem, strategy: str, budget: str, seed: int, s: int,
                  trace_id: str | None, trace_path: str | None) -> dict[str, Any]:
    from testtime.api import arun

    strat = make_strategy(strategy, **dict((env.spec.get("options") or {}).get(strategy) or {}))
    if strat.needs_prm and ctx.prm is None:
        raise UserError(f"strategy {strategy!r} needs a process reward model: pass --prm SPEC")
    t0 = time.monotonic()
    result = await arun(problem, strategy=strat, context=ctx, seed=s, trace=trace_path)
    seconds = time.monotonic() - t0
    if ctx.ledger.open_reservations():
        raise RuntimeError(f"{strategy} left {ctx.ledger.open_reservations()} open reservations")
    samples = []
    cache: dict[str, bool | None] = {}
    for c in _draw_order(result.candidates):
        if c.text not in cache:
            cache[c.text] = await env.grade(problem, c.text, c.answer)
        samples.append({"answer": env.sample_answer(problem, c.text, c.answer), "correct": cache[c.text],
                        "score": None if c.score is None else float(c.score)})
    correct = cache[result.text] if result.text in cache else await env.grade(problem, result.text, result.answer)
    if result.answer is None and not result.text.strip():
        correct = False if problem.answer is not None or env.spec.get("grader") == "code" else None
    difficulty = problem.meta.get("difficulty") if env.spec["kind"] == "sim" else None
    return {
        "v": ROW_VERSION, "config_hash": env.spec.get("config_hash", ""), "dataset": env.spec.get("dataset", ""),
        "problem_id": problem.id, "strategy": strategy, "budget": budget, "seed": seed,
        "answer": env.sample_answer(problem, result.text, result.answer),
        "correct": correct, "stopped_reason": result.stopped_reason, "usage": result.usage,
        "seconds": round(seconds, 4), "trace_id": trace_id, "samples": samples,
        "difficulty": None if difficulty is None else float(difficulty),
    }
