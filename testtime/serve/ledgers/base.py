"""What every ledger store shares: the types, the errors and the one set of rules.

The rules (:func:`plan_grant` decides fit / degrade / refuse and names the
tightest limit; :func:`settle_deltas` decides what a settle moves) are pure
functions. :class:`RowStore` runs them on a store's rows inside its atomic
section (memory and SQLite); the Redis store runs a Lua transcription of
:func:`plan_grant` on the server, fed with the :func:`needs` and
:func:`hold_keys` computed here, because only a server-side script can check
and hold atomically there. The semantics are described in
:mod:`testtime.serve.ledgers`.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from testtime.budget import Budget, Usage
from testtime.errors import BudgetExhausted, TesttimeError, UserError

#: Dimensions a shared store limits (``seconds`` is per request only).
STORE_DIMENSIONS: tuple[str, ...] = ("tokens", "input_tokens", "output_tokens", "calls", "usd")
#: Periods a scope may be limited over.
PERIODS: tuple[str, ...] = ("total", "day")
#: Dimensions counted in whole units: rooms on them are floored.
INT_DIMS = frozenset({"tokens", "input_tokens", "output_tokens", "calls"})
#: Slack on usd comparisons, so sums of float prices admit an exact fit.
USD_EPS = 1e-12
#: Row values closer to 0 than this are stored as 0 (float residue of +x-x).
SNAP = 1e-9
#: Tombstones of expired holds are kept this long for a late settle, then pruned.
TOMBSTONE_S = 7 * 86400.0
#: The row columns: settled spend, holds in flight, over-report excess.
COLUMNS: tuple[str, ...] = ("spent", "held", "over")

Clock = Callable[[], float]
T = TypeVar("T")


def day_key(now: float) -> str:
    """The period key of the UTC day containing ``now`` (epoch seconds): ``"day:2026-12-01"``."""
    return "day:" + datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def usage_amounts(usage: Usage) -> dict[str, float]:
    """The amount ``usage`` has on each of :data:`STORE_DIMENSIONS`."""
    return {"tokens": float(usage.tokens), "input_tokens": float(usage.input_tokens),
            "output_tokens": float(usage.output_tokens), "calls": float(usage.calls),
            "usd": float(usage.usd)}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


class LedgerUnavailable(TesttimeError):
    """The ledger store could not be reached or locked in time (the gateway answers 503)."""


class LimitRefused(BudgetExhausted):
    """A shared limit refused a request (the gateway answers 429 with :meth:`to_dict`).

    The message and attributes name a scope (``"global"`` or ``"key:<key_id>"``,
    never a key itself), so both are safe to show to the client.

    Attributes:
        scope: the scope whose limit refused.
        period: ``"total"`` or ``"day"``.
        dimension: the budget dimension that refused (e.g. ``"tokens"``).
        requested: what the request needed there (its ``minimum``, else its ``want``).
        remaining: the room that was left.
        overdrawn: True when the scope/period is refused because an earlier
            request spent past its grant (``remaining`` is then 0).
    """

    def __init__(self, scope: str, period: str, dimension: str, requested: float,
                 remaining: float, *, overdrawn: bool = False) -> None:
        self.scope = scope
        self.period = period
        self.overdrawn = overdrawn
        self.dimension = dimension
        self.requested = float(requested)
        self.remaining = float(remaining)
        self.ledger = scope
        when = "today (resets at 00:00 UTC)" if period == "day" else "in total"
        if overdrawn:
            fix = ("until 00:00 UTC" if period == "day"
                   else "until an operator clears it")
            msg = (f"limit {scope} {dimension} {when} is overdrawn: an earlier request spent more "
                   f"than it was granted, so requests on it are refused {fix}")
        else:
            msg = (f"limit {scope} {dimension} {when}: this request needs {_fmt(self.requested)} "
                   f"but only {_fmt(self.remaining)} remain")
        TesttimeError.__init__(self, msg)

    def __reduce__(self) -> Any:  # picklable across worker processes
        return (functools.partial(type(self), overdrawn=self.overdrawn),
                (self.scope, self.period, self.dimension, self.requested, self.remaining))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description for a 429 body."""
        return {"message": str(self), "scope": self.scope, "period": self.period,
                "dimension": self.dimension, "requested": self.requested,
                "remaining": self.remaining, "overdrawn": self.overdrawn}


