"""Budget ledgers shared by every request a gateway serves (per key, global).

A request is admitted by :meth:`LedgerStore.grant`: it *holds* its whole
budget (``want``) on every scope it belongs to -- its API key and the global
scope -- in both periods, lifetime (``total``) and the current UTC day
(``day``). The request then runs under its own
:class:`~testtime.budget.BudgetLedger` built from :attr:`Grant.budget`, and
:meth:`LedgerStore.settle` replaces the hold by what it actually spent. A
grant is admitted only when ``spent + held + want <= limit`` on every limited
dimension of every scope and period, checked and held in one atomic step (a
lock in memory, a ``BEGIN IMMEDIATE`` transaction in SQLite, a Lua script in
Redis), so ``spent <= limit`` holds across threads, processes and machines as
long as no request spends more than it was granted.

Semantics shared by every store (mirroring :class:`~testtime.budget.BudgetLedger`):

* **Degrading.** When ``want`` does not fit but ``minimum`` does, the grant
  holds what fits and :attr:`Grant.budget` is the smaller budget (the request
  runs anytime within it; :attr:`Grant.degraded` is True). A dimension some
  scope limits but ``want`` leaves unlimited is granted all the room left
  there -- pass a finite ``want`` to leave room for concurrent requests. A
  limited dimension with no room left refuses even when ``minimum`` does not
  name it (a request with nothing to spend cannot run).
* **Refusal.** :class:`LimitRefused` names the tightest limit: the scope,
  period and dimension that fell shortest of what was needed.
* **Over-report.** A settle above its hold (a backend that bills more than it
  was allowed) is recorded in full -- the spend happened -- and marks every
  scope/period whose limit on that dimension it could push past as
  *overdrawn*: later grants there are refused until
  :meth:`LedgerStore.clear_overdrawn` (lifetime) or until the next UTC day
  (a day period). The overspend is bounded by the excess of the grants in
  flight when it happened.
* **Crashed workers.** A hold whose ``ttl_s`` has passed is counted as fully
  spent and never freed: a worker that died mid-request may have spent all of
  it, and freeing it could let later requests pass the limit. A late settle
  of such a hold adds only what exceeds the hold (and marks overdrawn when it
  does); it never refunds.
* **Days.** The day period is keyed by the UTC date of the grant; a settle
  lands in the day its grant was made (a request straddling midnight is
  counted in the day it started).
* **Dimensions.** ``tokens``, ``input_tokens``, ``output_tokens``, ``calls``
  and ``usd`` (:data:`STORE_DIMENSIONS`). ``seconds`` is a per-request limit,
  not a shared one: the store ignores it and passes ``want.seconds`` through.
* **Idempotence.** Settling or releasing a grant twice, or an unknown id, does
  nothing.

Stores: :class:`MemoryStore` (one process), :class:`SqliteStore` (worker
processes on one machine sharing a file), :class:`RedisStore` (several
machines; extra ``redis``). :func:`open_store` opens one from a URL.

Modules: ``base`` (types, errors and the rules every store shares),
``memory``, ``sqlite``, ``redis`` (one per store), ``url`` (:func:`open_store`).
"""

from testtime.serve.ledgers.base import (
    PERIODS,
    STORE_DIMENSIONS,
    Grant,
    LedgerStore,
    LedgerUnavailable,
    LimitRefused,
    ScopeLimits,
    day_key,
    usage_amounts,
)
from testtime.serve.ledgers.memory import MemoryStore
from testtime.serve.ledgers.redis import RedisStore
from testtime.serve.ledgers.sqlite import SqliteStore
from testtime.serve.ledgers.url import open_store

__all__ = ["PERIODS", "STORE_DIMENSIONS", "Grant", "LedgerStore", "LedgerUnavailable", "LimitRefused",
           "MemoryStore", "RedisStore", "ScopeLimits", "SqliteStore", "day_key", "open_store", "usage_amounts"]
