"""SandboxPool: parallel sandboxed runs, bounded, in order; a slow run blocks only itself."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.verifiers import pool as pool_mod
from testtime.verifiers import sandbox
from testtime.verifiers.base import Verdict
from testtime.verifiers.code import CodeVerifier, humaneval_problems
from testtime.verifiers.isolation import Isolation, RlimitsIsolation
from testtime.verifiers.pool import SandboxPool, verify_many
from testtime.verifiers.sandbox import SandboxLimits, SandboxResult


def _layers() -> list[object]:
    return [pytest.param(mode, id=mode) for mode in ("namespaces", "rlimits")]


def _pool(mode: str, **kwargs: object) -> SandboxPool:
    try:
        return SandboxPool(isolation=mode, **kwargs)  # type: ignore[arg-type]
    except UserError as exc:
        pytest.skip(f"layer {mode} not available here: {exc}")


def _result(status: str = "ok", stdout: str = "") -> SandboxResult:
    return SandboxResult(status=status, returncode=0 if status == "ok" else 1, stdout=stdout, stderr="",
                         completed=status == "ok")


@pytest.mark.parametrize("mode", _layers())
async def test_a_slow_candidate_fails_by_its_own_limit_while_the_fast_ones_finish_before_it(
        monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    ended: dict[int, float] = {}
    real = sandbox.run_python

    async def timed(code: str, **kwargs: object) -> SandboxResult:
        result = await real(code, **kwargs)  # type: ignore[arg-type]
        ended[int(code.split("#", 1)[1].split()[0])] = time.monotonic()
        return result

    timed.__signature__ = inspect.signature(real)  # type: ignore[attr-defined]
    monkeypatch.setattr(sandbox, "run_python", timed)
    wall = 3.0
    pool = _pool(mode, workers=2, limits=SandboxLimits(wall_s=wall, cpu_s=5))
    slow = "#0\nimport time\ntime.sleep(30)\n"
    fast = [f"#{i}\nprint({i} * 2)\n" for i in range(1, 7)]
    t0 = time.monotonic()
    results = await pool.map([slow, *fast])
    total = time.monotonic() - t0
    assert results[0].status == "timeout" and not results[0].completed
    assert [r.status for r in results[1:]] == ["ok"] * 6
    assert {r.isolation for r in results} == {mode}
    assert [r.stdout.strip() for r in results[1:]] == [str(i * 2) for i in range(1, 7)]
    # Not serialized behind the slow run: every fast one ended before it did.
    assert max(ended[i] for i in range(1, 7)) < ended[0]
    assert total < wall + 15  # generous: the slow one ends by its own limit, not by 30 s of sleep


async def test_map_returns_results_in_the_order_of_the_programs() -> None:
    pool = SandboxPool(workers=2, limits=SandboxLimits(wall_s=10.0, cpu_s=5))
    # Earlier programs sleep longer, so they finish last.
    codes = [f"import time\ntime.sleep({0.05 * (5 - i):.2f})\nprint({i})" for i in range(6)]
    results = await pool.map(codes)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]
    assert await pool.map([]) == []


class _Counting:
    """A stand-in for ``sandbox.run_python`` that counts runs in flight and the peak."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, code: str, *, limits: SandboxLimits | None = None, stdin: str = "",
                       isolation: object = None) -> SandboxResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            return _result(stdout=code)
        finally:
            self.in_flight -= 1


async def test_concurrent_runs_never_exceed_the_pool_width_and_reach_it(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting()
    monkeypatch.setattr(sandbox, "run_python", counting)
    pool = SandboxPool(workers=3)
    results = await pool.map([str(i) for i in range(20)])
    assert counting.peak == 3
    assert counting.in_flight == 0
    assert [r.stdout for r in results] == [str(i) for i in range(20)]


async def test_two_maps_on_one_pool_share_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting()
    monkeypatch.setattr(sandbox, "run_python", counting)
    pool = SandboxPool(workers=2)
    await asyncio.gather(pool.map(["a"] * 5), pool.map(["b"] * 5))
    assert counting.peak == 2


async def test_every_run_reuses_the_one_isolation_object_the_pool_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[object, str, object]] = []

    async def recording(code: str, *, limits: SandboxLimits | None = None, stdin: str = "",
                        isolation: object = None) -> SandboxResult:
        seen.append((isolation, stdin, limits))
        return _result()

    monkeypatch.setattr(sandbox, "run_python", recording)
    pool = SandboxPool(workers=2, isolation="rlimits")
    assert isinstance(pool.isolation, Isolation) and pool.isolation.name == "rlimits"
    await pool.map(["a", "b", "c"], stdin="in")
    assert len(seen) == 3
    assert all(iso is pool.isolation and stdin == "in" and lim is pool.limits for iso, stdin, lim in seen)
    given = RlimitsIsolation()
    assert SandboxPool(workers=1, isolation=given).isolation is given  # an object is reused as it is