@dataclass(frozen=True)
class ScopeLimits:
    """The limits of one scope: ``"global"`` or ``"key:<key_id>"`` (never a key).

    Attributes:
        scope: the scope name.
        total: lifetime limits (None: none).
        per_day: limits that reset at 00:00 UTC (None: none).
    """

    scope: str
    total: Budget | None = None
    per_day: Budget | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scope, str) or not self.scope or any(c in self.scope for c in "|\n"):
            raise UserError(f"bad ledger scope {self.scope!r}: use 'global' or 'key:<key_id>'")

    def limits(self, period: str) -> dict[str, float]:
        """The limits on :data:`STORE_DIMENSIONS` for ``period`` (``"total"`` or ``"day"``)."""
        budget = self.total if period == "total" else self.per_day
        if budget is None:
            return {}
        return {d: float(v) for d, v in budget.limits().items() if d in STORE_DIMENSIONS}


@dataclass(frozen=True)
class Grant:
    """An admitted request: what it may spend, held until settled or released.

    Attributes:
        id: pass it to :meth:`LedgerStore.settle` / :meth:`LedgerStore.release`.
        budget: what the request may spend (``<= want`` on every dimension);
            build the request's own BudgetLedger from it.
        degraded: True when ``budget`` is smaller than ``want`` on some dimension.
        limited_by: when degraded, the tightest limit, e.g. ``"key:ab12cd34ef56 day tokens"``.
    """

    id: str
    budget: Budget
    degraded: bool = False
    limited_by: str | None = None


