"""``/metrics`` for the whole gateway when its workers share a store (SQLite or Redis).

Each worker process counts its own requests (:class:`~testtime.serve.metrics.Metrics`).
With a shared ledger store, a :class:`MetricsPublisher` in every worker writes
that worker's whole :meth:`~testtime.serve.metrics.Metrics.snapshot` -- cumulative
counts, so a write replaces the worker's previous one and nothing is counted
twice -- to one row of the same store every second and when the worker stops.
A scrape answered by any worker sums the other workers' rows into its own live
counts: counters and histograms (bucket by bucket) of every worker that ever
wrote, the in-flight gauge only of workers heard from in the last
:data:`STALE_S` seconds (a worker that died mid-request did not leave those
requests in flight).

The rows stay in the store, so the counters keep counting across restarts, as
the spend in the same store does. With ``memory://`` there is nothing to share
and ``/metrics`` is the process's own.

The SQLite file and the Redis database are the ledger store's (``--store``);
this module opens them itself (its own table ``metrics_workers``, its own hash
``<prefix>metrics``) and never touches the ledgers' rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from typing import Any, Protocol

from testtime.serve.metrics import Metrics

log = logging.getLogger("testtime.serve")

#: Seconds between a worker's writes of its counts.
FLUSH_S = 1.0
#: A worker not heard from for this long has its in-flight requests left out.
STALE_S = 15.0
#: An unchanged snapshot is still rewritten this often, so the worker reads as live.
HEARTBEAT_S = 5.0


class MetricsShare(Protocol):
    """Where workers' snapshots meet: one row per worker."""

    def write(self, worker: str, updated: float, snapshot: dict[str, Any]) -> None: ...

    def read(self) -> list[tuple[str, float, dict[str, Any]]]: ...

    def close(self) -> None: ...


class SqliteMetricsShare:
    """Snapshots in table ``metrics_workers`` of the ledger store's SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.execute("CREATE TABLE IF NOT EXISTS metrics_workers (worker TEXT PRIMARY KEY, "
                           "updated REAL NOT NULL, body TEXT NOT NULL)")

    def write(self, worker: str, updated: float, snapshot: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute("INSERT INTO metrics_workers (worker, updated, body) VALUES (?, ?, ?) "
                               "ON CONFLICT (worker) DO UPDATE SET updated=excluded.updated, body=excluded.body",
                               (worker, updated, json.dumps(snapshot, separators=(",", ":"))))

    def read(self) -> list[tuple[str, float, dict[str, Any]]]:
        with self._lock:
            rows = self._conn.execute("SELECT worker, updated, body FROM metrics_workers").fetchall()
        return [(w, float(u), json.loads(b)) for w, u, b in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class RedisMetricsShare:
    """Snapshots in the hash ``<prefix>metrics`` of the ledger store's Redis database."""

    def __init__(self, url: str) -> None:
        import redis

        from testtime.serve.ledgers.redis import DEFAULT_PREFIX, split_redis_url

        # The same prefix as the ledger store (``?prefix=NAME``, default ``testtime:``).
        bare, prefix = split_redis_url(url)
        self.key = f"{prefix if prefix is not None else DEFAULT_PREFIX}metrics"
        self._r = redis.Redis.from_url(bare, decode_responses=True,
                                       socket_timeout=10, socket_connect_timeout=10)

    def write(self, worker: str, updated: float, snapshot: dict[str, Any]) -> None:
        self._r.hset(self.key, worker, json.dumps({"updated": updated, "snapshot": snapshot},
                                                  separators=(",", ":")))

    def read(self) -> list[tuple[str, float, dict[str, Any]]]:
        out = []
        for worker, raw in self._r.hgetall(self.key).items():
            row = json.loads(raw)
            out.append((worker, float(row["updated"]), row["snapshot"]))
        return out

    def close(self) -> None:
        self._r.close()


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///rel.db`` / ``sqlite:////abs.db`` URL (as the ledger store reads it)."""
    path = url.partition("://")[2].split("?", 1)[0]
    return path[1:] if path.startswith("/") else path


def open_share(store_url: str) -> MetricsShare | None:
    """The share of a ledger store URL; None for ``memory://`` (one process, nothing to share)."""
    scheme = store_url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SqliteMetricsShare(sqlite_path(store_url))
    if scheme in ("redis", "rediss", "unix"):
        return RedisMetricsShare(store_url)
    return None


class MetricsPublisher:
    """One worker's side: publish its counts every :data:`FLUSH_S`, and read everyone's for a scrape."""

    def __init__(self, metrics: Metrics, share: MetricsShare, *, flush_s: float = FLUSH_S,
                 clock: Any = time.time) -> None:
        self.metrics = metrics
        self.share = share
        self.flush_s = flush_s
        self.clock = clock
        #: This process's row: host and pid for a human reading the table, a random part
        #: so a restarted worker that gets the same pid does not overwrite its predecessor's counts.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self._written = (-1, 0.0)  # (metrics.changes, when) of the last write

    def flush(self, *, force: bool = False) -> None:
        """Write this worker's snapshot (blocking; skipped when unchanged and recently written)."""
        changes, now = self.metrics.changes, self.clock()
        if not force and changes == self._written[0] and now - self._written[1] < HEARTBEAT_S:
            return
        self.share.write(self.worker, now, self.metrics.snapshot())
        self._written = (changes, now)

    def others(self) -> tuple[list[dict[str, Any]], int]:
        """The other workers' snapshots (stale ones with no requests in flight) and how many are live."""
        now = self.clock()
        out, live = [], 1
        for worker, updated, snap in self.share.read():
            if worker == self.worker:
                continue  # this worker's live counts are fresher than its row
            if now - updated > STALE_S:
                snap = {**snap, "in_flight": 0}
            else:
                live += 1
            out.append(snap)
        return out, live

    async def render(self) -> str:
        """``/metrics``: this worker's counts plus every other worker's (its own alone if the store fails)."""
        try:
            others, live = await asyncio.to_thread(self.others)
        except Exception:
            log.warning("reading the other workers' metrics failed; /metrics shows this worker's only",
                        exc_info=True)
            return self.metrics.render()
        return self.metrics.render(others, workers=live)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:  # a store outage must not stop the worker; the next tick retries
                log.warning("publishing metrics to the shared store failed", exc_info=True)

    async def start(self) -> None:
        """Publish now and then every :attr:`flush_s` seconds."""
        try:
            await asyncio.to_thread(self.flush, force=True)
        except Exception:
            log.warning("publishing metrics to the shared store failed", exc_info=True)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop publishing, write the last counts, close the share."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        try:
            await asyncio.to_thread(self.flush, force=True)
        except Exception:
            log.warning("the last metrics flush failed", exc_info=True)
        finally:
            self.share.close()
