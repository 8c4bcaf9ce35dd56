"""Verifiers and PRMs that load a model, built once per spec for the gateway's lifetime.

``genrm:MODEL``, ``flexive:MODEL``, ``prm:llm:MODEL`` and ``prm:vllm:...``
load a model (an HTTP client, a probe, or a whole vLLM engine) when built.
Built per request, every request paid that and none was ever closed. These
forms hold no per-request state -- they take the request's
:class:`~testtime.context.RunContext` on every call and keep only their
settings and their model (``genrm:policy`` uses ``ctx.model``, the request's
own) -- so one instance per spec serves every request, and
:meth:`JudgeCache.aclose` closes their models when the gateway stops.

Every other form is still built per request: they are cheap, and some keep
per-run state (``prm:confidence`` remembers the logprobs of the run's own
samples; a ``python:`` callable may keep anything).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

#: Forms (before the model spec) built once and shared: each loads a model, none keeps per-request state.
SHARED_FORMS: dict[str, tuple[str, ...]] = {
    "verifier": ("genrm:", "flexive:"),
    "prm": ("prm:llm:", "prm:vllm:"),
}


def is_shared(kind: str, spec: str) -> bool:
    """Whether the gateway builds ``spec`` (a ``verifier`` or ``prm``) once and shares it."""
    return spec.strip().lower().startswith(SHARED_FORMS[kind])


class JudgeCache:
    """Model-backed verifiers/PRMs by spec: built on first use (once, even under concurrency)."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        #: How many judges were built (each spec once); for tests and /health.
        self.constructed = 0

    async def resolve(self, kind: str, spec: str | None) -> Any:
        """The shared object for a model-backed ``spec``; any other spec (or None) comes back as is
        and is built per request by :func:`testtime.api.build_context`."""
        if not spec or not is_shared(kind, spec):
            return spec
        key = (kind, spec.strip())
        judge = self._built.get(key)
        if judge is not None:
            return judge
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            judge = self._built.get(key)
            if judge is None:
                from testtime.verifiers.registry import load_prm, load_verifier

                load = load_verifier if kind == "verifier" else load_prm
                # A model load may probe a server: a blocking call, off the event loop.
                judge = await asyncio.to_thread(load, key[1])
                self._built[key] = judge
                self.constructed += 1
        return judge

    async def aclose(self) -> None:
        """Close every built judge's model (each once); the cache is empty afterwards."""
        built, self._built = self._built, {}
        seen: set[int] = set()
        for judge in built.values():
            for target in (judge, getattr(judge, "model", None)):
                close = getattr(target, "aclose", None)
                if target is None or id(target) in seen or close is None:
                    continue
                seen.add(id(target))
                with contextlib.suppress(Exception):  # one failing close must not keep the rest open
                    await close()
