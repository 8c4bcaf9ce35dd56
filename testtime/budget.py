"""The global budget: limits, usage, and the ledger that enforces them.

Every model call goes through :meth:`BudgetLedger.reserve`: the worst case
(prompt upper bound + n x max_tokens, priced) is reserved *before* the call is
sent and settled to the actual usage after it returns. A reservation that does
not fit raises :class:`~testtime.errors.BudgetExhausted`; strategies catch it
and return their best answer so far. Because reservations are checked against
``spent + reserved``, ``spent <= limit`` holds on every dimension under any
concurrency *as long as no settle exceeds its reservation*. One that does (a
backend over-reporting, a wrong price) is recorded in full and marks the
ledger overdrawn: every later reservation is refused
(:class:`~testtime.errors.BudgetOverdrawn`), so the overspend is bounded by
that one call's excess. Recording spend that already happened
(:meth:`BudgetLedger.charge`, :meth:`BudgetLedger.restore`) never raises.

Child ledgers carve a share of their parent for a stage or a subtree: a
reservation in a child is also a reservation in every ancestor, so a child can
never spend what its parent does not have. Budget a child did not use stays
in the parent and so rolls over to whatever runs next.
"""

from __future__ import annotations

import operator
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from testtime.errors import BudgetExhausted, BudgetOverdrawn, UserError

#: Dimensions a budget may limit, in display order.
DIMENSIONS: tuple[str, ...] = ("tokens", "input_tokens", "output_tokens", "calls", "usd", "seconds")
_INT_DIMS = {"tokens", "input_tokens", "output_tokens", "calls"}
_ALIASES = {
    "token": "tokens",
    "tok": "tokens",
    "input": "input_tokens",
    "output": "output_tokens",
    "call": "calls",
    "dollars": "usd",
    "cost": "usd",
    "s": "seconds",
    "sec": "seconds",
    "time": "seconds",
}
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_NUMBER = re.compile(r"^\$?([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)$", re.I)
_TIME_UNITS = (("min", 60.0), ("m", 60.0), ("h", 3600.0), ("sec", 1.0), ("s", 1.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """Limits on any subset of the budget dimensions; ``None`` means unlimited.

    ``tokens`` counts input + output tokens together; ``seconds`` is wall time
    from the moment the ledger is created.
    """

    tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    calls: int | None = None
    usd: float | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        for name in DIMENSIONS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"budget {name} must be a number, got {value!r}")
            if value != value or value < 0:
                raise UserError(f"budget {name} must be a non-negative number, got {value!r}")
            if value > 1e18:  # inf included
                raise UserError(f"budget {name}={value!r} is too large (at most 1e18); "
                                f"leave {name} out for no limit on it")

    @classmethod
    def parse(cls, spec: str | None) -> Budget:
        """Parse ``"tokens=20k,usd=0.5,seconds=60"`` (k/M suffixes allowed).

        Raises:
            UserError: naming the part of the spec that could not be read.
        """
        if spec is None:
            return cls()
        if not isinstance(spec, str):
            raise UserError(f"a budget spec must be a string like tokens=20k,usd=0.5, got {spec!r}")
        if not spec.strip(" ,\t\n"):
            raise UserError(f"empty budget spec {spec!r}: give limits like tokens=20k,usd=0.5,seconds=60, "
                            "or leave the budget out for the default")
        values: dict[str, float] = {}
        for part in re.split(r"[,\s]+", spec.strip()):
            if not part:
                continue
            if "=" not in part:
                raise UserError(
                    f"bad budget part {part!r} in {spec!r}: expected NAME=VALUE with NAME one of "
                    f"{', '.join(DIMENSIONS)} (e.g. tokens=20k,usd=0.5,seconds=60)"
                )
            key, _, raw = part.partition("=")
            key = key.strip().lower().replace("-", "_")
            key = _ALIASES.get(key, key)
            if key not in DIMENSIONS:
                raise UserError(
                    f"unknown budget dimension {key!r} in {spec!r}; known: {', '.join(DIMENSIONS)}"
                )
            if key in values:
                raise UserError(f"budget dimension {key!r} given twice in {spec!r}")
            values[key] = _parse_amount(key, raw.strip(), spec)
        kwargs: dict[str, Any] = {
            k: (int(v) if k in _INT_DIMS else float(v)) for k, v in values.items()
        }
        return cls(**kwargs)

    def limits(self) -> dict[str, float]:
        """The limited dimensions and their limits."""
        return {n: getattr(self, n) for n in DIMENSIONS if getattr(self, n) is not None}

    def is_unlimited(self) -> bool:
        return not self.limits()

    def scaled(self, fraction: float) -> Budget:
        """This budget with every limit multiplied by ``fraction`` (for shares)."""
        kw: dict[str, Any] = {}
        for name, value in self.limits().items():
            v = value * fraction
            kw[name] = int(v) if name in _INT_DIMS else v
        return replace(self, **kw)

    def to_dict(self) -> dict[str, float]:
        return self.limits()

    def __str__(self) -> str:
        if self.is_unlimited():
            return "unlimited"
        return ",".join(f"{k}={_fmt_amount(v)}" for k, v in self.limits().items())


def _parse_amount(key: str, raw: str, spec: str) -> float:
    text = raw.replace("_", "").strip()
    if text.lower().lstrip("+-$") in ("inf", "infinity", "nan"):
        raise UserError(f"budget {key}={raw} in {spec!r} is not a limit: give a finite number, "
                        f"or leave {key} out for no limit on it")
    scale = 1.0
    if key == "seconds":
        # Time units first, so "2min" is two minutes, not two million.
        for unit, factor in _TIME_UNITS:
            if text.lower().endswith(unit) and text[: -len(unit)].strip():
                text, scale = text[: -len(unit)].strip(), factor
                break
    match = _NUMBER.match(text)
    if not match:
        raise UserError(
            f"bad value {raw!r} for budget {key!r} in {spec!r}: expected a number "
            f"with an optional k/M suffix, like 20k or 0.5"
        )
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix.lower()] * scale
    if not value <= 1e18:  # 1e400 reads as inf
        raise UserError(f"budget {key}={raw} in {spec!r} is too large (at most 1e18); "
                        f"leave {key} out for no limit on it")
    if key in _INT_DIMS and not float(value).is_integer():
        # A count cut to a whole number would be a different limit than the one asked for.
        raise UserError(f"budget {key}={raw} in {spec!r} is not a whole number: {key} counts "
                        f"{'requests' if key == 'calls' else 'tokens'}, give e.g. {key}={max(int(value), 1)}")
    return value


