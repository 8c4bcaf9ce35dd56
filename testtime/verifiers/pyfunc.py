"""``python:module:function`` -- your own verifier (or PRM) as a Python callable.

The callable is imported by dotted module path (``python:mypkg.checks:judge``)
or from a file (``python:./checks.py:judge``) and called as

* ``fn(problem, candidate)`` or ``fn(problem, candidate, ctx)`` for a verifier
  (sync or async), returning a :class:`Verdict`, a bool (pass/fail, score
  1/0) or a score in [0, 1] (passes at ``threshold``, default 0.5);
* ``fn(problem, steps)`` / ``fn(problem, steps, ctx)`` for ``--prm
  python:...``, returning one score per step.

A callable that accepts ``ctx`` can spend budget through
``ctx.generate(..., role="verify")``. If it raises, the candidate fails with
the exception in ``Verdict.detail`` and an ``error`` trace event, so one bad
candidate cannot abort a search; a return value of the wrong type is a
:class:`UserError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testtime.errors import SearchStop, UserError
from testtime.verifiers.base import AGGREGATIONS, ProcessRewardModel, Verdict, Verifier

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem


def import_callable(target: str) -> Callable[..., Any]:
    """``"module:function"`` or ``"path/to/file.py:function"`` -> the callable."""
    module_name, sep, func_name = target.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UserError(f"python spec {target!r} must look like 'python:module:function' "
                        "or 'python:path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"python verifier file {path} does not exist")
            mod_id = f"testtime_user_{abs(hash(str(path)))}"
            spec = importlib.util.spec_from_file_location(mod_id, path)
            if spec is None or spec.loader is None:
                raise UserError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_id] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"cannot import {module_name!r} for a python verifier: {exc}") from None
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise UserError(f"{module_name!r} has no callable {func_name!r}")
    return fn


def _wants_ctx(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


async def _call(fn: Callable[..., Any], wants_ctx: bool, *args: Any) -> Any:
    out = fn(*args) if wants_ctx else fn(*args[:-1])
    if inspect.isawaitable(out):
        out = await out
    return out


def to_verdict(out: Any, threshold: float, origin: str) -> Verdict:
    """Turn a callable's result into a Verdict."""
    if isinstance(out, Verdict):
        return out
    if isinstance(out, bool):
        return Verdict(score=1.0 if out else 0.0, passed=out, detail=f"{origin} returned {out}")
    if isinstance(out, Real):
        score = float(out)
        if not 0.0 <= score <= 1.0:
            raise UserError(f"{origin} returned score {score}; scores must be in [0, 1]")
        return Verdict(score=score, passed=score >= threshold, detail=f"{origin} returned {score:.3g}")
    raise UserError(f"{origin} returned {type(out).__name__}; return a Verdict, a bool or a float in [0, 1]")


class PythonVerifier(Verifier):
    """Wraps a user callable as a verifier (see the module docstring)."""

    name = "python"

    def __init__(self, fn: Callable[..., Any], *, threshold: float = 0.5, label: str = "") -> None:
        self.fn = fn
        self.threshold = threshold
        self.label = label or getattr(fn, "__qualname__", "function")
        self._wants_ctx = _wants_ctx(fn)

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        try:
            out = await _call(self.fn, self._wants_ctx, problem, candidate, ctx)
        except (UserError, SearchStop):
            raise
        except Exception as exc:
            err = f"{type(exc).__name__}: {exc}"
            ctx.tracer.emit("error", where=f"python verifier {self.label}", error=err)
            verdict = Verdict(score=0.0, passed=False, detail=f"verifier {self.label} raised {err}")
        else:
            verdict = to_verdict(out, self.threshold, f"verifier {self.label}")
        ctx.tracer.emit("verdict", verifier=f"python:{self.label}", score=verdict.score,
                        passed=verdict.passed, detail=verdict.detail)
        return verdict


class PythonPRM(ProcessRewardModel):
    """Wraps ``fn(problem, steps[, ctx]) -> list[float]`` as a PRM."""

    name = "python"

    def __init__(self, fn: Callable[..., Any], *, aggregation: str = "min", label: str = "") -> None:
        if aggregation not in AGGREGATIONS:
            raise UserError(f"unknown PRM aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        self.fn = fn
        self.aggregation = aggregation
        self.label = label or getattr(fn, "__qualname__", "function")
        self._wants_ctx = _wants_ctx(fn)

    async def score_steps(self, problem: Problem, steps: Sequence[str], ctx: RunContext) -> list[float]:
        if not steps:
            return []
        out = await _call(self.fn, self._wants_ctx, problem, list(steps), ctx)
        if isinstance(out, Real):
            out = [float(out)] * len(steps)
        try:
            scores = [min(1.0, max(0.0, float(s))) for s in out]
        except (TypeError, ValueError):
            raise UserError(f"PRM {self.label} must return one float per step") from None
        if len(scores) != len(steps):
            raise UserError(f"PRM {self.label} returned {len(scores)} scores for {len(steps)} steps")
        ctx.tracer.emit("prm_scores", prm=f"python:{self.label}", scores=scores, aggregate=None)
        return scores


__all__ = ["PythonPRM", "PythonVerifier", "import_callable", "to_verdict"]
