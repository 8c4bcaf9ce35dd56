"""Every exception testtime raises on purpose.

Two families matter to callers:

* :class:`UserError` -- the user asked for something that cannot work (bad
  budget spec, unknown model, unreadable file, missing API key). The CLI
  prints its message on one line and exits with status 2.
* :class:`TesttimeError` subclasses raised while running (API failures,
  budget refusals). :class:`ModelAPIError` says whether retrying may help.
"""

from __future__ import annotations

from typing import Any


class TesttimeError(Exception):
    """Base class of every error raised by testtime."""


class UserError(TesttimeError):
    """A mistake in the user's input; the message says what to fix."""


class SearchStop(TesttimeError):
    """The spend path will not serve a call; an anytime strategy returns its best so far.

    Strategies catch this one class: :class:`BudgetExhausted` (the budget
    refused), :class:`BudgetOverdrawn` (a backend billed more than was
    reserved) and :class:`CallFailed` (the call failed after its retries).
    """


class BudgetExhausted(SearchStop):
    """A reservation did not fit in the remaining budget.

    Attributes:
        dimension: the budget dimension that refused (e.g. ``"tokens"``).
        requested: the amount the refused reservation asked for.
        remaining: what was left on that dimension.
    """

    def __init__(self, dimension: str, requested: float, remaining: float, ledger: str = "") -> None:
        self.dimension = dimension
        self.requested = requested
        self.remaining = remaining
        self.ledger = ledger
        where = f" in ledger {ledger!r}" if ledger else ""
        super().__init__(
            f"budget exhausted{where}: {dimension} needs {_fmt(requested)} "
            f"but only {_fmt(remaining)} remain"
        )


class BudgetOverdrawn(BudgetExhausted):
    """The ledger is overdrawn: a settle exceeded its reservation, so every later call is refused.

    Attributes:
        over: dimension -> how much the settle exceeded its reservation.
    """

    def __init__(self, ledger: str = "", over: dict[str, float] | None = None) -> None:
        self.over = dict(over or {})
        TesttimeError.__init__(
            self, f"budget overdrawn{f' in ledger {ledger!r}' if ledger else ''}: a backend billed more "
            f"than its reservation ({', '.join(f'{k} +{_fmt(v)}' for k, v in self.over.items()) or 'see trace'}); "
            "no further calls are made")
        self.dimension = next(iter(self.over), "tokens")
        self.requested = 0.0
        self.remaining = 0.0
        self.ledger = ledger


class ModelAPIError(TesttimeError):
    """A model backend failed.

    Attributes:
        retryable: True when retrying the same request may succeed
            (408/429/5xx, timeouts, dropped connections).
        status: the HTTP status when there was one.
        retry_after: seconds the server asked us to wait, if it said.
        billed: usage the provider says it billed for the failed attempt
            (None: unknown; the spend path then decides from the failure kind).
        sent: False when the request never reached the server (connect
            failure), so nothing can have been billed.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
        backend: str = "",
        billed: Any = None,
        sent: bool = True,
    ) -> None:
        self.retryable = retryable
        self.billed = billed
        self.sent = sent
        self.status = status
        self.retry_after = retry_after
        self.backend = backend
        super().__init__(message)


class CallFailed(SearchStop, ModelAPIError):
    """A model call failed after its retries; the run carries on with what it has.

    It is both a :class:`SearchStop` (anytime strategies return their best so
    far) and a :class:`ModelAPIError` (callers that handle API errors still
    see one, with the same status and message).

    Attributes:
        error: the backend's last :class:`ModelAPIError`.
    """

    def __init__(self, error: ModelAPIError) -> None:
        self.error = error
        ModelAPIError.__init__(self, str(error), retryable=False, status=error.status,
                               retry_after=error.retry_after, backend=error.backend,
                               billed=error.billed, sent=error.sent)


class MissingDependency(UserError):
    """An optional backend's package is not installed; names the extra."""

    def __init__(self, package: str, extra: str, what: str = "") -> None:
        self.package = package
        self.extra = extra
        purpose = f" for {what}" if what else ""
        super().__init__(
            f"{package} is not installed{purpose}; install it with "
            f"`pip install 'testtime[{extra}]'`"
        )


class CapabilityError(UserError):
    """A strategy needs something the chosen backend cannot give (e.g. logprobs)."""


def _fmt(x: float) -> str:
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.6g}"