def _fmt_amount(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What one or more model calls consumed (or may consume, when reserved).

    ``cached_tokens`` is the part of ``input_tokens`` the backend served from
    its prefix cache, and ``reasoning_tokens`` the part of ``output_tokens``
    spent thinking (billed as output); both are informative, not budget
    dimensions.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0
    usd: float = 0.0
    reasoning_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            calls=self.calls + other.calls,
            usd=self.usd + other.usd,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )

    def times(self, k: int) -> Usage:
        """This usage ``k`` times over (0 for ``k <= 0``); USD summed in order, as ``k`` settles would be."""
        if k <= 0:
            return Usage()
        usd = 0.0
        for _ in range(k):
            usd = usd + self.usd
        return Usage(input_tokens=self.input_tokens * k, output_tokens=self.output_tokens * k,
                     cached_tokens=self.cached_tokens * k, calls=self.calls * k, usd=usd,
                     reasoning_tokens=self.reasoning_tokens * k)

    def amount(self, dimension: str) -> float:
        """The quantity this usage has on a budget dimension (0 for seconds)."""
        if dimension == "seconds":
            return 0.0
        if dimension == "tokens":
            return float(self.tokens)
        return float(getattr(self, dimension))

    def amounts(self) -> tuple[float, ...]:
        """Quantities on every dimension, in :data:`DIMENSIONS` order."""
        return (float(self.input_tokens + self.output_tokens), float(self.input_tokens),
                float(self.output_tokens), float(self.calls), float(self.usd), 0.0)

    def to_dict(self) -> dict[str, float]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "tokens": self.input_tokens + self.output_tokens,  # .tokens, without the property call
            "calls": self.calls,
            "usd": round(self.usd, 10),
            "reasoning_tokens": self.reasoning_tokens,
        }


ZERO = Usage()


