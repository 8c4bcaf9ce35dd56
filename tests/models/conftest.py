"""Fixtures for backend tests: a clean key environment, recorded retry waits, captured trace events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testtime.models import retry
from testtime.trace.events import TraceEvent, Tracer, current_tracer


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's real keys and base URLs must never reach a test."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits, recorded instead of slept."""
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(retry, "_sleep", fake_sleep)
    return waits


@pytest.fixture
def events() -> Iterator[list[TraceEvent]]:
    """Trace events emitted by backends during the test (via the current tracer)."""
    got: list[TraceEvent] = []
    token = current_tracer.set(Tracer(sinks=[got.append]))
    yield got
    current_tracer.reset(token)
