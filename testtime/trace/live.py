"""The live terminal view of a run (``testtime run`` without ``--json``).

A :class:`LiveView` is a trace sink: it counts events as they arrive and a
rich ``Live`` display redraws from them and from the ledger a few times a
second: one bar per limited budget dimension (spent, plus reserved in
flight), calls in flight, spend by role, the search tree's growth and the
latest events. When the run ends, :meth:`LiveView.print_summary` prints the
answer, why the run stopped, the spend, and the top candidates.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from testtime.budget import DIMENSIONS, BudgetLedger
from testtime.trace.events import TraceEvent

if TYPE_CHECKING:
    from testtime.api import Result
    from testtime.context import RunContext

_SHOWN = {"model_call", "verdict", "budget_refused", "retry", "error", "stage_start", "stage_end",
          "search_round", "node_selected", "prm_scores", "note"}


def _fmt(dim: str, v: float | None) -> str:
    if v is None:
        return "-"
    if dim == "usd":
        return f"${v:.4f}"
    if dim == "seconds":
        return f"{v:.1f}s"
    return f"{int(v):,}"


def bar(fraction: float, reserved: float = 0.0, width: int = 28) -> Text:
    """A text bar: solid for spent, shaded for reserved-in-flight."""
    fraction = min(max(fraction, 0.0), 1.0)
    reserved = min(max(reserved, 0.0), 1.0 - fraction)
    full = int(round(fraction * width))
    res = int(round(reserved * width))
    color = "green" if fraction < 0.7 else "yellow" if fraction < 0.95 else "red"
    t = Text()
    t.append("█" * full, style=color)
    t.append("▒" * res, style="dim " + color)
    t.append("·" * max(width - full - res, 0), style="dim")
    return t


class LiveView:
    """Rich live display fed by trace events; use as a context manager."""

    def __init__(self, ledger: BudgetLedger, *, title: str = "", strategy: str = "", model: str = "",
                 context: RunContext | None = None, console: Console | None = None,
                 refresh_per_second: float = 8.0) -> None:
        self.ledger = ledger
        self.title = title
        self.strategy = strategy
        self.model = model
        self.context = context
        self.console = console or Console(stderr=True)
        self._lock = threading.Lock()
        self.calls = 0
        self.nodes = 0
        self.best_score: float | None = None
        self.refusals = 0
        self.retries = 0
        self.errors = 0
        self.stage: str | None = None
        self.stages: dict[str, str] = {}
        self.recent: deque[str] = deque(maxlen=6)
        self._live = Live(console=self.console, refresh_per_second=refresh_per_second,
                          get_renderable=self.render, transient=True, auto_refresh=True)

    # ------------------------------------------------------------ trace sink
    def __call__(self, event: TraceEvent) -> None:
        d = event.data
        with self._lock:
            kind = event.kind
            if kind == "model_call":
                self.calls += 1
            elif kind == "node_added":
                self.nodes += 1
                score = d.get("score")
                if isinstance(score, (int, float)) and (self.best_score is None or score > self.best_score):
                    self.best_score = float(score)
            elif kind == "budget_refused":
                self.refusals += 1
            elif kind == "retry":
                self.retries += 1
            elif kind == "error":
                self.errors += 1
            elif kind == "stage_start":
                self.stage = d.get("stage") or event.stage
                if self.stage:
                    self.stages[self.stage] = "running"
            elif kind == "stage_end":
                name = d.get("stage") or event.stage
                if name:
                    self.stages[name] = "done"
            if kind in _SHOWN:
                self.recent.append(self._describe(event))

    @staticmethod
    def _describe(event: TraceEvent) -> str:
        d = event.data
        where = f"[{event.stage}] " if event.stage else ""
        if event.kind == "model_call":
            u = d.get("usage", {})
            return (f"{where}{d.get('role', '')} call {d.get('model', '')} n={d.get('n')} "
                    f"{u.get('output_tokens', 0)} out tok, {d.get('latency_s', 0):.2f}s")
        if event.kind == "budget_refused":
            return f"{where}budget refused {d.get('dimension')}: needs {d.get('requested')}, left {d.get('remaining')}"
        if event.kind == "verdict":
            return f"{where}verdict {d.get('verifier', '')} score={d.get('score')} passed={d.get('passed')}"
        if event.kind == "retry":
            return f"{where}retry {d.get('model', '')} attempt {d.get('attempt')}: {d.get('error', '')}"
        if event.kind == "error":
            return f"{where}error: {d.get('error', '')}"
        parts = ", ".join(f"{k}={v}" for k, v in list(d.items())[:4])
        return f"{where}{event.kind} {parts}"

    # -------------------------------------------------------------- drawing
    def render(self) -> Panel:
        snap = self.ledger.snapshot()
        table = Table.grid(padding=(0, 1))
        table.add_column(justify="right", style="bold")
        table.add_column()
        table.add_column(justify="right")
        limited = False
        for dim in DIMENSIONS:
            lim = snap[dim]["limit"]
            if lim is None:
                continue
            limited = True
            spent, reserved = snap[dim]["spent"], snap[dim]["reserved"]
            frac = spent / lim if lim else 1.0
            rfrac = reserved / lim if lim else 0.0
            table.add_row(dim, bar(frac, rfrac), f"{_fmt(dim, spent)} / {_fmt(dim, lim)}")
        if not limited:
            table.add_row("budget", Text("unlimited", style="dim"), "")
        in_flight = self.context.in_flight if self.context is not None else 0
        with self._lock:
            status = Text.assemble(
                ("calls ", "bold"), str(self.calls), ("  in flight ", "bold"), str(in_flight),
                ("  nodes ", "bold"), str(self.nodes),
                ("  best ", "bold"), "-" if self.best_score is None else f"{self.best_score:.3f}",
                ("  refused ", "bold"), str(self.refusals), ("  retries ", "bold"), str(self.retries),
            )
            roles = self.ledger.usage_by_role()
            role_line = Text("  ".join(f"{r}: {u.tokens:,} tok" for r, u in roles.items()) or "no spend yet",
                             style="cyan")
            stages = Text("  ".join(f"{s} ({st})" for s, st in self.stages.items()), style="magenta")
            recent = Text("\n".join(self.recent) or "waiting for the first call...", style="dim")
        parts: list[Any] = [table, status, role_line]
        if self.stages:
            parts.append(stages)
        parts.append(recent)
        head = f"{self.strategy} on {self.model}"
        title = (self.title[:70] + "...") if len(self.title) > 70 else self.title
        return Panel(Group(*parts), title=f"testtime: {head}", subtitle=title, border_style="blue")

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    # -------------------------------------------------------------- summary
    def print_summary(self, result: Result, console: Console | None = None) -> None:
        print_summary(result, console or Console())


def print_summary(result: Result, console: Console) -> None:
    """A readable end-of-run report."""
    u = result.usage
    console.print()
    answer = result.answer if result.answer is not None else "(no answer found)"
    console.print(Text.assemble(("Answer: ", "bold green"), (str(answer), "bold")))
    console.print(Text.assemble(("Stopped: ", "bold"), result.stopped_reason,
                                ("   strategy ", "bold"), result.strategy, ("   model ", "bold"), result.model))
    spend = Table(title="Spend", show_header=True, header_style="bold")
    for col in ("", "input tok", "output tok", "cached", "calls", "usd"):
        spend.add_column(col, justify="right")
    spend.add_row("total", f"{u['input_tokens']:,}", f"{u['output_tokens']:,}", f"{u['cached_tokens']:,}",
                  str(u["calls"]), f"${u['usd']:.4f}")
    for role, ru in u.get("by_role", {}).items():
        spend.add_row(role, f"{ru['input_tokens']:,}", f"{ru['output_tokens']:,}", f"{ru['cached_tokens']:,}",
                      str(ru["calls"]), f"${ru['usd']:.4f}")
    console.print(spend)
    limits = ", ".join(f"{k}={_fmt(k, v)}" for k, v in result.budget.items()) or "unlimited"
    console.print(Text.assemble(("Budget: ", "bold"), limits, ("   wall ", "bold"), f"{u['seconds']:.1f}s"))
    if result.candidates:
        console.print(candidate_table(result))


def candidate_table(result: Result, limit: int = 8) -> Table:
    """Candidates grouped by normalised answer: votes, best score, tokens."""
    from testtime.verifiers.answer import normalize_answer

    groups: dict[str, dict[str, Any]] = {}
    for c in result.candidates:
        key = normalize_answer(c.answer) or "(none)"
        g = groups.setdefault(key, {"answer": c.answer, "count": 0, "best": None, "tokens": 0})
        g["count"] += 1
        g["tokens"] += c.tokens
        if c.score is not None and (g["best"] is None or c.score > g["best"]):
            g["best"] = c.score
    table = Table(title=f"Candidates: {len(result.candidates)} samples, {len(groups)} distinct answers",
                  header_style="bold")
    for col, just in (("answer", "left"), ("samples", "right"), ("best score", "right"), ("tokens", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    ranked = sorted(groups.values(), key=lambda g: (g["count"], g["best"] or 0.0), reverse=True)
    for g in ranked[:limit]:
        table.add_row(str(g["answer"])[:50], str(g["count"]),
                      "-" if g["best"] is None else f"{g['best']:.3f}", f"{g['tokens']:,}")
    return table
