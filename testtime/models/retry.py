"""Retries for HTTP model backends.

One policy for every API backend: a call is retried when retrying may help
(408, 409, 429, 5xx, timeouts, dropped connections) with exponential backoff
and jitter, honouring the server's ``Retry-After`` (capped), for a bounded
number of attempts. Everything else (400, 401, 403, 404, context length
exceeded) raises at once with a message that says what to fix.

SDK exceptions are translated into :class:`~testtime.errors.ModelAPIError`
by duck typing (``status_code``, ``response.headers``, class names), so this
module imports neither the OpenAI nor the Anthropic SDK. Messages are
scrubbed of API keys before they leave this module.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from testtime.errors import ModelAPIError, UserError
from testtime.trace.events import emit_current, redact

T = TypeVar("T")

#: HTTP statuses worth retrying.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "exceed context",
)

# Tests patch this to record waits instead of sleeping.
_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to retry.

    Attributes:
        max_attempts: total attempts including the first (>= 1).
        initial_wait: backoff before the second attempt, in seconds.
        max_wait: cap of one exponential backoff wait.
        max_retry_after: cap on a server-requested ``Retry-After`` wait.
    """

    max_attempts: int = 4
    initial_wait: float = 0.5
    max_wait: float = 20.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UserError(f"max_retries must allow at least one attempt, got {self.max_attempts}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryPolicy:
        """Build from backend options (``max_retries`` = total attempts, default 4)."""
        raw = options.get("max_retries", 4)
        try:
            attempts = int(raw)
        except (TypeError, ValueError):
            raise UserError(f"max_retries must be an integer, got {raw!r}") from None
        return cls(max_attempts=max(attempts, 1))

    def backoff(self, attempt: int) -> float:
        """Wait before attempt ``attempt + 1``: exponential with equal jitter."""
        base = min(self.max_wait, self.initial_wait * (2 ** max(attempt - 1, 0)))
        return base / 2 + random.uniform(0, base / 2)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds a response asks us to wait (``retry-after-ms``, seconds or HTTP date)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        raw = headers.get("retry-after")
    except Exception:  # headers of an unexpected type: no hint
        return None
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    if not raw:
        return None
    raw = str(raw).strip()
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove API keys (given ones and anything key-shaped) from a message."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    return redact(text)


def _class_names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _error_text(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    msg = getattr(exc, "message", None)
    return str(msg or exc)


def translate_error(
    exc: BaseException,
    *,
    backend: str,
    model: str,
    key_env: str | None = None,
    base_url: str | None = None,
    secrets: Iterable[str | None] = (),
) -> ModelAPIError | None:
    """Turn an SDK/HTTP exception into a ModelAPIError (None if not an API error).

    The message says what to fix for errors that retrying cannot cure.
    """
    if isinstance(exc, ModelAPIError):
        return exc
    names = _class_names(exc)
    where = f" at {base_url}" if base_url else ""
    secrets = list(secrets)

    def err(message: str, **kw: Any) -> ModelAPIError:
        return ModelAPIError(scrub(f"{backend}:{model}: {message}", secrets), backend=backend, **kw)

    if names & {"APITimeoutError", "TimeoutException", "TimeoutError"} or isinstance(exc, TimeoutError):
        return err(f"request timed out{where}", retryable=True)
    status = getattr(exc, "status_code", None)
    if status is None and "APIStatusError" not in names:
        if names & {"APIConnectionError", "ConnectError", "RemoteProtocolError", "ReadError",
                    "NetworkError", "TransportError"} or isinstance(exc, ConnectionError):
            return err(f"connection to the server{where} failed ({_error_text(exc)})", retryable=True)
        return None
    status = int(status) if status is not None else 0
    text = _error_text(exc)
    response = getattr(exc, "response", None)
    retry_after = parse_retry_after(getattr(response, "headers", None))
    if status in RETRYABLE_STATUS or status >= 500:
        return err(f"HTTP {status}{where}: {text}", retryable=True, status=status, retry_after=retry_after)
    low = text.lower()
    if any(m in low for m in _CONTEXT_MARKERS):
        return err(f"the prompt does not fit the model's context window (HTTP {status}): {text}; "
                   "shorten the prompt or lower max_tokens", status=status)
    key_hint = f"check {key_env}" if key_env else "check the API key"
    hints = {
        401: f"authentication failed (HTTP 401): {key_hint}",
        403: f"permission denied (HTTP 403): the key in {key_env or 'use'} may not access model {model!r}",
        404: f"not found (HTTP 404){where}: check the model name {model!r} and the base URL",
        413: "request too large (HTTP 413): shorten the prompt",
    }
    if status in hints:
        return err(f"{hints[status]} ({text})", status=status)
    return err(f"request rejected (HTTP {status}){where}: {text}; fix the request or options", status=status)


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    model: str,
    translate: Callable[[BaseException], ModelAPIError | None],
) -> T:
    """Run ``attempt`` (one HTTP call) under ``policy``.

    Args:
        attempt: a coroutine factory doing exactly one request.
        policy: attempts and waits.
        model: the model spec, for trace events and messages.
        translate: maps SDK exceptions to ModelAPIError (None: not an API error, re-raised).

    Raises:
        ModelAPIError: the last error when attempts ran out, or at once when not retryable.
    """

    async def one() -> T:
        try:
            return await attempt()
        except (asyncio.CancelledError, ModelAPIError):
            raise
        except Exception as exc:
            mapped = translate(exc)
            if mapped is None:
                raise
            raise mapped from None  # drop the SDK chain: it may echo request headers

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None:
            return min(float(hinted), policy.max_retry_after)
        return policy.backoff(state.attempt_number)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait_s = state.next_action.sleep if state.next_action else 0.0
        emit_current("retry", model=model, attempt=state.attempt_number, error=str(exc),
                     wait_s=round(float(wait_s), 3))

    retrying = AsyncRetrying(
        sleep=lambda s: _sleep(s),
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=retry_if_exception(lambda e: isinstance(e, ModelAPIError) and e.retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(one)
