"""Retries for HTTP model backends.

One policy for every API backend, with the SDKs' meaning of ``max_retries``
(retries after the first attempt: ``max_retries=2`` allows 3 attempts). A
call is retried when retrying may help (408, 409, 429, 5xx, timeouts,
dropped connections, a stream cut mid-way) with exponential backoff and
jitter, honouring the server's ``Retry-After`` -- but never past a deadline
(the run's, when the spend path gives one) nor beyond ``max_retry_after``:
a wait that would pass either is not taken and the last error is raised.
Everything else (400, 401, 403, 404, context length exceeded, and quota or
billing errors even when they come as 429) raises at once with a message
that says what to fix.

SDK exceptions are translated into :class:`~testtime.errors.ModelAPIError`
by duck typing (``status_code``, ``response.headers``, class names), so this
module imports neither the OpenAI nor the Anthropic SDK. Messages are
scrubbed of API keys before they leave this module.

The spend path (:meth:`testtime.context.RunContext.generate`) retries
attempts itself, reserving each one, with :meth:`RetryPolicy.next_wait`;
:func:`with_retries` is the same loop for direct (ledger-less) callers.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

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


#: Error codes/types (and message fragments) that mean the account cannot pay:
#: retrying cannot help, even when they come as HTTP 429.
_BILLING_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_error",
                            "billing_not_active", "account_deactivated"})
_BILLING_MARKERS = ("credit balance", "exceeded your current quota", "billing hard limit",
                    "insufficient_quota", "billing_error")
#: Error types a provider may send *inside* a 200 stream that retrying may cure.
_STREAM_RETRYABLE_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "server_error",
                                     "timeout_error", "internal_error"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard to retry, with the SDKs' meaning of ``max_retries``.

    Attributes:
        max_retries: retries after the first attempt (>= 0; default 2 like the
            OpenAI and Anthropic SDKs, so up to 3 attempts).
        initial_wait: backoff before the first retry, in seconds.
        max_wait: cap of one exponential backoff wait.
        max_retry_after: the longest server-requested ``Retry-After`` we honour;
            a longer request is not waited for (the error is raised).
        deadline: ``time.monotonic()`` value after which no retry starts
            (None: none); a wait that would pass it is not taken.
    """

    max_retries: int = 2
    initial_wait: float = 0.5
    max_wait: float = 20.0
    max_retry_after: float = 600.0
    deadline: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise UserError(f"max_retries must be an integer >= 0 (retries after the first attempt), "
                            f"got {self.max_retries!r}")
        if not self.max_retry_after >= 0:
            raise UserError(f"max_retry_after must be >= 0 seconds, got {self.max_retry_after!r}")

    @property
    def max_attempts(self) -> int:
        """Total attempts including the first: ``max_retries + 1``."""
        return self.max_retries + 1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryPolicy:
        """Build from backend options: ``max_retries`` (retries, default 2), ``max_retry_after`` (s, 600)."""
        raw = options.get("max_retries", 2)
        try:
            if isinstance(raw, bool) or float(raw) != int(raw):
                raise ValueError
            retries = int(raw)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"max_retries must be an integer >= 0, got {raw!r}") from None
        if retries < 0:
            raise UserError(f"max_retries must be an integer >= 0 (retries after the first attempt), got {raw!r}")
        cap = options.get("max_retry_after", 600.0)
        try:
            cap_s = float(cap)
        except (TypeError, ValueError):
            raise UserError(f"max_retry_after must be a number of seconds, got {cap!r}") from None
        if not 0 <= cap_s < float("inf"):
            raise UserError(f"max_retry_after must be a finite number of seconds >= 0, got {cap!r}")
        return cls(max_retries=retries, max_retry_after=cap_s)

    def backoff(self, attempt: int) -> float:
        """Wait before attempt ``attempt + 1``: exponential with equal jitter."""
        base = min(self.max_wait, self.initial_wait * (2 ** max(attempt - 1, 0)))
        return base / 2 + random.uniform(0, base / 2)

    def next_wait(self, error: BaseException, attempt: int, *, deadline: float | None = None,
                  now: float | None = None) -> float | None:
        """Seconds to wait before retrying after ``error`` ended attempt ``attempt`` (1-based).

        None means do not retry: the error is not a retryable
        :class:`ModelAPIError`, the attempts are used up, the server asked
        for a wait longer than :attr:`max_retry_after`, or the wait would
        end after the deadline (the earlier of :attr:`deadline` and
        ``deadline``, both ``time.monotonic()`` values).
        """
        if not isinstance(error, ModelAPIError) or not error.retryable or attempt >= self.max_attempts:
            return None
        hinted = error.retry_after
        if hinted is not None:
            if hinted > self.max_retry_after:
                return None
            wait = float(hinted)
        else:
            wait = self.backoff(attempt)
        ends = [d for d in (self.deadline, deadline) if d is not None]
        if ends:
            t = time.monotonic() if now is None else now
            if t + wait > min(ends):
                return None
        return wait


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


