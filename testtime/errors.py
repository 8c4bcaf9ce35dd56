"""Every exception testtime raises on purpose.

Two families matter to callers:

* :class:`UserError` -- the user asked for something that cannot work (bad
  budget spec, unknown model, unreadable file, missing API key). The CLI
  prints its message on one line and exits with status 2.
* :class:`TesttimeError` subclasses raised while running (API failures,
  budget refusals). :class:`ModelAPIError` says whether retrying may help.
"""

from __future__ import annotations


class TesttimeError(Exception):
    """Base class of every error raised by testtime."""


class UserError(TesttimeError):
    """A mistake in the user's input; the message says what to fix."""


class BudgetExhausted(TesttimeError):
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


class ModelAPIError(TesttimeError):
    """A model backend failed.

    Attributes:
        retryable: True when retrying the same request may succeed
            (408/429/5xx, timeouts, dropped connections).
        status: the HTTP status when there was one.
        retry_after: seconds the server asked us to wait, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
        backend: str = "",
    ) -> None:
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.backend = backend
        super().__init__(message)


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
