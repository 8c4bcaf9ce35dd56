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


def test_max_retries_counts_retries_like_the_sdks() -> None:
    assert RetryPolicy.from_options({"max_retries": 2}).max_attempts == 3
    assert RetryPolicy.from_options({}).max_retries == 2  # the SDKs' default
    assert RetryPolicy.from_options({"max_retries": 0}).max_attempts == 1
    for bad in ("many", -1, 2.5, "1e400", True):
        with pytest.raises(UserError, match="max_retries"):
            RetryPolicy.from_options({"max_retries": bad})
    assert RetryPolicy().max_retry_after == 600.0
    with pytest.raises(UserError, match="max_retry_after"):
        RetryPolicy.from_options({"max_retry_after": "inf"})


def test_backoff_bounds() -> None:
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

    out = await with_retries(attempt, policy=RetryPolicy(max_retries=3), model="anthropic:m", translate=tr)
    assert out == "ok" and calls == 3
    assert sleeps[0] == 7.0  # Retry-After honoured
    assert 0 < sleeps[1] <= RetryPolicy().initial_wait * 2
    retry_events = [e for e in events if e.kind == "retry"]
    assert [e.data["attempt"] for e in retry_events] == [1, 2]
    assert retry_events[0].data["wait_s"] == 7.0 and "429" in retry_events[0].data["error"]


async def test_retry_after_beyond_the_cap_is_not_waited_for(sleeps: list[float]) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise APIStatusError(429, "later", {"retry-after": "3600"})
        return "ok"

    with pytest.raises(ModelAPIError, match="429") as info:
        await with_retries(attempt, policy=RetryPolicy(max_retry_after=5.0), model="m", translate=tr)
    assert calls == 1 and sleeps == [] and info.value.retry_after == 3600.0


async def test_retry_after_up_to_the_deadline_is_honoured_and_beyond_is_not(sleeps: list[float]) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise APIStatusError(429, "later", {"retry-after": "2"})
        if calls == 2:
            raise APIStatusError(429, "much later", {"retry-after": "120"})
        return "ok"

    deadline = time.monotonic() + 60  # the second wait would end after it
    with pytest.raises(ModelAPIError, match="much later"):
        await with_retries(attempt, policy=RetryPolicy(), model="m", translate=tr, deadline=deadline)
    assert calls == 2 and sleeps == [2.0]


def test_next_wait_says_none_past_the_deadline_or_the_attempts() -> None:
    busy = ModelAPIError("busy", retryable=True, status=429, retry_after=10.0)
    policy = RetryPolicy(max_retries=2, deadline=100.0)
    assert policy.next_wait(busy, 1, now=50.0) == 10.0
    assert policy.next_wait(busy, 1, now=95.0) is None  # would end at 105 > deadline
    assert policy.next_wait(busy, 1, now=50.0, deadline=55.0) is None  # the caller's deadline is earlier
    assert policy.next_wait(busy, 3, now=0.0) is None  # 3 attempts = 1 + max_retries: none left
    assert policy.next_wait(ModelAPIError("bad", retryable=False), 1, now=0.0) is None
    assert policy.next_wait(ValueError("bug"), 1, now=0.0) is None


async def test_attempts_are_bounded(sleeps: list[float]) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise APIStatusError(500, "down")

    with pytest.raises(ModelAPIError) as info:
        await with_retries(attempt, policy=RetryPolicy(max_retries=2), model="m", translate=tr)
    # max_retries=2: the first attempt and two retries
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


class OpenAIStatusError(APIStatusError):
    """Shaped like openai's: ``body`` is the inner error object, ``code``/``type`` on the exception."""

    def __init__(self, status: int, message: str, code: str, kind: str, usage: dict | None = None) -> None:
        super().__init__(status, message)
        self.body = {"message": message, "type": kind, "code": code, **({"usage": usage} if usage else {})}
        self.code = code
        self.type = kind


@pytest.mark.parametrize(("exc", "status"), [
    (OpenAIStatusError(429, "You exceeded your current quota, please check your plan and billing details.",
                       "insufficient_quota", "insufficient_quota"), 429),
    (OpenAIStatusError(429, "Billing hard limit has been reached", "billing_hard_limit_reached",
                       "invalid_request_error"), 429),
    (APIStatusError(400, "Your credit balance is too low to access the Anthropic API."), 400),
])
def test_quota_and_billing_errors_are_final_even_as_429(exc: APIStatusError, status: int) -> None:
    err = tr(exc)
    assert err is not None and not err.retryable and err.status == status
    assert "quota, credit balance and billing" in str(err)


def test_anthropic_billing_error_type_is_final() -> None:
    exc = APIStatusError(402, "pay up")
    exc.body = {"type": "error", "error": {"type": "billing_error", "message": "pay up"}}
    err = tr(exc)
    assert err is not None and not err.retryable and "billing" in str(err)


async def test_insufficient_quota_is_raised_at_once(sleeps: list[float]) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise OpenAIStatusError(429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota")

    with pytest.raises(ModelAPIError, match="quota"):
        await with_retries(attempt, policy=RetryPolicy(), model="m", translate=tr)
    assert calls == 1 and sleeps == []


class ConnectError(Exception):
    pass


class RemoteProtocolError(Exception):
    pass


def _chained(outer: Exception, cause: Exception) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:  # noqa: BLE001 - building a chained exception
        return exc


def test_connect_failures_are_marked_not_sent() -> None:
    refused = tr(_chained(APIConnectionError("Connection error."), ConnectError("refused")))
    assert refused is not None and refused.retryable and refused.sent is False
    dropped = tr(_chained(APIConnectionError("Connection error."), RemoteProtocolError("peer closed")))
    assert dropped is not None and dropped.retryable and dropped.sent is True
    assert tr(APITimeoutError("read timed out")).sent is True  # type: ignore[union-attr]


def test_usage_in_an_error_body_becomes_billed() -> None:
    exc = OpenAIStatusError(500, "failed after generating", "server_error", "server_error",
                            usage={"prompt_tokens": 7, "completion_tokens": 3})
    err = translate_error(exc, backend="openai", model="m", usage_parser=lambda u: (u["prompt_tokens"],
                                                                                   u["completion_tokens"]))
    assert err is not None and err.retryable and err.billed == (7, 3)
    assert tr(APIStatusError(500, "no usage")).billed is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("kind", "retryable"), [("overloaded_error", True), ("invalid_request_error", False)])
def test_error_events_inside_a_200_stream(kind: str, retryable: bool) -> None:
    exc = APIStatusError(200, "mid-stream")
    exc.body = {"type": "error", "error": {"type": kind, "message": "mid-stream"}}
    err = tr(exc)
    assert err is not None and err.retryable is retryable and "mid-stream" in str(err)
