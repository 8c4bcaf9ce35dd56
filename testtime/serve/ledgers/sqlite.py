"""The SQLite ledger store: worker processes on one machine share one file."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from testtime.errors import UserError
from testtime.serve.ledgers.base import COLUMNS, SNAP, Clock, Hold, LedgerUnavailable, RowState, RowStore

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    scope TEXT NOT NULL, period TEXT NOT NULL, dim TEXT NOT NULL,
    spent REAL NOT NULL DEFAULT 0, held REAL NOT NULL DEFAULT 0, over REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, period, dim)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, expires REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS holds_due ON holds (state, expires);
"""


def _column(column: str) -> str:
    if column not in COLUMNS:  # column names cannot be bound parameters
        raise ValueError(column)
    return column


class _SqliteState:
    """Rows and holds in the two tables, inside the store's open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    def used(self, scope: str, pkey: str) -> dict[str, float]:
        rows = self.c.execute("SELECT dim, spent + held FROM ledger WHERE scope=? AND period=?",
                              (scope, pkey)).fetchall()
        return {d: v for d, v in rows}

    def over(self, scope: str, pkey: str) -> dict[str, float]:
        rows = self.c.execute("SELECT dim, over FROM ledger WHERE scope=? AND period=? AND over != 0",
                              (scope, pkey)).fetchall()
        return {d: v for d, v in rows}

    def read(self, scope: str, pkey: str, column: str) -> dict[str, float]:
        rows = self.c.execute(f"SELECT dim, {_column(column)} FROM ledger WHERE scope=? AND period=?",
                              (scope, pkey)).fetchall()
        return {d: v for d, v in rows}

    def add(self, scope: str, pkey: str, column: str, deltas: dict[str, float]) -> None:
        column = _column(column)
        self.c.executemany(
            f"INSERT INTO ledger (scope, period, dim, {column}) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (scope, period, dim) DO UPDATE SET {column} = "
            f"CASE WHEN abs({column} + excluded.{column}) < {SNAP} THEN 0 "
            f"ELSE {column} + excluded.{column} END",
            [(scope, pkey, d, v) for d, v in deltas.items()])

    def clear_over(self, scope: str, pkey: str) -> None:
        self.c.execute("UPDATE ledger SET over = 0 WHERE scope=? AND period=?", (scope, pkey))

    def put_hold(self, hold: Hold) -> None:
        self.c.execute("INSERT INTO holds (id, state, expires, body) VALUES (?, ?, ?, ?)",
                       (hold.id, hold.state, hold.expires, hold.to_json()))

    def get_hold(self, gid: str) -> Hold | None:
        row = self.c.execute("SELECT state, expires, body FROM holds WHERE id=?", (gid,)).fetchone()
        return None if row is None else Hold.from_json(gid, row[1], row[0], row[2])

    def drop_hold(self, gid: str) -> None:
        self.c.execute("DELETE FROM holds WHERE id=?", (gid,))

    def mark_expired(self, gid: str) -> None:
        self.c.execute("UPDATE holds SET state='expired' WHERE id=?", (gid,))

    def due_holds(self, now: float) -> list[Hold]:
        rows = self.c.execute("SELECT id, state, expires, body FROM holds "
                              "WHERE state='held' AND expires <= ?", (now,)).fetchall()
        return [Hold.from_json(g, e, st, b) for g, st, e, b in rows]

    def prune(self, before: float) -> None:
        self.c.execute("DELETE FROM holds WHERE state='expired' AND expires < ?", (before,))


class SqliteStore(RowStore):
    """Shared ledgers in one SQLite file: worker processes on one machine share them.

    Every grant and settle is one ``BEGIN IMMEDIATE`` transaction (the
    database write lock is taken before anything is read), so check-and-hold
    is atomic across processes; the file is in WAL mode and a busy connection
    waits up to ``busy_timeout_s`` for the lock. Use a local disk: SQLite
    locking over network filesystems is not reliable (use Redis there).

    Args:
        path: the database file (created with its tables when missing).
        clock: wall-clock source in epoch seconds; injectable for tests.
        busy_timeout_s: how long a write waits for another process's transaction.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = time.time,
                 busy_timeout_s: float = 30.0) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._busy_ms = int(busy_timeout_s * 1000)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._closed = False
        with self._lock:
            self._connect()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross a fork: a worker forked after the store
        # was opened gets its own.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._closed:
            raise UserError(f"ledger store {self.path!r} is closed")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise UserError(f"cannot open ledger store {self.path!r}: folder {parent!r} does not exist")
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise UserError(f"cannot open ledger store {self.path!r}: {e}") from e
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _atomic(self, fn: Callable[[RowState, float], T]) -> T:
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:  # locked past busy_timeout, disk full, ...
                raise LedgerUnavailable(f"SQLite ledger store {self.path!r} is unavailable: {e}") from e
            try:
                out = fn(_SqliteState(conn), self._clock())
                conn.execute("COMMIT")
            except BaseException as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError):
                    raise LedgerUnavailable(f"SQLite ledger store {self.path!r} is unavailable: {e}") from e
                raise
            return out

    def close(self) -> None:
        """Close this process's connection; the store is unusable afterwards."""
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
