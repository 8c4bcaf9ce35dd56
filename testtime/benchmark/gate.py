"""The sweep budget: one :class:`~testtime.budget.BudgetLedger` over a whole sweep.

Every cell holds its worst case on the sweep ledger before it starts (the
cell's own budget, priced when the sweep limits USD), runs on its own ledger
limited to that budget, and settles to what it actually spent. So a cell
either runs in full within its own budget or does not start, and the sweep's
``spent <= limit`` holds under any concurrency -- the same reserve/settle
discipline as one run's calls, one level up (and the gateway's per-key
grants). A cell whose backend bills more than its ledger allowed is settled
in full and marks the sweep overdrawn: nothing starts after it.

The first refusal closes the gate: no cell starts after it anywhere (local
tasks or Ray workers), so the sweep stops cleanly and says what is done.
:class:`SweepGate` is the local form; :mod:`testtime.benchmark.ray_exec`
holds one in a Ray actor so workers on many machines share it.
"""

from __future__ import annotations

import threading
from typing import Any

from testtime.budget import Budget, BudgetLedger, Usage
from testtime.errors import BudgetExhausted, BudgetOverdrawn, UserError

#: Sweep-budget dimensions a cell's worst case can be derived for.
SWEEP_DIMENSIONS = ("tokens", "usd", "calls", "seconds")


def cell_worst_case(cell: Budget, sweep: Budget, usd_per_token: float) -> dict[str, float]:
    """What one cell may spend, on the dimensions the sweep limits.

    ``usd_per_token`` is the highest per-token rate among the cell's models
    (used when the sweep limits USD and the cell only tokens).

    Raises:
        UserError: the sweep limits a dimension the cell budget does not bound.
    """
    out: dict[str, float] = {"input_tokens": 0, "calls": 0, "usd": 0.0}
    for dim in sweep.limits():
        if dim not in SWEEP_DIMENSIONS:
            raise UserError(f"--sweep-budget cannot limit {dim}; use {', '.join(SWEEP_DIMENSIONS)}")
        if dim == "seconds":
            continue  # wall time: the gate refuses new cells once it is up
        if dim == "tokens":
            if cell.tokens is None:
                raise UserError(f"--sweep-budget limits tokens but the cell budget {cell} does not; "
                                "give --budgets tokens=...")
            out["input_tokens"] = cell.tokens
        elif dim == "calls":
            if cell.calls is None:
                raise UserError(f"--sweep-budget limits calls but the cell budget {cell} does not")
            out["calls"] = cell.calls
        elif dim == "usd":
            if cell.usd is not None:
                out["usd"] = cell.usd
            elif cell.tokens is not None:
                out["usd"] = cell.tokens * usd_per_token
            else:
                raise UserError(f"--sweep-budget limits usd but the cell budget {cell} bounds neither usd "
                                "nor tokens")
    return out


def usage_of(d: dict[str, Any]) -> Usage:
    """A :class:`Usage` from a usage dict (a results-store row's ``usage``)."""
    return Usage(input_tokens=int(d.get("input_tokens", 0)), output_tokens=int(d.get("output_tokens", 0)),
                 cached_tokens=int(d.get("cached_tokens", 0)), calls=int(d.get("calls", 0)),
                 usd=float(d.get("usd", 0.0)))


class SweepGate:
    """Reserve/settle per cell against one sweep ledger (thread-safe; picklable state only).

    The budget caps what this invocation spends: cells finished by an earlier
    run of the same sweep are skipped and cost nothing now.

    Args:
        budget: the sweep budget (``None``: unlimited, only counts spend).
    """

    def __init__(self, budget: Budget | str | None = None) -> None:
        self.budget = budget if isinstance(budget, Budget) else Budget.parse(budget) if budget else Budget()
        self.ledger = BudgetLedger(self.budget, name="sweep")
        self._holds: dict[int, Any] = {}
        self._next = 0
        self._lock = threading.Lock()
        self.closed: str | None = None

    def reserve(self, worst: dict[str, float]) -> int | None:
        """Hold a cell's worst case; its id, or None when the sweep budget refuses (then closed)."""
        with self._lock:
            if self.closed is not None:
                return None
            try:
                res = self.ledger.reserve(usage_of(worst), role="cell")
            except (BudgetExhausted, BudgetOverdrawn) as exc:
                self.closed = str(exc)
                return None
            self._next += 1
            self._holds[self._next] = res
            return self._next

    def settle(self, hold: int, actual: dict[str, Any] | None) -> None:
        """Replace a hold by what the cell spent (None: release it, the cell did not run)."""
        with self._lock:
            res = self._holds.pop(hold, None)
            if res is None:
                return
            if actual is None:
                res.release()
                return
            used = usage_of(actual)
            # Settle (which marks the sweep overdrawn on any excess) only when the
            # cell passed its worst case on a dimension the sweep limits; the
            # other dimensions were never reserved, so record them as a charge.
            over = any(used.amount(d) > res.amount.amount(d) + (1e-12 if d == "usd" else 0)
                       for d in self.budget.limits() if d != "seconds")
            if over:
                res.settle(used)
            else:
                res.release()
                self.ledger.charge(used, role="cell")

    def snapshot(self) -> dict[str, Any]:
        """Spent and limits of the sweep, and why it closed (None: open)."""
        u = self.ledger.usage
        return {"spent": {"tokens": u.tokens, "usd": u.usd, "calls": u.calls,
                          "seconds": round(self.ledger.elapsed(), 3)},
                "limits": self.budget.limits(), "closed": self.closed,
                "overdrawn": dict(self.ledger.overdrawn)}