@dataclass(slots=True, eq=False)
class Reservation:
    """A worst-case hold on the ledger for one call; settle or release it once."""

    ledger: BudgetLedger
    amount: Usage
    role: str
    id: int
    done: bool = False
    #: ``amount.amounts()``, computed once when reserved (settling needs it again).
    amounts: tuple[float, ...] = ()

    def settle(self, actual: Usage) -> dict[str, float]:
        """Replace the hold by what the call actually used.

        Returns the dimensions on which ``actual`` exceeded the hold (empty
        when it fit). Such a settle is still recorded in full -- the spend
        happened -- and it marks the ledger chain overdrawn.
        """
        return self.ledger._finish(self, actual)

    def release(self) -> None:
        """Drop the hold without charging anything (the call was never billed)."""
        self.ledger._finish(self, None)


_INDEX = {dim: i for i, dim in enumerate(DIMENSIONS)}
_NDIM = len(DIMENSIONS)
_USD = _INDEX["usd"]
_INPUT, _OUTPUT, _CALLS = _INDEX["input_tokens"], _INDEX["output_tokens"], _INDEX["calls"]
#: A ledger's spent slots: the budget dimensions, then cached and reasoning tokens.
_CACHED, _REASONING = _NDIM, _NDIM + 1
_SPENT_SLOTS = _NDIM + 2
_INF = float("inf")
_add = operator.add
_sub = operator.sub
# Dimensions a settle is compared on (seconds is wall time, not a settle).
_SETTLE_DIMS = tuple((i, d) for i, d in enumerate(DIMENSIONS) if d != "seconds")


