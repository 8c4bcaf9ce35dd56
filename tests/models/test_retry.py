"""The retry policy: which errors retry, how long we wait, what the messages say."""

from __future__ import annotations

import email.utils
import time
from types import SimpleNamespace

import pytest

from testtime.errors import ModelAPIError, UserError
from testtime.models.retry import RetryPolicy, parse_retry_after, scrub, translate_error, with_retries


class APIStatusError(Exception):
    """Shaped like the SDKs' status errors (duck-typed by translate_error)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message
        self.body = {"error": {"message": message}}
        self.response = SimpleNamespace(headers=headers or {})


class APITimeoutError(Exception):
    pass


class APIConnectionError(Exception):
    pass


def tr(exc: BaseException) -> ModelAPIError | None:
    return translate_error(exc, backend="anthropic", model="m", key_env="ANTHROPIC_API_KEY")


def test_retry_after_seconds_ms_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after({"retry-after": future}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 529])
def test_transient_statuses_are_retryable(status: int) -> None:
    err = tr(APIStatusError(status, "busy", {"retry-after": "2"}))
    assert err is not None and err.retryable and err.status == status and err.retry_after == 2.0


@pytest.mark.parametrize(("status", "hint"), [(400, "fix the request"), (401, "check ANTHROPIC_API_KEY"),
                                              (403, "permission denied"), (404, "check the model name")])
def test_client_errors_are_final_and_say_what_to_fix(status: int, hint: str) -> None:
    err = tr(APIStatusError(status, "nope"))
    assert err is not None and not err.retryable and hint in str(err)


def test_context_length_error_says_shorten() -> None:
    err = tr(APIStatusError(400, "This model's maximum context length is 4096 tokens"))
    assert err is not None and not err.retryable and "shorten the prompt" in str(err)


def test_timeouts_and_dropped_connections_are_retryable() -> None:
    assert tr(APITimeoutError("t")).retryable  # type: ignore[union-attr]
    assert tr(APIConnectionError("reset")).retryable  # type: ignore[union-attr]
    assert tr(ValueError("a bug")) is None  # not an API error: re-raised untouched


def test_keys_are_scrubbed_from_messages() -> None:
    key = "my-secret-key-123456"
    err = translate_error(APIStatusError(401, f"Incorrect API key provided: {key}"), backend="openai",
                          model="m", key_env="OPENAI_API_KEY", secrets=[key])
    assert err is not None and key not in str(err)
    assert "sk-ant-abcdefghijkl" not in scrub("key sk-ant-abcdefghijkl leaked")


def test_policy_options_and_backoff_bounds() -> None:
    assert RetryPolicy.from_options({"max_retries": 2}).max_attempts == 2
    with pytest.raises(UserError):
        RetryPolicy.from_options({"max_retries": "many"})
    p = RetryPolicy(initial_wait=1.0, max_wait=4.0)
    for attempt in range(1, 8):
        base = min(4.0, 2 ** (attempt - 1))
        assert base / 2 <= p.backoff(attempt) <= base


async def test_retries_until_success_and_emits_events(sleeps: list[float], events: list) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise APIStatusError(429, "slow down", {"retry-after": "7"})
        if calls == 2:
            raise APIStatusError(503, "overloaded")
        return "ok"

    out = await with_retries(attempt, policy=RetryPolicy(max_attempts=4), model="anthropic:m", translate=tr)
    assert out == "ok" and calls == 3
    assert sleeps[0] == 7.0  # Retry-After honoured
    assert 0 < sleeps[1] <= RetryPolicy().initial_wait * 2
    retry_events = [e for e in events if e.kind == "retry"]
    assert [e.data["attempt"] for e in retry_events] == [1, 2]
    assert retry_events[0].data["wait_s"] == 7.0 and "429" in retry_events[0].data["error"]


async def test_retry_after_is_capped(sleeps: list[float]) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise APIStatusError(429, "later", {"retry-after": "3600"})
        return "ok"

    await with_retries(attempt, policy=RetryPolicy(max_retry_after=5.0), model="m", translate=tr)
    assert sleeps == [5.0]


async def test_attempts_are_bounded(sleeps: list[float]) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise APIStatusError(500, "down")

    with pytest.raises(ModelAPIError) as info:
        await with_retries(attempt, policy=RetryPolicy(max_attempts=3), model="m", translate=tr)
    assert calls == 3 and len(sleeps) == 2 and info.value.status == 500 and info.value.retryable


async def test_non_retryable_raises_at_once(sleeps: list[float]) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise APIStatusError(401, "invalid x-api-key")

    with pytest.raises(ModelAPIError, match="check ANTHROPIC_API_KEY"):
        await with_retries(attempt, policy=RetryPolicy(), model="m", translate=tr)
    assert calls == 1 and sleeps == []