@runtime_checkable
class LedgerStore(Protocol):
    """Where the shared ledgers live; every method is safe to call concurrently."""

    def grant(self, scopes: Sequence[ScopeLimits], want: Budget, *, minimum: Budget | None = None,
              ttl_s: float = 3600) -> Grant:
        """Atomically hold up to ``want`` on every scope and period (see the package doc).

        Raises:
            LimitRefused: naming the tightest scope/period/dimension.
        """
        ...

    def settle(self, grant_id: str, actual: Usage) -> dict[str, float]:
        """Replace the hold by ``actual``; returns dimension -> excess over the hold (empty: fit)."""
        ...

    def release(self, grant_id: str) -> None:
        """Drop the hold, charging nothing (the request sent no call)."""
        ...

    def spent(self, scope: str, period: str = "total") -> dict[str, float]:
        """Settled spend (expired holds included) on every store dimension; ``day`` is today UTC."""
        ...

    def held(self, scope: str, period: str = "total") -> dict[str, float]:
        """Amounts held by grants in flight (not yet settled or expired)."""
        ...

    def overdrawn(self, scope: str, period: str = "total") -> dict[str, float]:
        """Dimension -> excess recorded by over-reporting settles (empty: not overdrawn)."""
        ...

    def clear_overdrawn(self, scope: str, period: str = "total") -> None:
        """Admit grants on an overdrawn scope again (an operator's decision)."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


# ------------------------------------------------------------ periods, args
def period_key(period: str, now: float) -> str:
    """The row key of ``period`` (``"total"``, ``"day"`` = today UTC, or ``"day:YYYY-MM-DD"``) at ``now``."""
    if period == "total":
        return "total"
    if period == "day":
        return day_key(now)
    if period.startswith("day:"):
        return period
    raise UserError(f"unknown ledger period {period!r}: use 'total', 'day' or 'day:YYYY-MM-DD'")


HoldKey = tuple[str, str, tuple[str, ...]]


def hold_keys(scopes: Sequence[ScopeLimits], today: str) -> list[HoldKey]:
    """(scope, period key, dimensions limited there) for every row a grant made ``today`` holds on."""
    return [(sl.scope, "total" if period == "total" else today, tuple(sorted(sl.limits(period))))
            for sl in scopes for period in PERIODS]


def check_grant_args(scopes: Sequence[ScopeLimits], want: Budget, minimum: Budget | None,
                     ttl_s: float) -> None:
    """Raise :class:`UserError` for arguments no store can grant on."""
    if not isinstance(want, Budget) or (minimum is not None and not isinstance(minimum, Budget)):
        raise UserError("grant needs Budget objects for want and minimum")
    if not (ttl_s > 0 and math.isfinite(ttl_s)):
        raise UserError(f"grant ttl_s must be a positive number of seconds, got {ttl_s!r}")
    names = [s.scope for s in scopes]
    if len(set(names)) != len(names):
        raise UserError(f"grant scopes repeat a scope: {names}")


def column_view(values: dict[str, float], column: str) -> dict[str, float]:
    """What a read of ``column`` returns: every dimension (0 when absent), or for ``over`` the nonzero ones."""
    if column == "over":
        return {d: v for d, v in values.items() if v}
    return {d: values.get(d, 0.0) for d in STORE_DIMENSIONS}


# ------------------------------------------------------------------ the rules
@dataclass(frozen=True)
class Needs:
    """Per dimension, what a grant request needs (computed once, shared with the Redis script).

    Attributes:
        want: ``want``'s limits on :data:`STORE_DIMENSIONS` (absent: unlimited).
        need: what the request cannot run without: ``minimum``'s value when a
            minimum is given, else ``want``'s (0 when absent) -- every dimension.
        asked: what a refusal names as requested: ``need``, or when that is 0,
            ``want`` (1 when unlimited or 0) -- every dimension.
    """

    want: dict[str, float]
    need: dict[str, float]
    asked: dict[str, float]


def needs(want: Budget, minimum: Budget | None) -> Needs:
    """The :class:`Needs` of a grant of ``want`` with ``minimum``."""
    w = {d: float(v) for d, v in want.limits().items() if d in STORE_DIMENSIONS}
    src = minimum if minimum is not None else want
    need = {d: float(v) if (v := getattr(src, d)) is not None else 0.0 for d in STORE_DIMENSIONS}
    asked = {d: need[d] if need[d] > 0 else (w.get(d) or 1.0) for d in STORE_DIMENSIONS}
    return Needs(w, need, asked)


def floor_room(dim: str, room: float) -> float:
    """The room left on ``dim``: never negative, whole units on integer dimensions."""
    room = max(room, 0.0)
    if dim in INT_DIMS:
        return float(math.floor(room + SNAP))
    return room


def granted_budget(want: Budget, amounts: dict[str, float]) -> Budget:
    """``want`` with the held ``amounts`` in place of its store dimensions (``seconds`` passes through)."""
    kw: dict[str, Any] = dict(want.limits())
    for dim, amt in amounts.items():
        kw[dim] = int(amt) if dim in INT_DIMS else amt
    return Budget(**kw)


@dataclass(frozen=True)
class Plan:
    """The outcome of checking a grant against the rooms left: what to hold, and the budget it gives."""

    amounts: dict[str, float]
    budget: Budget
    degraded: bool
    limited_by: str | None


def plan_grant(scopes: Sequence[ScopeLimits], want: Budget, minimum: Budget | None,
               today: str, used: Callable[[str, str], dict[str, float]],
               over: Callable[[str, str], dict[str, float]]) -> Plan:
    """Decide what a grant holds given ``used(scope, period_key)`` = spent + held there.

    The one place that decides fit, degrade and refusal (the Redis Lua
    script transcribes it). Pure: every store calls it inside its own atomic
    section.

    Raises:
        LimitRefused: an overdrawn scope/period, or the tightest limit that
            cannot give what is needed.
    """
    n = needs(want, minimum)
    # dim -> (room, scope, period) over every limited scope/period: the tightest.
    rooms: dict[str, tuple[float, str, str]] = {}
    for sl in scopes:
        for period in PERIODS:
            lims = sl.limits(period)
            if not lims:
                continue
            pkey = "total" if period == "total" else today
            excess = over(sl.scope, pkey)
            if excess:
                dim = min(excess)
                raise LimitRefused(sl.scope, period, dim, n.need.get(dim, 0.0), 0.0, overdrawn=True)
            u = used(sl.scope, pkey)
            for dim, lim in lims.items():
                room = floor_room(dim, lim - u.get(dim, 0.0))
                if dim not in rooms or room < rooms[dim][0]:
                    rooms[dim] = (room, sl.scope, period)
    amounts: dict[str, float] = {}
    worst: tuple[float, LimitRefused] | None = None
    degraded_by: tuple[float, str] | None = None
    for dim in STORE_DIMENSIONS:
        if dim not in rooms:
            continue
        room, scope, period = rooms[dim]
        w, need = n.want.get(dim), n.need[dim]
        eps = USD_EPS if dim == "usd" else 0.0
        # Short of the need, or no room at all on a dimension the request would spend.
        if room + eps < need or (room <= 0.0 and (w is None or w > 0)):
            ratio = room / need if need > 0 else 0.0
            if worst is None or ratio < worst[0]:
                worst = (ratio, LimitRefused(scope, period, dim, n.asked[dim], room))
            continue
        if w is None:
            amounts[dim] = room
        elif room + eps >= w:
            amounts[dim] = w
        else:
            amounts[dim] = room
            ratio = room / w if w > 0 else 1.0
            if degraded_by is None or ratio < degraded_by[0]:
                degraded_by = (ratio, f"{scope} {period} {dim}")
    if worst is not None:
        raise worst[1]
    return Plan(amounts, granted_budget(want, amounts), degraded_by is not None,
                degraded_by[1] if degraded_by else None)


@dataclass
class Hold:
    """A grant's hold as a store keeps it until settled, released or pruned."""

    id: str
    expires: float
    amounts: dict[str, float]
    keys: list[HoldKey]
    state: str = "held"  # or "expired"

    def to_json(self) -> str:
        """The body stored with the hold (the Redis script reads the same shape)."""
        return json.dumps({"a": self.amounts, "k": [[s, p, list(d)] for s, p, d in self.keys]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, gid: str, expires: float, state: str, body: str) -> Hold:
        """The hold :meth:`to_json` stored."""
        obj = json.loads(body)
        return cls(gid, expires, {k: float(v) for k, v in obj["a"].items()},
                   [(s, p, tuple(d)) for s, p, d in obj["k"]], state)


def settle_deltas(hold: Hold, actual: dict[str, float] | None
                  ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(held delta, spent delta, excess) for settling ``hold`` with ``actual`` (None: release).

    An expired hold was already moved to spent in full: only the excess of
    ``actual`` over it is added (no refund), plus ``actual`` on dimensions
    that were never held.
    """
    live = hold.state == "held"
    held_d = {d: -a for d, a in hold.amounts.items()} if live else {}
    spent_d: dict[str, float] = {}
    excess: dict[str, float] = {}
    if actual is not None:
        for dim in STORE_DIMENSIONS:
            a = actual.get(dim, 0.0)
            if dim in hold.amounts:
                over = a - hold.amounts[dim]
                if over > (USD_EPS if dim == "usd" else 0.0):
                    excess[dim] = over
                add = a if live else max(over, 0.0)
            else:
                add = a
            if add:
                spent_d[dim] = add
    return held_d, spent_d, excess


# --------------------------------------------------- stores built on rows
class RowState(Protocol):
    """Row access a :class:`RowStore` gives the shared rules, inside its atomic section."""

    def used(self, scope: str, pkey: str) -> dict[str, float]: ...
    def over(self, scope: str, pkey: str) -> dict[str, float]: ...
    def read(self, scope: str, pkey: str, column: str) -> dict[str, float]: ...
    def add(self, scope: str, pkey: str, column: str, deltas: dict[str, float]) -> None: ...
    def clear_over(self, scope: str, pkey: str) -> None: ...
    def put_hold(self, hold: Hold) -> None: ...
    def get_hold(self, gid: str) -> Hold | None: ...
    def drop_hold(self, gid: str) -> None: ...
    def mark_expired(self, gid: str) -> None: ...
    def due_holds(self, now: float) -> list[Hold]: ...
    def prune(self, before: float) -> None: ...


def sweep(state: RowState, now: float) -> None:
    """Count every hold past its ttl as spent (see the package doc)."""
    for hold in state.due_holds(now):
        for scope, pkey, _dims in hold.keys:
            state.add(scope, pkey, "held", {d: -a for d, a in hold.amounts.items()})
            state.add(scope, pkey, "spent", dict(hold.amounts))
        state.mark_expired(hold.id)
    state.prune(now - TOMBSTONE_S)


def do_grant(state: RowState, scopes: Sequence[ScopeLimits], want: Budget, minimum: Budget | None,
             ttl_s: float, now: float) -> Grant:
    """Sweep, plan and hold a grant on ``state`` (call inside the atomic section)."""
    sweep(state, now)
    today = day_key(now)
    plan = plan_grant(scopes, want, minimum, today, state.used, state.over)
    gid = uuid.uuid4().hex
    keys = hold_keys(scopes, today)
    if plan.amounts:
        for scope, pkey, _dims in keys:
            state.add(scope, pkey, "held", plan.amounts)
    state.put_hold(Hold(gid, now + ttl_s, plan.amounts, keys))
    return Grant(gid, plan.budget, plan.degraded, plan.limited_by)


def do_settle(state: RowState, gid: str, actual: Usage | None, now: float) -> dict[str, float]:
    """Sweep, then settle (``actual``) or release (None) grant ``gid`` on ``state``; returns the excess."""
    sweep(state, now)
    hold = state.get_hold(gid)
    if hold is None:
        return {}
    held_d, spent_d, excess = settle_deltas(hold, usage_amounts(actual) if actual is not None else None)
    for scope, pkey, dims in hold.keys:
        if held_d:
            state.add(scope, pkey, "held", held_d)
        if spent_d:
            state.add(scope, pkey, "spent", spent_d)
        marks = {d: e for d, e in excess.items() if d in dims}
        if marks:
            state.add(scope, pkey, "over", marks)
    state.drop_hold(gid)
    return excess


class ColumnReads:
    """``spent`` / ``held`` / ``overdrawn`` of :class:`LedgerStore` from one column read per store."""

    def _read_column(self, scope: str, period: str, column: str) -> dict[str, float]:
        """The raw ``column`` (one of :data:`COLUMNS`) of the row ``scope``/``period``, after a sweep."""
        raise NotImplementedError

    def spent(self, scope: str, period: str = "total") -> dict[str, float]:
        """Settled spend (expired holds included) on every store dimension; ``day`` is today UTC."""
        return column_view(self._read_column(scope, period, "spent"), "spent")

    def held(self, scope: str, period: str = "total") -> dict[str, float]:
        """Amounts held by grants in flight (not yet settled or expired)."""
        return column_view(self._read_column(scope, period, "held"), "held")

    def overdrawn(self, scope: str, period: str = "total") -> dict[str, float]:
        """Dimension -> excess recorded by over-reporting settles (empty: not overdrawn)."""
        return column_view(self._read_column(scope, period, "over"), "over")


class RowStore(ColumnReads):
    """A store whose rows the shared rules update inside one atomic section (memory, SQLite).

    A subclass provides :meth:`_atomic` and the :class:`RowState` it passes.
    """

    def _atomic(self, fn: Callable[[RowState, float], T]) -> T:
        """Run ``fn(state, now)`` atomically with respect to every other caller of this store."""
        raise NotImplementedError

    def grant(self, scopes: Sequence[ScopeLimits], want: Budget, *, minimum: Budget | None = None,
              ttl_s: float = 3600) -> Grant:
        """Atomically hold up to ``want`` on every scope and period (see :class:`LedgerStore`)."""
        check_grant_args(scopes, want, minimum, ttl_s)
        return self._atomic(lambda st, now: do_grant(st, scopes, want, minimum, ttl_s, now))

    def settle(self, grant_id: str, actual: Usage) -> dict[str, float]:
        """Replace the hold by ``actual``; returns dimension -> excess over the hold (empty: fit)."""
        return self._atomic(lambda st, now: do_settle(st, grant_id, actual, now))

    def release(self, grant_id: str) -> None:
        """Drop the hold, charging nothing (the request sent no call)."""
        self._atomic(lambda st, now: do_settle(st, grant_id, None, now))

    def _read_column(self, scope: str, period: str, column: str) -> dict[str, float]:
        def read(st: RowState, now: float) -> dict[str, float]:
            sweep(st, now)
            return st.read(scope, period_key(period, now), column)
        return self._atomic(read)

    def clear_overdrawn(self, scope: str, period: str = "total") -> None:
        """Admit grants on an overdrawn scope again (an operator's decision)."""
        self._atomic(lambda st, now: st.clear_over(scope, period_key(period, now)))
