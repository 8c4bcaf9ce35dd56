"""Run many candidates' tests in parallel, each in its own sandbox.

:class:`SandboxPool` is the batched front of
:func:`testtime.verifiers.sandbox.run_python` that best-of-N on code needs:
hundreds of programs per problem, run at most ``workers`` at a time (default:
the cores free now, as :func:`testtime.models.llamacpp.free_cores` counts
them), each with its own wall-clock limit. A slot is held only for the run
that uses it, so one slow or hostile candidate holds one slot until its own
limit kills it and never serializes the others behind it; a run that
overstays its limit by :data:`GRACE_S` (a sandbox that cannot end its child)
is abandoned by the pool with a ``timeout`` result rather than waited on.

Start-up cost is kept out of the per-run path: the isolation layer is chosen
once per pool (:func:`testtime.verifiers.isolation.choose_isolation`, which
probes the layer by starting Python in it) and the same object is handed to
every run. Measured (``bench/sandbox.py``): building the bwrap argv costs
~0.1 ms of a ~30 ms run, so it is not cached; the rest is the interpreter's
own start-up inside the layer. ``run_python`` itself also admits at most
``os.cpu_count()`` runs at once per event loop, so a pool wider than that
queues there.

:func:`verify_many` is the batched form of the ``code`` verifier: it builds
each candidate's program with :func:`testtime.verifiers.code.build_program`
and maps them over a pool, returning one :class:`Verdict` per candidate in
order.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from testtime.errors import UserError
from testtime.verifiers import sandbox
from testtime.verifiers.base import Verdict
from testtime.verifiers.code import build_program, verdict_of
from testtime.verifiers.isolation import Isolation, choose_isolation
from testtime.verifiers.sandbox import SandboxLimits, SandboxResult

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem

#: Seconds past a run's own wall limit after which the pool stops waiting for
#: it (the sandbox kills at the limit; this only bounds a sandbox that hangs).
GRACE_S = 10.0


def default_workers() -> int:
    """Cores free now (at least 1): the pool's default width."""
    from testtime.models.llamacpp import free_cores

    return free_cores()


def _timeout_result(limits: SandboxLimits, wall_s: float, iso: Isolation) -> SandboxResult:
    return SandboxResult(status="timeout", returncode=None, stdout="", wall_s=wall_s, completed=False,
                         stderr="the sandbox did not end within its wall-clock limit; abandoned by the pool",
                         isolation=iso.name, backend=iso.backend)


class SandboxPool:
    """Runs programs in sandboxes, at most ``workers`` at once.

    Args:
        workers: how many runs at once (default: the cores free when the pool
            is made; at least 1).
        isolation: ``"auto"`` (best available), ``"namespaces"`` (mandatory:
            :class:`UserError` here when it cannot be had), ``"rlimits"``, or
            an :class:`Isolation` to reuse. Chosen once, here; every run
            reuses the same object.
        limits: default :class:`SandboxLimits` of every run.

    The pool can be used from several event loops in turn (one semaphore per
    loop); it holds no processes between runs.
    """

    def __init__(self, workers: int | None = None, isolation: str | Isolation = "auto",
                 limits: SandboxLimits | None = None) -> None:
        if workers is not None and workers < 1:
            raise UserError(f"a sandbox pool needs workers >= 1, got {workers}")
        self.workers = int(workers) if workers is not None else default_workers()
        self.limits = limits or SandboxLimits()
        self.isolation = choose_isolation(isolation or "auto")
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    def __repr__(self) -> str:
        return f"SandboxPool(workers={self.workers}, isolation={self.isolation.name!r})"

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._sems.get(loop)
        if sem is None:
            sem = self._sems[loop] = asyncio.Semaphore(self.workers)
        return sem

    async def run(self, code: str, stdin: str = "", *, limits: SandboxLimits | None = None) -> SandboxResult:
        """Run one program (under ``limits`` or the pool's) once a slot is free."""
        limits = limits or self.limits
        async with self._slots():
            return await self._run(code, stdin, limits)

    async def _run(self, code: str, stdin: str, limits: SandboxLimits) -> SandboxResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # sandbox.run_python looked up per call (tests wrap it).
        run = sandbox.run_python(code, limits=limits, stdin=stdin, isolation=self.isolation)
        try:
            return await asyncio.wait_for(run, limits.wall_s + GRACE_S)
        except TimeoutError:
            return _timeout_result(limits, loop.time() - t0, self.isolation)

    async def map(self, codes: Iterable[str], *, limits: SandboxLimits | None = None,
                  stdin: str = "") -> list[SandboxResult]:
        """Run every program; results in the order of ``codes``."""
        return list(await asyncio.gather(*(self.run(c, stdin, limits=limits) for c in codes)))


async def verify_many(problem: Problem, candidates: Sequence[str], pool: SandboxPool, *,
                      ctx: RunContext | None = None) -> list[Verdict]:
    """Verdicts of the ``code`` verifier for ``candidates``, run in parallel on ``pool``.

    The problem's ``meta["timeout"]`` overrides the pool's wall limit, as in
    :class:`testtime.verifiers.code.CodeVerifier`. With ``ctx`` each verdict
    is traced as the verifier's are.

    Raises:
        UserError: the problem has no tests (from ``build_program``).
    """
    programs = [build_program(problem, c) for c in candidates]
    limits = pool.limits
    if problem.meta.get("timeout"):
        limits = replace(limits, wall_s=float(problem.meta["timeout"]))
    results = await pool.map(programs, limits=limits)
    verdicts = [verdict_of(r) for r in results]
    if ctx is not None:
        for v in verdicts:
            ctx.tracer.emit("verdict", verifier="code", score=v.score, passed=v.passed, detail=v.detail)
    return verdicts


__all__ = ["GRACE_S", "SandboxPool", "default_workers", "verdict_of", "verify_many"]