def _error_fields(exc: BaseException) -> tuple[set[str], dict[str, Any] | None]:
    """Error codes/types the exception carries, and the usage its body reports (if any).

    OpenAI puts ``{"message", "type", "code"}`` in ``exc.body`` (and on the
    exception); Anthropic's body is ``{"type": "error", "error": {"type", "message"}}``.
    """
    codes: set[str] = set()
    for attr in ("code", "type"):
        v = getattr(exc, attr, None)
        if isinstance(v, str):
            codes.add(v)
    usage = None
    body = getattr(exc, "body", None)
    layers = [body] if isinstance(body, dict) else []
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        layers.append(body["error"])
    for layer in layers:
        for key in ("code", "type"):
            v = layer.get(key)
            if isinstance(v, str) and v != "error":
                codes.add(v)
        if isinstance(layer.get("usage"), dict) and usage is None:
            usage = layer["usage"]
    return codes, usage


def _not_sent(exc: BaseException) -> bool:
    """Whether the request never reached the server (connect failure), by the cause chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _class_names(cur) & {"ConnectError", "ConnectTimeout", "PoolTimeout"}:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def translate_error(
    exc: BaseException,
    *,
    backend: str,
    model: str,
    key_env: str | None = None,
    base_url: str | None = None,
    secrets: Iterable[str | None] = (),
    usage_parser: Callable[[dict[str, Any]], Any] | None = None,
) -> ModelAPIError | None:
    """Turn an SDK/HTTP exception into a ModelAPIError (None if not an API error).

    The message says what to fix for errors that retrying cannot cure.
    Connect failures get ``sent=False``; a body that reports usage (rare)
    is turned into ``billed`` by ``usage_parser``.
    """
    if isinstance(exc, ModelAPIError):
        return exc
    names = _class_names(exc)
    where = f" at {base_url}" if base_url else ""
    secrets = list(secrets)

    def err(message: str, **kw: Any) -> ModelAPIError:
        return ModelAPIError(scrub(f"{backend}:{model}: {message}", secrets), backend=backend, **kw)

    if names & {"APITimeoutError", "TimeoutException", "TimeoutError"} or isinstance(exc, TimeoutError):
        if _not_sent(exc):
            return err(f"could not connect to the server{where} in time", retryable=True, sent=False)
        return err(f"request timed out{where} (no data within the idle timeout)", retryable=True)
    status = getattr(exc, "status_code", None)
    codes, body_usage = _error_fields(exc)
    text = _error_text(exc)
    low = text.lower()
    billed = None
    if body_usage is not None and usage_parser is not None:
        try:
            billed = usage_parser(body_usage)
        except (TypeError, ValueError, KeyError):
            billed = None
    api_error = status is not None or bool(names & {"APIStatusError", "APIError"})
    if api_error and (codes & _BILLING_CODES or any(m in low for m in _BILLING_MARKERS)):
        shown = f"HTTP {status}" if status else "error"
        return err(f"the account cannot pay for this request ({shown}: {text}); check the account's "
                   "quota, credit balance and billing settings with the provider -- not retried",
                   status=int(status) if status and int(status) >= 400 else None, billed=billed)
    if status is None and "APIStatusError" not in names:
        if names & {"APIConnectionError", "ConnectError", "RemoteProtocolError", "ReadError",
                    "NetworkError", "TransportError"} or isinstance(exc, ConnectionError):
            if _not_sent(exc):
                return err(f"cannot connect to the server{where} ({_error_text(exc)})", retryable=True,
                           sent=False)
            return err(f"connection to the server{where} failed ({_error_text(exc)})", retryable=True)
        if "APIError" in names:  # an error event inside a stream, no HTTP status
            retry = not any(m in low for m in _CONTEXT_MARKERS)
            return err(f"the server reported an error mid-stream{where}: {text}", retryable=retry,
                       billed=billed)
        return None
    status = int(status) if status is not None else 0
    response = getattr(exc, "response", None)
    retry_after = parse_retry_after(getattr(response, "headers", None))
    if 200 <= status < 300:
        # An error event inside a stream that started fine (Anthropic sends these with the 200).
        retry = bool(codes & _STREAM_RETRYABLE_TYPES) or not codes
        return err(f"the server reported an error mid-stream{where}: {text}", retryable=retry,
                   billed=billed)
    if status in RETRYABLE_STATUS or status >= 500:
        return err(f"HTTP {status}{where}: {text}", retryable=True, status=status, retry_after=retry_after,
                   billed=billed)
    if any(m in low for m in _CONTEXT_MARKERS):
        return err(f"the prompt does not fit the model's context window (HTTP {status}): {text}; "
                   "shorten the prompt or lower max_tokens", status=status, billed=billed)
    key_hint = f"check {key_env}" if key_env else "check the API key"
    hints = {
        401: f"authentication failed (HTTP 401): {key_hint}",
        403: f"permission denied (HTTP 403): the key in {key_env or 'use'} may not access model {model!r}",
        404: f"not found (HTTP 404){where}: check the model name {model!r} and the base URL",
        413: "request too large (HTTP 413): shorten the prompt",
    }
    if status in hints:
        return err(f"{hints[status]} ({text})", status=status, billed=billed)
    return err(f"request rejected (HTTP {status}){where}: {text}; fix the request or options", status=status,
               billed=billed)


def map_error(exc: BaseException, translate: Callable[[BaseException], ModelAPIError | None]) -> BaseException:
    """``translate(exc)`` when it is an API error, else ``exc`` itself (re-raise it untouched)."""
    if isinstance(exc, ModelAPIError):
        return exc
    mapped = translate(exc)
    return exc if mapped is None else mapped


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    model: str,
    translate: Callable[[BaseException], ModelAPIError | None],
    deadline: float | None = None,
) -> T:
    """Run ``attempt`` (one whole request, streamed or not) under ``policy``.

    Args:
        attempt: a coroutine factory doing exactly one request.
        policy: retries and waits (``policy.max_retries`` retries at most).
        model: the model spec, for trace events and messages.
        translate: maps SDK exceptions to ModelAPIError (None: not an API error, re-raised).
        deadline: ``time.monotonic()`` value no wait may pass (with ``policy.deadline``).

    Raises:
        ModelAPIError: the last error when retries ran out or the next wait
            would pass the deadline, or at once when not retryable.
    """
    n = 0
    while True:
        n += 1
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            mapped = map_error(exc, translate)
            if mapped is exc and not isinstance(exc, ModelAPIError):
                raise
            wait = policy.next_wait(mapped, n, deadline=deadline)
            if wait is None:
                if mapped is exc:
                    raise
                raise mapped from None  # drop the SDK chain: it may echo request headers
        emit_current("retry", model=model, attempt=n, error=str(mapped), wait_s=round(float(wait), 3))
        await _sleep(wait)
