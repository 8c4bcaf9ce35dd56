"""The in-process ledger store: one worker, lost at exit."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from testtime.serve.ledgers.base import SNAP, TOMBSTONE_S, Clock, Hold, RowState, RowStore

T = TypeVar("T")


class _MemoryState:
    """Rows and holds in dicts; every call happens under the store's lock."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
        self.holds: dict[str, Hold] = {}
        self.expiry: list[tuple[float, str]] = []

    def _row(self, scope: str, pkey: str) -> dict[str, dict[str, float]]:
        row = self.rows.get((scope, pkey))
        if row is None:
            row = self.rows[(scope, pkey)] = {"spent": {}, "held": {}, "over": {}}
        return row

    def used(self, scope: str, pkey: str) -> dict[str, float]:
        row = self.rows.get((scope, pkey))
        if row is None:
            return {}
        s, h = row["spent"], row["held"]
        return {d: s.get(d, 0.0) + h.get(d, 0.0) for d in set(s) | set(h)}

    def over(self, scope: str, pkey: str) -> dict[str, float]:
        return self.read(scope, pkey, "over")

    def read(self, scope: str, pkey: str, column: str) -> dict[str, float]:
        row = self.rows.get((scope, pkey))
        return dict(row[column]) if row else {}

    def add(self, scope: str, pkey: str, column: str, deltas: dict[str, float]) -> None:
        col = self._row(scope, pkey)[column]
        for d, v in deltas.items():
            x = col.get(d, 0.0) + v
            col[d] = 0.0 if -SNAP < x < SNAP else x

    def clear_over(self, scope: str, pkey: str) -> None:
        row = self.rows.get((scope, pkey))
        if row:
            row["over"].clear()

    def put_hold(self, hold: Hold) -> None:
        self.holds[hold.id] = hold
        heapq.heappush(self.expiry, (hold.expires, hold.id))

    def get_hold(self, gid: str) -> Hold | None:
        return self.holds.get(gid)

    def drop_hold(self, gid: str) -> None:
        self.holds.pop(gid, None)

    def mark_expired(self, gid: str) -> None:
        self.holds[gid].state = "expired"

    def due_holds(self, now: float) -> list[Hold]:
        out: list[Hold] = []
        seen: set[str] = set()
        while self.expiry and self.expiry[0][0] <= now:
            _due, gid = heapq.heappop(self.expiry)
            hold = self.holds.get(gid)
            if hold is None or gid in seen:
                continue
            if hold.state == "held":
                out.append(hold)
                seen.add(gid)
                # Its tombstone is dropped when this second entry comes due.
                heapq.heappush(self.expiry, (hold.expires + TOMBSTONE_S, gid))
            else:
                del self.holds[gid]
        return out

    def prune(self, before: float) -> None:
        pass  # due_holds drops tombstones as their second heap entry comes due


class MemoryStore(RowStore):
    """Shared ledgers in this process's memory (one worker; lost at exit).

    Args:
        clock: wall-clock source in epoch seconds (day keys and ttls); injectable for tests.
    """

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _MemoryState()

    def __repr__(self) -> str:
        return "MemoryStore()"

    def _atomic(self, fn: Callable[[RowState, float], T]) -> T:
        with self._lock:
            return fn(self._state, self._clock())

    def close(self) -> None:
        """Nothing to release."""