class BudgetLedger:
    """Enforces a :class:`Budget` across concurrent calls (thread- and task-safe).

    The guarantee: a reservation is admitted only when ``spent + reserved +
    worst case <= limit`` on every limited dimension of this ledger and every
    ancestor. So ``spent <= limit`` holds as long as every settle is at most its
    reservation. A settle above its reservation (a backend that over-reports,
    or a wrong price table) is recorded in full, marks the whole chain
    *overdrawn* (:attr:`overdrawn`), and every later reservation is refused
    with :class:`~testtime.errors.BudgetOverdrawn`.

    Args:
        budget: the limits.
        name: a label used in errors and traces (e.g. a stage name).
        parent: the ledger this one is carved from; reservations propagate up.
        clock: time source (monotonic seconds); injectable for tests.
    """

    def __init__(
        self,
        budget: Budget | None = None,
        *,
        name: str = "run",
        parent: BudgetLedger | None = None,
        clock: Any = time.monotonic,
        start_spent: Usage | None = None,
    ) -> None:
        self.budget = budget or Budget()
        self._limits = tuple((_INDEX[d], d, lim) for d, lim in self.budget.limits().items())
        self.name = name
        self.parent = parent
        self._clock = clock
        self._start = clock()
        self._lock = threading.RLock() if parent is None else parent._lock
        # This ledger and its ancestors, nearest first: fixed at creation (a
        # ledger's parent never changes), so the hot path does not rebuild it.
        self._chain: tuple[BudgetLedger, ...] = (self,) + (parent._chain if parent is not None else ())
        self._root = self._chain[-1]
        # Whether any ledger in the chain limits wall time (remaining("seconds") is asked per call).
        self._timed = any(node.budget.seconds is not None for node in self._chain)
        # Spent per dimension, indexed like DIMENSIONS, then the settled cached and
        # reasoning tokens (_SPENT_SLOTS floats: one add per settle records it all;
        # adding dataclasses on every settle is measurable on the hot path).
        self._spent = [0.0] * _SPENT_SLOTS
        # Reserved per dimension, indexed like DIMENSIONS.
        self._reserved = [0.0] * _NDIM
        # The same spent slots per role.
        self._role_acc: dict[str, list[float]] = {}
        self._open = 0  # reservations opened here and not yet settled or released
        self._next_id = 0
        self._seconds_offset = 0.0
        self._in_flight = 0  # open reservations here and in every descendant
        self._settles = 0  # bumps on every settle/release (for waiters)
        self._waiters: list[tuple[Any, Any]] = []
        self._amounts_memo: tuple[Usage, tuple[float, ...]] | None = None
        self.refusals = 0
        #: Dimension -> total excess of settles over their reservations (empty: never overdrawn).
        self.overdrawn: dict[str, float] = {}
        self.children: list[BudgetLedger] = []
        if start_spent is not None:
            self.restore(start_spent)

    # ------------------------------------------------------------------ views
    @property
    def usage(self) -> Usage:
        """Actual usage settled so far in this ledger (children included)."""
        with self._lock:
            return _usage_of(self._spent)

    def usage_by_role(self) -> dict[str, Usage]:
        with self._lock:
            return {role: _usage_of(acc) for role, acc in self._role_acc.items()}

    def elapsed(self) -> float:
        return self._clock() - self._start + self._seconds_offset

    def spent(self, dimension: str) -> float:
        if dimension == "seconds":
            return self.elapsed()
        return self._spent[_INDEX[dimension]]

    def reserved(self, dimension: str) -> float:
        return self._reserved[_INDEX[dimension]]

    def limit(self, dimension: str) -> float | None:
        """This ledger's own limit on a dimension (None if unlimited); see :meth:`remaining`."""
        return getattr(self.budget, dimension)

    def remaining(self, dimension: str) -> float:
        """Room left on a dimension here and in every ancestor (inf if unlimited)."""
        if dimension == "seconds" and not self._timed:
            return _INF  # asked on every call: no ledger in the chain limits time
        with self._lock:
            room = _INF
            for node in self._chain:
                lim = node.limit(dimension)
                if lim is not None:
                    used = node.spent(dimension) + node.reserved(dimension)
                    room = min(room, lim - used)
            return max(room, 0.0)

    def open_reservations(self) -> int:
        """Reservations opened on this ledger itself and not yet settled or released."""
        with self._lock:
            return self._open

    def in_flight(self) -> int:
        """Open reservations anywhere in the run (the root and all its descendants)."""
        return self._root._in_flight

    def is_overdrawn(self) -> bool:
        """True when this ledger or an ancestor has been overdrawn."""
        node: BudgetLedger | None = self
        while node is not None:
            if node.overdrawn:
                return True
            node = node.parent
        return False

    def over_limit(self) -> dict[str, float]:
        """Dimension -> how far spent is above this ledger's limit (empty when within)."""
        out: dict[str, float] = {}
        for dim, lim in self.budget.limits().items():
            excess = self.spent(dim) - lim
            if excess > (1e-9 if dim == "usd" else 0) and dim != "seconds":
                out[dim] = excess
        return out

    def fraction_used(self) -> float:
        """The largest spent/limit ratio over limited dimensions (0 if unlimited)."""
        worst = 0.0
        for dim, lim in self.budget.limits().items():
            if lim > 0:
                worst = max(worst, self.spent(dim) / lim)
            else:
                worst = 1.0
        return worst

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Limits, spent and reserved per dimension (for traces and live views)."""
        with self._lock:
            return {
                dim: {
                    "limit": getattr(self.budget, dim),
                    "spent": self.spent(dim),
                    "reserved": self.reserved(dim),
                }
                for dim in DIMENSIONS
            }

    # ------------------------------------------------------------- reserving
    def reserve(self, amount: Usage, *, role: str = "solve") -> Reservation:
        """Hold ``amount`` (a worst case) on this ledger and every ancestor.

        Raises:
            BudgetOverdrawn: the ledger chain is overdrawn; nothing is admitted.
            BudgetExhausted: the hold would let some dimension exceed its limit,
                or the time budget is already used up.
        """
        with self._lock:
            chain = self._chain
            for node in chain:
                if node.overdrawn:
                    node.refusals += 1
                    raise BudgetOverdrawn(node.name, node.overdrawn)
            # The samples of one question reserve one (memoised) worst case again and again.
            memo = self._amounts_memo
            if memo is not None and memo[0] is amount:
                amounts = memo[1]
            else:
                amounts = amount.amounts()
                self._amounts_memo = (amount, amounts)
            for node in chain:
                if node._limits:  # an unlimited ledger has nothing to check
                    node._check(amount, amounts=amounts)
            for node in chain:
                reserved = node._reserved
                reserved[:] = map(_add, reserved, amounts)
                node._in_flight += 1
            self._next_id += 1
            res = Reservation(self, amount, role, self._next_id, False, amounts)
            self._open += 1
            return res

    @contextmanager
    def hold(self, amount: Usage, *, role: str = "solve") -> Iterator[Reservation]:
        """Reserve for the duration of a block; released unless settled inside.

        Any exception -- including ``asyncio.CancelledError``, a BaseException --
        releases the reservation before propagating.
        """
        res = self.reserve(amount, role=role)
        try:
            yield res
        except BaseException:
            if not res.done:
                res.release()
            raise
        if not res.done:
            res.release()

    def can_afford(self, amount: Usage) -> bool:
        with self._lock:
            amounts = amount.amounts()
            try:
                for node in self._chain:
                    if node.overdrawn:
                        return False
                    node._check(amount, count=False, amounts=amounts)
            except BudgetExhausted:
                return False
            return True

    def largest_fit(self, cost: Callable[[int], Usage], upper: int) -> int:
        """The largest ``k`` in ``[0, upper]`` whose ``cost(k)`` fits now (costs grow with ``k``).

        A bisection over :meth:`can_afford`; 0 also when not even ``cost(0)``
        fits (callers compare the result with their own minimum). Admits nothing.
        """
        upper = max(int(upper), 0)
        if self.can_afford(cost(upper)):
            return upper
        lo, hi = 0, upper - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.can_afford(cost(mid)):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def affordable_repeats(self, amount: Usage, most: int, *, plus: Usage | None = None) -> int:
        """The largest ``k <= most`` such that ``plus`` and ``k`` copies of ``amount``
        fit together: what ``k`` rounds of ``can_afford(plus + amount + ... + amount)``
        (summed in that order, as reservations would be) admit, in one pass
        instead of ``k`` checks. Admits nothing itself."""
        k = max(int(most), 0)
        if k == 0:
            return 0
        a = amount.amounts()
        base = plus.amounts() if plus is not None else (0.0,) * _NDIM
        with self._lock:
            for node in self._chain:
                if node.overdrawn:
                    return 0
                for i, dim, lim in node._limits:
                    if dim == "seconds":
                        if node.elapsed() >= lim:
                            return 0
                        continue
                    used = node._spent[i] + node._reserved[i]
                    room = lim + 1e-12  # the epsilon _check allows
                    step = a[i]
                    if step <= 0:  # every round needs the same: fits all or none
                        if used + (base[i] + step) > room:
                            return 0
                        continue
                    # Sum in order (not k * step) so USD floats round as the checks would.
                    s, j = base[i], 0
                    while j < k:
                        s = s + step
                        if used + s > room:
                            break
                        j += 1
                    k = j
                    if k == 0:
                        return 0
        return k

    def charge(self, actual: Usage, *, role: str = "solve") -> None:
        """Record spend that already happened (restored state, a replayed call).

        Never raises and never checks limits: the spend is a fact, and losing
        it would understate what was paid. It reaches every ancestor.
        """
        with self._lock:
            used = _spent_vector(actual)
            for node in self._chain:
                node._record(used, role)

    def restore(self, spent: Usage, seconds: float = 0.0) -> None:
        """Load spend from a checkpoint so a resumed run keeps the same total.

        Like :meth:`charge` it never raises and reaches every ancestor; the
        ``seconds`` offset applies to this ledger's own clock.
        """
        with self._lock:
            used = _spent_vector(spent)
            for node in self._chain:
                node._spent[:] = map(_add, node._spent, used)
            self._seconds_offset += seconds

    def child(self, budget: Budget | None = None, *, name: str = "child") -> BudgetLedger:
        """A ledger whose reservations also count here; its own limits apply too."""
        with self._lock:
            kid = BudgetLedger(budget, name=name, parent=self, clock=self._clock)
            self.children.append(kid)
            return kid

    def share(self, fraction: float, *, name: str = "child") -> BudgetLedger:
        """A child limited to ``fraction`` of what remains here on every dimension."""
        if not 0 < fraction <= 1:
            raise UserError(f"budget share must be in (0, 1], got {fraction}")
        kw: dict[str, Any] = {}
        for dim in DIMENSIONS:
            room = self.remaining(dim)
            if room != float("inf"):
                v = room * fraction
                kw[dim] = int(v) if dim in _INT_DIMS else v
        return self.child(Budget(**kw), name=name)

    # --------------------------------------------------------------- waiting
    def settle_count(self) -> int:
        """A counter that moves on every settle or release anywhere in the run."""
        return self._root._settles

    async def wait_for_settle(self, since: int) -> None:
        """Wait until some reservation in the run settles after :meth:`settle_count` was ``since``.

        Returns at once when one already has, or when nothing is in flight.
        """
        import asyncio

        root = self._root
        loop = asyncio.get_running_loop()
        with self._lock:
            if root._settles != since or root._in_flight == 0:
                return
            fut = loop.create_future()
            root._waiters.append((loop, fut))
        await fut

    # ------------------------------------------------------------- internals
    def root(self) -> BudgetLedger:
        """The run's top ledger (this one when it has no parent)."""
        return self._root

    def _check(self, amount: Usage, *, count: bool = True, amounts: tuple[float, ...] | None = None) -> None:
        if amounts is None:
            amounts = amount.amounts()
        for i, dim, lim in self._limits:
            if dim == "seconds":
                if self.elapsed() >= lim:
                    self.refusals += count
                    raise BudgetExhausted(dim, 0.0, 0.0, self.name)
                continue
            need = amounts[i]
            used = self._spent[i] + self._reserved[i]
            # A small epsilon keeps float sums of USD prices from refusing an
            # exact fit.
            if used + need > lim + 1e-12:
                self.refusals += count
                raise BudgetExhausted(dim, need, max(lim - used, 0.0), self.name)

    def _record(self, used: tuple[float, ...], role: str) -> None:
        """Add a settled :func:`_spent_vector` to this ledger's spend and its role's."""
        spent = self._spent
        spent[:] = map(_add, spent, used)
        role_acc = self._role_acc.get(role)
        if role_acc is None:
            role_acc = self._role_acc[role] = [0.0] * _SPENT_SLOTS
        role_acc[:] = map(_add, role_acc, used)

    def _finish(self, res: Reservation, actual: Usage | None) -> dict[str, float]:
        over: dict[str, float] = {}
        with self._lock:
            if res.done:
                return over
            res.done = True
            self._open -= 1
            held = res.amounts or res.amount.amounts()
            used = None
            if actual is not None:
                used = _spent_vector(actual)
                # The usual settle fits on every dimension: one C-level pass says so
                # (map stops at the end of `held`, the budget dimensions).
                if not all(map(operator.le, used, held)):
                    for i, dim in _SETTLE_DIMS:
                        excess = used[i] - held[i]
                        if excess > (1e-12 if dim == "usd" else 0):
                            over[dim] = excess
            for node in self._chain:
                reserved = node._reserved
                reserved[:] = map(_sub, reserved, held)
                # Float USD sums drift by ~1e-18; snap them back to zero. The
                # token and call counts are whole numbers (exact in a float)
                # and seconds are never reserved, so only USD can drift.
                left = reserved[_USD]
                if left and -1e-9 < left < 1e-9:
                    reserved[_USD] = 0.0
                node._in_flight -= 1
                if used is not None:
                    node._record(used, res.role)
                if over:
                    for dim, excess in over.items():
                        node.overdrawn[dim] = node.overdrawn.get(dim, 0.0) + excess
            root = self._root
            root._settles += 1
            waiters: list[tuple[Any, Any]] | tuple[()] = ()
            if root._waiters:
                waiters, root._waiters = root._waiters, []
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed; nobody waits there any more
                pass
        return over


def _wake(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


def _spent_vector(u: Usage) -> tuple[float, ...]:
    """What settling ``u`` adds to a ledger's spent slots: :meth:`Usage.amounts`
    (the budget dimensions), then cached and reasoning tokens."""
    return u.amounts() + (float(u.cached_tokens), float(u.reasoning_tokens))


def _usage_of(spent: list[float]) -> Usage:
    return Usage(input_tokens=int(spent[_INPUT]), output_tokens=int(spent[_OUTPUT]),
                 cached_tokens=int(spent[_CACHED]), calls=int(spent[_CALLS]), usd=spent[_USD],
                 reasoning_tokens=int(spent[_REASONING]))
