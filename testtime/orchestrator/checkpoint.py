"""Checkpoints and the call journal that make ``--resume`` budget-safe and per call.

LangGraph's SQLite checkpointer saves the workflow state after every node (a
strategy run, a verification, a refinement), keyed by ``thread_id = run_id``.
That alone would lose the calls of a node that was running when the process
died: they were paid for but the node never checkpointed. So every model
call of a checkpointed run is also journaled in the same database (table
``testtime_calls``), synchronously, by :class:`CallJournal`:

* ``begin`` writes the reservation (the call's worst case) *before* the
  request is sent: an entry that is still ``pending`` when a resumed run
  opens the journal was in flight when the process died. It may have been
  billed, so the resumed run charges its worst case (and marks it
  ``abandoned``, emitting ``abandoned_calls``);
* ``complete`` records what the call returned and cost (``done``);
* ``abort`` records a failed attempt and what was charged for it
  (``aborted``; usage NULL when the reservation was released).

On resume, the interrupted node runs again and each call it makes is looked
up by its key (``stage/node/round | request hash | occurrence``): a call
journaled ``done`` by an earlier process is *replayed* -- its generations
come back from the journal, its usage (plus that of its failed attempts) is
charged to the ledger at that moment, and nothing is sent -- so the node sees
the same budget at every decision as in the uninterrupted run and, seeded,
gives the same answer. The rest of the journaled spend is charged too, once
per process: finished stages' up front; the calls of a stage's nodes that
were checkpointed before the crash (they do not run again) when the stage's
first node runs again; what no replay accounted for (calls the re-run did
not make again, failed calls, abandoned calls) when the stage ends, or at
the end of the run for stages that never ran again. A stage that had started
keeps the budget it was carved then, and its elapsed seconds (recorded with
every entry) are restored into its ledger, so a ``seconds`` limit does not
restart.

Writes commit one statement at a time in WAL mode with ``synchronous=NORMAL``:
a commit is in the operating system's hands before ``begin`` returns, which
survives the process being killed (SIGKILL); an OS crash or power loss may
lose the last entries. Set ``TESTTIME_JOURNAL_SYNC=full`` to fsync every
entry as well (about 0.2 ms more per write).

The database lives at ``$TESTTIME_HOME/checkpoints.sqlite``; ``TESTTIME_HOME``
defaults to ``./.testtime``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.budget import Usage
from testtime.context import ReplayedCall
from testtime.errors import UserError
from testtime.models.base import Generation, TokenLogprob

#: Entry statuses in ``testtime_calls``.
PENDING, DONE, ABORTED, ABANDONED = "pending", "done", "aborted", "abandoned"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS testtime_calls (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "run_id TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL, role TEXT, stage TEXT, "
    "worst TEXT, usage TEXT, generations TEXT, t REAL, run_t REAL, epoch INTEGER, wall REAL)",
    "CREATE INDEX IF NOT EXISTS testtime_calls_run ON testtime_calls(run_id, status)",
    # The budget each stage was carved when it started (the carve is in the
    # graph state only once the stage's first node ends).
    "CREATE TABLE IF NOT EXISTS testtime_stage_limits (run_id TEXT NOT NULL, stage TEXT NOT NULL, "
    "limits TEXT NOT NULL, epoch INTEGER, PRIMARY KEY (run_id, stage))",
    # One row per process that opened the run's journal (its epoch).
    "CREATE TABLE IF NOT EXISTS testtime_epochs (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, wall REAL, "
    "PRIMARY KEY (run_id, epoch))",
)


def default_checkpoint_path() -> Path:
    """``$TESTTIME_HOME/checkpoints.sqlite`` (``./.testtime`` when unset)."""
    home = os.environ.get("TESTTIME_HOME") or ".testtime"
    return Path(home) / "checkpoints.sqlite"


# ----------------------------------------------------------- serialisation
def usage_to_json(u: Usage) -> str:
    return json.dumps([u.input_tokens, u.output_tokens, u.cached_tokens, u.calls, u.usd,
                       u.reasoning_tokens])


def usage_from_json(text: str | None) -> Usage | None:
    if text is None:
        return None
    v = json.loads(text)
    return Usage(input_tokens=int(v[0]), output_tokens=int(v[1]), cached_tokens=int(v[2]),
                 calls=int(v[3]), usd=float(v[4]), reasoning_tokens=int(v[5]) if len(v) > 5 else 0)


def generations_to_json(gens: Iterable[Generation]) -> str:
    """Everything a replay needs from each generation (``raw`` is dropped)."""
    out = []
    for g in gens:
        lp = None if g.logprobs is None else [[t.token, t.logprob, [list(x) for x in t.top]]
                                               for t in g.logprobs]
        out.append({"text": g.text, "finish_reason": g.finish_reason, "logprobs": lp,
                    "usage": json.loads(usage_to_json(g.usage)), "model": g.model,
                    "thinking": g.thinking})
    return json.dumps(out, ensure_ascii=False)


def generations_from_json(text: str) -> list[Generation]:
    out = []
    for d in json.loads(text):
        lp = d.get("logprobs")
        logprobs = None if lp is None else tuple(
            TokenLogprob(tok, float(value), tuple((str(a), float(b)) for a, b in top))
            for tok, value, top in lp)
        out.append(Generation(text=d["text"], finish_reason=d.get("finish_reason", "stop"), logprobs=logprobs,
                              usage=usage_from_json(json.dumps(d.get("usage") or [0, 0, 0, 0, 0.0])) or Usage(),
                              model=d.get("model", ""), thinking=d.get("thinking", "")))
    return out


@dataclass(slots=True)
class _Entry:
    """One journal row written by an earlier process of the run."""

    id: int
    key: str
    status: str
    role: str
    stage: str
    worst: Usage | None
    usage: Usage | None
    generations: str | None
    t: float
    run_t: float

    def paid(self) -> Usage | None:
        """What this entry is charged at: its usage, or its worst case when abandoned."""
        return charged_at(self.status, self.worst, self.usage)


def charged_at(status: str, worst: Usage | None, usage: Usage | None) -> Usage | None:
    """What a journal entry is charged at: pending or abandoned calls (in flight at a
    crash) at their worst case, the others at what was settled."""
    return worst if status in (PENDING, ABANDONED) else usage


@dataclass(slots=True)
class AbandonedCalls:
    """Entries found ``pending`` at resume (in flight when the process died)."""

    count: int = 0
    usage: Usage = field(default_factory=Usage)
    by_stage: dict[str, int] = field(default_factory=dict)


class CallJournal:
    """Write-ahead journal of every model call of a checkpointed run (see the module doc).

    Implements the :class:`testtime.context.CallJournal` protocol; stages
    use :meth:`for_stage` views, which add the stage name and the stage
    ledger's clock to each entry. Thread-safe; every write is one committed
    statement.

    Args:
        path: the SQLite file (the checkpoint database).
        run_id: the run the entries belong to.
        clock: the run's elapsed-seconds clock (the root ledger's ``elapsed``).
        fresh: a new run: drop entries an earlier run with this id left.
    """

    def __init__(self, path: str | Path, run_id: str, *, clock: Callable[[], float] | None = None,
                 fresh: bool = False) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if os.environ.get("TESTTIME_JOURNAL_SYNC", "").lower() == "full" else "NORMAL"
            self._db.execute(f"PRAGMA synchronous={sync}")
            for stmt in _SCHEMA:
                self._db.execute(stmt)
            if fresh:
                for table in ("testtime_calls", "testtime_stage_limits", "testtime_epochs"):
                    self._db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            row = self._db.execute(
                "SELECT MAX(e) FROM (SELECT MAX(epoch) AS e FROM testtime_epochs WHERE run_id=? "
                "UNION ALL SELECT MAX(epoch) FROM testtime_calls WHERE run_id=?)", (run_id, run_id)).fetchone()
            #: This process's number among the processes that ran this run (1 = the first).
            self.epoch = int(row[0] or 0) + 1
            self._db.execute("INSERT OR REPLACE INTO testtime_epochs VALUES (?,?,?)",
                             (run_id, self.epoch, time.time()))
        except (sqlite3.Error, OSError) as exc:
            raise UserError(f"cannot open the call journal in {self.path}: {exc}") from exc
        self._open: dict[str, list[int]] = {}  # key -> ids of this process's unfinished entries
        self._earlier: dict[int, _Entry] = {}
        self._done: dict[str, list[int]] = {}  # key -> earlier done entry ids
        self._aborted: dict[str, list[int]] = {}  # key -> earlier aborted entry ids
        self._settled: set[int] = set()  # earlier entries already charged by this process
        self.replayed = 0
        self._load()

    # ------------------------------------------------------------- loading
    def _load(self) -> None:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT id, key, status, role, stage, worst, usage, generations, t, run_t FROM testtime_calls "
            "WHERE run_id=? AND epoch<? ORDER BY id", (self.run_id, self.epoch)).fetchall()
        for rid, key, status, role, stage, worst, usage, gens, t, run_t in rows:
            e = _Entry(id=rid, key=key, status=status, role=role or "solve", stage=stage or "",
                       worst=usage_from_json(worst), usage=usage_from_json(usage), generations=gens,
                       t=float(t or 0.0), run_t=float(run_t or 0.0))
            self._earlier[rid] = e
            if status == DONE and gens is not None:
                self._done.setdefault(key, []).append(rid)
            elif status == ABORTED:
                self._aborted.setdefault(key, []).append(rid)

    def abandon_pending(self) -> AbandonedCalls:
        """Mark entries an earlier process left ``pending`` as ``abandoned``; report them.

        They are charged at their worst case (once per resumed process, like
        every other entry, see :meth:`take_stage`); the report counts only
        those found pending now, so a second resume does not report them again.
        """
        out = AbandonedCalls()
        self._write("UPDATE testtime_calls SET status=? WHERE run_id=? AND status=? AND epoch<?",
                    (ABANDONED, self.run_id, PENDING, self.epoch))
        for e in self._earlier.values():
            if e.status == PENDING:
                e.status = ABANDONED
                out.count += 1
                out.usage = out.usage + (e.worst or Usage())
                out.by_stage[e.stage] = out.by_stage.get(e.stage, 0) + 1
        return out

    # ------------------------------------------------- the CallJournal protocol
    def for_stage(self, stage: str, clock: Callable[[], float] | None = None) -> StageJournal:
        """The view a stage's contexts use: entries carry ``stage`` and its clock."""
        return StageJournal(self, stage, clock)

    def lookup(self, key: str) -> ReplayedCall | None:
        """The result of ``key`` if an earlier process completed it (and it is not replayed yet).

        The usage returned covers the completed attempt and the failed
        attempts of the same call before it (all were charged in the run
        that made them).
        """
        with self._lock:
            ids = self._done.get(key)
            while ids:
                rid = ids.pop(0)
                if rid in self._settled:
                    continue
                e = self._earlier[rid]
                self._settled.add(rid)
                usage = e.usage or Usage()
                for aid in self._aborted.pop(key, []):
                    if aid not in self._settled:
                        self._settled.add(aid)
                        a = self._earlier[aid].usage
                        if a is not None:
                            usage = usage + a
                self.replayed += 1
                gens = generations_from_json(e.generations or "[]")
                return ReplayedCall(generations=gens, usage=usage)
        return None

    def begin(self, key: str, worst: Usage, role: str, *, stage: str = "", t: float | None = None) -> None:
        """Write the reservation of an attempt ahead of sending it (committed on return)."""
        run_t = self._run_t()
        rid = self._write(
            "INSERT INTO testtime_calls (run_id, key, status, role, stage, worst, t, run_t, epoch, wall) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, key, PENDING, role, stage, usage_to_json(worst), run_t if t is None else t, run_t,
             self.epoch, time.time()))
        with self._lock:
            self._open.setdefault(key, []).append(rid)

    def complete(self, key: str, generations: list[Generation], usage: Usage, role: str, *,
                 stage: str = "", t: float | None = None) -> None:
        """Record a finished call: what it returned and what was settled."""
        self._finish(key, DONE, usage, generations_to_json(generations), role, stage, t)

    def abort(self, key: str, settled: Usage | None, role: str, *, stage: str = "", t: float | None = None) -> None:
        """Record a failed attempt: what was charged for it (None: the reservation was released)."""
        self._finish(key, ABORTED, settled, None, role, stage, t)

    def _finish(self, key: str, status: str, usage: Usage | None, gens: str | None, role: str,
                stage: str, t: float | None) -> None:
        run_t = self._run_t()
        t = run_t if t is None else t
        u = None if usage is None else usage_to_json(usage)
        with self._lock:
            ids = self._open.get(key)
            rid = ids.pop(0) if ids else None
            if ids is not None and not ids:
                del self._open[key]
        if rid is not None:
            self._write("UPDATE testtime_calls SET status=?, usage=?, generations=?, t=?, run_t=? WHERE id=?",
                        (status, u, gens, t, run_t, rid))
        else:  # finished without a begin: record it all the same
            self._write(
                "INSERT INTO testtime_calls (run_id, key, status, role, stage, usage, generations, t, run_t, "
                "epoch, wall) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (self.run_id, key, status, role, stage, u, gens, t, run_t, self.epoch, time.time()))

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run one write statement (committed on return); the new row id."""
        with self._lock:
            if self._db is None:
                return 0
            try:
                return int(self._db.execute(sql, args).lastrowid or 0)
            except sqlite3.Error as exc:
                raise UserError(f"cannot write the call journal in {self.path}: {exc}") from exc

    def _run_t(self) -> float:
        return float(self._clock()) if self._clock is not None else 0.0

    # ----------------------------------------------------------- accounting
    def take_stage(self, stage: str) -> dict[str, Usage]:
        """Spend of earlier processes in ``stage`` not charged yet by this one: role -> Usage.

        Done calls not replayed, failed attempts not covered by a replay and
        abandoned calls (at their worst case). Each entry is returned once
        per process; later calls return only what was not taken before.
        """
        return self._take(lambda e: e.stage == stage)

    def take_stage_except(self, stage: str, scope: str) -> dict[str, Usage]:
        """Like :meth:`take_stage`, leaving out the entries of node ``scope`` (``stage/node/round``).

        A resumed stage continues at the node that was running at the crash;
        the nodes before it were checkpointed and do not run again, so their
        calls are charged before it starts, and only its own can replay.
        """
        return self._take(lambda e: e.stage == stage and e.key.partition("|")[0] != scope)

    def take_all(self) -> dict[str, dict[str, Usage]]:
        """What :meth:`take_stage` would return for every stage: stage -> role -> Usage."""
        return self.take_all_where(lambda stage: True)

    def take_all_where(self, pick: Callable[[str], bool]) -> dict[str, dict[str, Usage]]:
        """:meth:`take_stage` for every stage name ``pick`` accepts: stage -> role -> Usage."""
        stages = {e.stage for e in self._earlier.values()}
        return {s: u for s in sorted(stages) if pick(s) and (u := self.take_stage(s))}

    def _take(self, pick: Callable[[_Entry], bool]) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        with self._lock:
            for rid, e in self._earlier.items():
                if rid in self._settled or not pick(e):
                    continue
                self._settled.add(rid)
                paid = e.paid()
                if paid is not None:
                    out[e.role] = out.get(e.role, Usage()) + paid
        return out

    def stage_elapsed(self, stage: str) -> float:
        """Seconds the stage had run for at its last journaled entry (earlier processes)."""
        return max((e.t for e in self._earlier.values() if e.stage == stage), default=0.0)

    def elapsed(self) -> float:
        """Seconds the run had used at its last journaled entry (earlier processes)."""
        return max((e.run_t for e in self._earlier.values()), default=0.0)

    def record_stage_limits(self, stage: str, limits: dict[str, float]) -> None:
        """Remember the budget ``stage`` was carved when it started."""
        self._write("INSERT OR REPLACE INTO testtime_stage_limits VALUES (?,?,?,?)",
                    (self.run_id, stage, json.dumps(limits), self.epoch))

    def stage_limits(self, stage: str) -> dict[str, float] | None:
        """The budget an earlier process carved for ``stage`` (None if it never started)."""
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute("SELECT limits FROM testtime_stage_limits WHERE run_id=? AND stage=? "
                                   "AND epoch<?", (self.run_id, stage, self.epoch)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # -------------------------------------------------------------- reading
    def entries(self) -> list[dict[str, Any]]:
        """Every entry of the run, oldest first (for tests and inspection)."""
        with self._lock:
            if self._db is None:
                return []
            rows = self._db.execute(
                "SELECT id, key, status, role, stage, worst, usage, epoch FROM testtime_calls WHERE run_id=? "
                "ORDER BY id", (self.run_id,)).fetchall()
        return [{"id": r[0], "key": r[1], "status": r[2], "role": r[3], "stage": r[4],
                 "worst": usage_from_json(r[5]), "usage": usage_from_json(r[6]), "epoch": r[7]} for r in rows]

    def counts(self) -> dict[str, int]:
        """status -> number of entries of the run."""
        out: dict[str, int] = {}
        for e in self.entries():
            out[e["status"]] = out.get(e["status"], 0) + 1
        return out

    def totals(self) -> dict[str, dict[str, Usage]]:
        """Spend of the run across all its processes: stage -> role -> Usage.

        Done and failed attempts at what was settled; pending and abandoned
        entries (in flight at a crash) at their worst case.
        """
        out: dict[str, dict[str, Usage]] = {}
        for e in self.entries():
            paid = charged_at(e["status"], e["worst"], e["usage"])
            if paid is None:
                continue
            roles = out.setdefault(e["stage"] or "", {})
            roles[e["role"] or "solve"] = roles.get(e["role"] or "solve", Usage()) + paid
        return out

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> CallJournal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: The old name (the journal replaced the settled-spend table ``testtime_spend``).
SpendJournal = CallJournal


class StageJournal:
    """A stage's view of the :class:`CallJournal`: the protocol ``RunContext`` uses."""

    __slots__ = ("journal", "stage", "clock")

    def __init__(self, journal: CallJournal, stage: str, clock: Callable[[], float] | None) -> None:
        self.journal = journal
        self.stage = stage
        self.clock = clock

    def _t(self) -> float | None:
        return float(self.clock()) if self.clock is not None else None

    def lookup(self, key: str) -> ReplayedCall | None:
        return self.journal.lookup(key)

    def begin(self, key: str, worst: Usage, role: str) -> None:
        self.journal.begin(key, worst, role, stage=self.stage, t=self._t())

    def complete(self, key: str, generations: list[Generation], usage: Usage, role: str) -> None:
        self.journal.complete(key, generations, usage, role, stage=self.stage, t=self._t())

    def abort(self, key: str, settled: Usage | None, role: str) -> None:
        self.journal.abort(key, settled, role, stage=self.stage, t=self._t())


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
