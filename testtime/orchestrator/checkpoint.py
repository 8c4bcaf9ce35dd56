"""Checkpoints and the spend journal that make ``--resume`` budget-safe.

LangGraph's SQLite checkpointer saves the workflow state after every node (a
strategy run, a verification, a refinement), keyed by ``thread_id = run_id``.
That alone would lose the spend of a node that was running when the process
died: its calls were paid for but the node never checkpointed. So every
settled model call is also appended to a small journal table in the same
database (``testtime_spend``), synchronously, as it completes. On resume the
ledger is restored from the journal, so the total across the crash -- paid
calls of the lost node included -- stays within the budget.

The database lives at ``$TESTTIME_HOME/checkpoints.sqlite``; ``TESTTIME_HOME``
defaults to ``./.testtime``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from testtime.budget import Usage
from testtime.errors import UserError
from testtime.trace.events import TraceEvent


def default_checkpoint_path() -> Path:
    """``$TESTTIME_HOME/checkpoints.sqlite`` (``./.testtime`` when unset)."""
    home = os.environ.get("TESTTIME_HOME") or ".testtime"
    return Path(home) / "checkpoints.sqlite"


class SpendJournal:
    """Append-only record of settled model calls per run, stage and role.

    It is a trace sink: it reads ``model_call`` events (which carry the
    settled usage) and ignores the rest.
    """

    def __init__(self, path: str | Path, run_id: str, *, clock: Any = None) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open checkpoint database {self.path}: {exc}") from exc
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS testtime_spend (run_id TEXT, stage TEXT, role TEXT, "
            "input_tokens INTEGER, output_tokens INTEGER, cached_tokens INTEGER, calls INTEGER, "
            "usd REAL, elapsed REAL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS testtime_spend_run ON testtime_spend(run_id)")

    def __call__(self, event: TraceEvent) -> None:
        if event.kind != "model_call":
            return
        u = event.data.get("usage") or {}
        elapsed = self._clock() if self._clock is not None else event.t
        with self._lock:
            if self._db is None:
                return
            self._db.execute(
                "INSERT INTO testtime_spend VALUES (?,?,?,?,?,?,?,?,?)",
                (self.run_id, event.stage or "", event.data.get("role", "solve"),
                 int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0)),
                 int(u.get("cached_tokens", 0)), int(u.get("calls", 1)), float(u.get("usd", 0.0)),
                 float(elapsed)))

    def totals(self) -> dict[str, dict[str, Usage]]:
        """Spend so far: stage -> role -> Usage."""
        out: dict[str, dict[str, Usage]] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT stage, role, SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), "
                "SUM(calls), SUM(usd) FROM testtime_spend WHERE run_id=? GROUP BY stage, role",
                (self.run_id,)).fetchall()
        for stage, role, inp, outp, cached, calls, usd in rows:
            out.setdefault(stage, {})[role] = Usage(input_tokens=inp or 0, output_tokens=outp or 0,
                                                    cached_tokens=cached or 0, calls=calls or 0,
                                                    usd=usd or 0.0)
        return out

    def elapsed(self) -> float:
        """Wall seconds the run had used at its last settled call."""
        with self._lock:
            row = self._db.execute("SELECT MAX(elapsed) FROM testtime_spend WHERE run_id=?",
                                   (self.run_id,)).fetchone()
        return float(row[0] or 0.0)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]


@asynccontextmanager
async def open_checkpointer(path: str | Path) -> AsyncIterator[Any]:
    """An ``AsyncSqliteSaver`` on ``path`` (parent folders are created)."""
    try:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    except ImportError as exc:  # pragma: no cover - a core dependency
        from testtime.errors import MissingDependency

        raise MissingDependency("langgraph-checkpoint-sqlite", "all", "checkpoints") from exc
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the checkpoint folder {p.parent}: {exc.strerror}") from exc
    async with AsyncSqliteSaver.from_conn_string(str(p)) as saver:
        yield saver