async def test_a_run_that_overstays_its_limit_is_abandoned_with_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hangs(code: str, *, limits: SandboxLimits | None = None, stdin: str = "",
                    isolation: object = None) -> SandboxResult:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    monkeypatch.setattr(sandbox, "run_python", hangs)
    monkeypatch.setattr(pool_mod, "GRACE_S", 0.1)
    pool = SandboxPool(workers=1, isolation="rlimits", limits=SandboxLimits(wall_s=0.1))
    result = await asyncio.wait_for(pool.run("x"), 30)
    assert result.status == "timeout" and not result.ok
    assert result.completed is False and result.isolation == "rlimits"


def test_bad_pool_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="workers"):
        SandboxPool(workers=0)
    with pytest.raises(UserError, match="isolation"):
        SandboxPool(isolation="chroot")


def test_the_default_width_is_at_least_one_core() -> None:
    assert SandboxPool().workers >= 1


@pytest.mark.parametrize("mode", _layers())
async def test_verify_many_passes_canonical_humaneval_solutions_and_fails_wrong_ones(mode: str) -> None:
    ctx = RunContext(model=ScriptedModel(["unused"]))
    pool = _pool(mode, workers=2, limits=SandboxLimits(wall_s=20.0, cpu_s=5))
    problems = humaneval_problems(3)
    for problem in problems:
        good = f"```python\n{problem.meta['prompt'] + problem.meta['canonical_solution']}\n```"
        wrong_none = problem.meta["prompt"] + "    return None\n"
        wrong_raise = "    raise ValueError('no')\n"  # completion style: appended to the prompt
        verdicts = await verify_many(problem, [wrong_none, good, wrong_raise], pool, ctx=ctx)
        assert [v.passed for v in verdicts] == [False, True, False], (problem.id, verdicts)
        assert [v.score for v in verdicts] == [0.0, 1.0, 0.0]
        assert verdicts[1].detail.startswith("all tests passed")
        assert "AssertionError" in verdicts[0].detail or "TypeError" in verdicts[0].detail
        assert "ValueError" in verdicts[2].detail
        assert [v.data["isolation"] for v in verdicts] == [mode] * 3
        assert [v.data["completed"] for v in verdicts] == [False, True, False]


@pytest.mark.parametrize("mode", _layers())
async def test_verify_many_fails_a_wrong_candidate_that_exits_0_before_the_tests_end(mode: str) -> None:
    problem = humaneval_problems(1)[0]
    pool = _pool(mode, workers=2, limits=SandboxLimits(wall_s=20.0, cpu_s=5))
    early_exit = problem.meta["prompt"] + "    return None\nimport os\nos._exit(0)\n"
    system_exit = problem.meta["prompt"] + "    return None\nraise SystemExit(0)\n"
    verdicts = await verify_many(problem, [early_exit, system_exit], pool)
    assert [v.passed for v in verdicts] == [False, False]


async def test_verify_many_uses_the_problems_own_timeout() -> None:
    problem = humaneval_problems(1)[0]
    problem = type(problem)(question=problem.question, id=problem.id,
                            meta={**problem.meta, "timeout": 1.0})
    pool = SandboxPool(workers=1, limits=SandboxLimits(wall_s=60.0, cpu_s=5))
    (verdict,) = await verify_many(problem, [problem.meta["prompt"] + "    import time\n    time.sleep(30)\n"], pool)
    assert not verdict.passed and verdict.data["status"] == "timeout"


async def test_verify_many_gives_the_verdicts_the_code_verifier_gives_one_by_one() -> None:
    ctx = RunContext(model=ScriptedModel(["unused"]))
    limits = SandboxLimits(wall_s=20.0, cpu_s=5)
    pool = SandboxPool(workers=2, limits=limits)
    verifier = CodeVerifier(limits, isolation=pool.isolation)
    problem = humaneval_problems(1)[0]
    candidates = [problem.meta["prompt"] + problem.meta["canonical_solution"],
                  problem.meta["prompt"] + "    return None\n",
                  problem.meta["prompt"] + "    return None\nimport os\nos._exit(0)\n"]
    batched = await verify_many(problem, candidates, pool)
    single = [await verifier.verify(problem, c, ctx) for c in candidates]

    def strip(v: Verdict) -> tuple[object, ...]:
        return v.score, v.passed, v.detail, {k: x for k, x in v.data.items() if k != "wall_s"}

    assert [strip(v) for v in batched] == [strip(v) for v in single]
    assert [v.passed for v in batched] == [True, False, False]
