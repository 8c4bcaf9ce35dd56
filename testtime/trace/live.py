"""The live terminal view of a run (``testtime run`` without ``--json``).

A :class:`LiveView` is a trace sink: each event is folded into a
:class:`~testtime.trace.render.TraceTree` (the structure ``testtime trace
show`` draws: run -> stages -> strategies -> search nodes with scores and
tokens) and a few counters, in constant time. A rich ``Live`` display
redraws a few times a second: the tree, cut to fit the terminal (finished
stages fold to one line, a strategy shows its best few nodes plus the latest
ones and a ``+M more`` line), one bar per limited budget dimension (spent,
plus reserved in flight), calls in flight, spend by role and the latest
events. The last frame stays on screen; :meth:`LiveView.print_summary` then
prints the answer, why the run stopped, the spend, and the top candidates.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.control import Control
from rich.live import Live
from rich.live_render import LiveRender
from rich.panel import Panel
from rich.rule import Rule
from rich.segment import ControlType, Segment
from rich.table import Table
from rich.text import Text

from testtime.budget import DIMENSIONS, BudgetLedger
from testtime.trace.events import TraceEvent
from testtime.trace.render import TraceTree

if TYPE_CHECKING:
    from testtime.api import Result
    from testtime.context import RunContext

_SHOWN = {"model_call", "verdict", "budget_refused", "retry", "error", "stage_start", "stage_end",
          "search_round", "node_selected", "prm_scores", "note"}
#: Kinds the tree has no use for (and that can be frequent).
_NOT_TREE = frozenset({"checkpoint"})


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


class _InPlaceRender(LiveRender):
    """A live render that redraws over the last frame instead of erasing it first.

    Rich's default erases every line of the frame, then writes the new one; a
    terminal that receives the frame in several reads (a 40-line frame is
    well over a pty's 4 KiB) shows a half-blank panel in between, which is
    flicker. Here each line overwrites the old one (erasing only its tail)
    and lines the new frame no longer covers are cleared at the end.
    """

    in_place = True

    def position_cursor(self) -> Control:
        if self._shape is None or not self.in_place:
            return super().position_cursor()
        _, height = self._shape
        return Control(ControlType.CARRIAGE_RETURN, *(((ControlType.CURSOR_UP, 1),) * (height - 1)))

    def __rich_console__(self, console: Console, options: Any) -> Iterator[Segment]:
        old = self.last_render_height if self.in_place else 0
        width = options.max_width
        eol = Control((ControlType.ERASE_IN_LINE, 0)).segment
        line: list[Segment] = []

        def finish() -> Iterator[Segment]:
            yield from line
            # A full-width line leaves the cursor in the pending-wrap column,
            # where erasing would eat the last character: only erase short lines.
            if Segment.get_line_length(line) < width:
                yield eol

        for seg in super().__rich_console__(console, options):
            if seg.text == "\n" and not seg.control:
                yield from finish()
                yield seg
                line = []
            else:
                line.append(seg)
        yield from finish()
        extra = old - self.last_render_height
        if extra > 0:
            for _ in range(extra):
                yield Segment.line()
                yield Control((ControlType.ERASE_IN_LINE, 2)).segment
            yield Control(*(((ControlType.CURSOR_UP, 1),) * extra)).segment


class _Live(Live):
    """``Live`` that redraws in place, except when other output is printed
    above it (then the frame must be erased so the output does not mix in)."""

    def process_renderables(self, renderables: list[Any]) -> list[Any]:
        render = self._live_render
        if isinstance(render, _InPlaceRender):
            render.in_place = all(isinstance(r, Control) for r in renderables)
        return super().process_renderables(renderables)


class LiveView:
    """Rich live display fed by trace events; use as a context manager.

    Args:
        ledger: the run's ledger (the budget bars read it at each redraw).
        title: the question or task name (panel subtitle).
        strategy: strategy name for the panel title.
        model: model spec for the panel title.
        context: the run's context, for the count of calls in flight.
        console: where to draw (default: stderr).
        refresh_per_second: redraws per second.
        transient: erase the display at the end instead of leaving the last frame.
    """

    def __init__(self, ledger: BudgetLedger, *, title: str = "", strategy: str = "", model: str = "",
                 context: RunContext | None = None, console: Console | None = None,
                 refresh_per_second: float = 8.0, transient: bool = False) -> None:
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
        self.recent: deque[TraceEvent] = deque(maxlen=6)
        self.tree = TraceTree()
        self._live = _Live(console=self.console, refresh_per_second=refresh_per_second,
                           get_renderable=self.render, transient=transient, auto_refresh=True)
        if isinstance(getattr(self._live, "_live_render", None), LiveRender):
            old = self._live._live_render
            self._live._live_render = _InPlaceRender(old.renderable, vertical_overflow=old.vertical_overflow)

    # ------------------------------------------------------------ trace sink
    def __call__(self, event: TraceEvent) -> None:
        d = event.data
        with self._lock:
            kind = event.kind
            if kind == "model_call":
                self.calls += 1
            elif kind in ("node_added", "node_scored"):
                self.nodes += kind == "node_added"
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
            if kind not in _NOT_TREE:
                # Same key order as TraceEvent.to_dict, so the tree sees what a JSONL file holds.
                self.tree.add({"kind": kind, "run_id": event.run_id, "stage": event.stage, **d})
            if kind in _SHOWN:
                # Described lazily: only the last few are ever drawn.
                self.recent.append(event)

    @staticmethod
    def _describe(event: TraceEvent) -> str:
        # One row each: event text (a stage's answer text...) may hold newlines.
        return " ".join(LiveView._describe_raw(event).split())[:300]

    @staticmethod
    def _describe_raw(event: TraceEvent) -> str:
        d = event.data
        where = f"[{event.stage}] " if event.stage else ""
        if event.kind == "model_call":
            u = d.get("usage", {})
            return (f"{where}{d.get('role', '')} call {d.get('model', '')} n={d.get('n')} "
                    f"{u.get('output_tokens', 0)} out tok, {float(d.get('latency_s') or 0):.2f}s")
        if event.kind == "budget_refused":
            return f"{where}budget refused {d.get('dimension')}: needs {d.get('requested')}, left {d.get('remaining')}"
        if event.kind == "verdict":
            return f"{where}verdict {d.get('verifier', '')} score={d.get('score')} passed={d.get('passed')}"
        if event.kind == "retry":
            return f"{where}retry {d.get('model', '')} attempt {d.get('attempt')}: {d.get('error', '')}"
        if event.kind == "error":
            return f"{where}error: {d.get('error', '')}"
        parts = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in list(d.items())[:4])
        return f"{where}{event.kind} {parts}"

    # -------------------------------------------------------------- drawing
    def _budget_rows(self) -> Table:
        snap = self.ledger.snapshot()
        table = Table.grid(padding=(0, 1))
        table.add_column(justify="right", style="bold", no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
        limited = False
        for dim in DIMENSIONS:
            lim = snap[dim]["limit"]
            if lim is None:
                continue
            limited = True
            spent, reserved = snap[dim]["spent"], snap[dim]["reserved"]
            frac = spent / lim if lim else 1.0
            rfrac = reserved / lim if lim else 0.0
            table.add_row(dim, bar(frac, rfrac), f"{_fmt(dim, spent)} / {_fmt(dim, lim)}"
                          + (f"  (+{_fmt(dim, reserved)} in flight)" if reserved else ""))
        if not limited:
            table.add_row("budget", Text("unlimited", style="dim"), "")
        return table

    def render(self) -> Panel:
        """One frame: the trace tree cut to the terminal, budget bars, counters, latest events.

        Costs O(rows drawn + stages), however many events came in.
        """
        # Read the ledger before taking our lock: never hold both at once.
        budget = self._budget_rows()
        roles = self.ledger.usage_by_role()
        in_flight = self.context.in_flight if self.context is not None else 0
        height = self.console.size.height
        n_recent = 0 if height < 24 else 2 if height < 36 else 4
        # Panel border (2), budget rows, status, roles, the rule above the events.
        fixed = 2 + budget.row_count + 2 + (n_recent + 1 if n_recent else 0)
        with self._lock:
            tree = self.tree.live_tree(max_lines=max(height - fixed - 1, 4))
            status = Text.assemble(
                ("calls ", "bold"), str(self.calls), ("  in flight ", "bold"), str(in_flight),
                ("  nodes ", "bold"), str(self.nodes),
                ("  best ", "bold"), "-" if self.best_score is None else f"{self.best_score:.3f}",
                ("  refused ", "bold"), str(self.refusals), ("  retries ", "bold"), str(self.retries),
                ("  errors ", "bold"), str(self.errors), no_wrap=True, overflow="ellipsis",
            )
            recent = [self._describe(e) for e in list(self.recent)[-n_recent:]] if n_recent else []
        role_line = Text("  ".join(_role_spend(r, u) for r, u in roles.items())
                         or "no spend yet", style="cyan", no_wrap=True, overflow="ellipsis")
        parts: list[Any] = [tree, budget, status, role_line]
        if n_recent:
            parts.append(Rule(style="dim"))
            parts.append(Text("\n".join(recent) or "waiting for the first call...", style="dim",
                              no_wrap=True, overflow="ellipsis"))
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


def _role_spend(role: str, u: Any) -> str:
    """``solve: 3,570 tok (14 calls)``, with the thinking part when the role's calls thought."""
    thinking = int(getattr(u, "reasoning_tokens", 0) or 0)
    think = f"{thinking:,} thinking, " if thinking > 0 else ""
    return f"{role}: {u.tokens:,} tok ({think}{u.calls} calls)"


def print_summary(result: Result, console: Console) -> None:
    """A readable end-of-run report."""
    u = result.usage
    console.print()
    answer = result.answer if result.answer is not None else "(no answer found)"
    console.print(Text.assemble(("Answer: ", "bold green"), (str(answer), "bold")))
    console.print(Text.assemble(("Stopped: ", "bold"), result.stopped_reason,
                                ("   strategy ", "bold"), result.strategy, ("   model ", "bold"), result.model))
    spend = Table(title="Spend", show_header=True, header_style="bold")
    # Thinking (the part of output tokens spent reasoning) only when some call thought.
    thinks = int(u.get("reasoning_tokens") or 0) > 0
    for col in ("", "input tok", "output tok", *(("thinking",) if thinks else ()), "cached", "calls", "usd"):
        spend.add_column(col, justify="right")

    def think(d: dict[str, Any]) -> tuple[str, ...]:
        return (f"{int(d.get('reasoning_tokens') or 0):,}",) if thinks else ()

    spend.add_row("total", f"{u['input_tokens']:,}", f"{u['output_tokens']:,}", *think(u), f"{u['cached_tokens']:,}",
                  str(u["calls"]), f"${u['usd']:.4f}")
    for role, ru in u.get("by_role", {}).items():
        spend.add_row(role, f"{ru['input_tokens']:,}", f"{ru['output_tokens']:,}", *think(ru),
                      f"{ru['cached_tokens']:,}", str(ru["calls"]), f"${ru['usd']:.4f}")
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
