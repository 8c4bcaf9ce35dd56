"""A trace as a navigable index: run -> stages -> strategies -> search nodes.

The model behind ``testtime trace browse`` (and ``trace render``), kept
free of any UI so it can be tested on its own. :class:`TraceIndex` takes
event dicts one at a time (a finished file, or a file still being written:
see :class:`Follower`) and keeps, per node, everything the detail pane
shows: full text, score and the strategy's other numbers (MCTS visits / Q /
prior, A* f / g / h, particle weight), step scores, tokens, the latency of
the model call that produced it, verifier verdicts, and why it was pruned or
selected. ``node_scored`` events update a node after it was added.

Traces of every version are read: fields a version lacks are simply absent.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.errors import UserError
from testtime.trace.numbers import number
from testtime.trace.thinking import ThinkingSummary, event_detail

RUN = "(run)"
#: Numbers a strategy may attach to a node (interface: node_added / node_scored).
NODE_NUMBERS = ("score", "visits", "q", "prior", "f", "g", "h", "weight", "value")
#: Numeric fields of node events that are not the node's numbers.
_NOT_NUMBERS = frozenset({"node", "parent", "step", "tokens", "t", "latency_s"})
#: Events a reader jumps between with "next incident".
INCIDENT_KINDS = frozenset({"budget_refused", "error"})
#: Events shown as leaves under their stage.
LEAF_KINDS = frozenset({"verify_round", "verdict", "refine", "route", "budget_refused", "retry", "error", "note",
                        "thinking"})


def fmt_num(v: Any, digits: int = 3) -> str:
    n = number(v)
    return "-" if n is None else f"{n:.{digits}f}"


def short(text: Any, n: int = 60) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


@dataclass(slots=True)
class Node:
    """One search node, with what the trace said about it."""

    key: str
    node: int
    parent: int | None
    strategy: str  # key of its StrategyRun
    seq: int  # index of its node_added event
    step: Any = None
    tokens: int = 0
    terminal: bool = False
    text: str = ""
    numbers: dict[str, float] = field(default_factory=dict)
    step_scores: list[float] | None = None
    pruned: list[str] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    call: dict[str, Any] | None = None
    children: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        return self.numbers.get("score")

    def update(self, e: dict[str, Any]) -> None:
        """Take the numbers (and step scores) of a node_added / node_scored event."""
        for k, raw in e.items():
            # The known numbers, and any other a strategy adds (code_monkeys' votes, a logprob).
            if k in _NOT_NUMBERS or isinstance(raw, bool):
                continue
            v = number(raw)
            if v is not None:
                self.numbers[k] = v
        ss = e.get("step_scores")
        if isinstance(ss, list) and all(number(x) is not None for x in ss):
            self.step_scores = [float(x) for x in ss]
        for k in ("passed", "verdict", "latency_s"):
            if k in e and e[k] is not None:
                self.extra[k] = e[k]

    def label(self) -> str:
        """One line: marks, id, step, numbers, tokens, text."""
        mark = "★ " if self.selected else ("✂ " if self.pruned else "")
        nums = [f"score={fmt_num(self.score)}"]
        if "visits" in self.numbers:
            nums.append(f"N={int(self.numbers['visits'])}")
        if "q" in self.numbers:
            nums.append(f"Q={self.numbers['q']:.3f}")
        for k in ("f", "g", "h", "weight"):
            if k in self.numbers:
                nums.append(f"{k}={self.numbers[k]:.3f}")
        end = " [end]" if self.terminal else ""
        return f"{mark}#{self.node} step {self.step} {' '.join(nums)} tok={self.tokens}{end}  {short(self.text, 50)}"


@dataclass(slots=True)
class StrategyRun:
    """One strategy's run inside a stage."""

    key: str
    stage: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    start: int = -1
    end: dict[str, Any] | None = None
    nodes: dict[int, Node] = field(default_factory=dict)
    roots: list[int] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def label(self) -> str:
        out = f"strategy {self.name}  {len(self.nodes)} node(s)"
        if self.rounds:
            r = self.rounds[-1]
            out += f"  round {r.get('round')} best={fmt_num(r.get('best_score'))}"
        if self.end is not None:
            out += f"  answer={short(self.end.get('answer'), 30)} ({self.end.get('stopped_reason')})"
        return out


@dataclass(slots=True)
class Stage:
    """A workflow stage (plain runs have one: ``(run)``)."""

    name: str
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    strategies: list[StrategyRun] = field(default_factory=list)
    #: Leaf events (index into TraceIndex.events), in order.
    leaves: list[int] = field(default_factory=list)
    #: role -> [calls, input_tokens, output_tokens, usd, seconds of calls, reasoning (thinking) tokens]
    spend: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0.0, 0.0, 0]))
    last_call: dict[str, Any] | None = None
    last_node: Node | None = None
    #: Sums of the stage's ``thinking`` events.
    thinking: ThinkingSummary = field(default_factory=ThinkingSummary)

    def label(self) -> str:
        s0 = self.start or {}
        out = f"stage {self.name}  {s0.get('model', '')} / {s0.get('strategy', '')}"
        if self.end:
            out += (f"  answer={short(self.end.get('answer'), 30)} score={fmt_num(self.end.get('score'))}"
                    f" ({self.end.get('stopped_reason')})")
        return out


@dataclass(frozen=True, slots=True)
class Item:
    """One row of the browsable tree: ``key`` is unique, ``parent`` is None for top rows."""

    key: str
    parent: str | None
    label: str
    kind: str  # run | stage | strategy | node | event


_SCORE_QUERY = re.compile(r"^\s*(score|visits|q|prior|f|g|h|weight|value)\s*(>=|<=|>|<|=|==)\s*(-?[0-9.]+)\s*$")


class TraceIndex:
    """Trace events indexed for browsing; :meth:`add` takes one event dict."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.starts: list[dict[str, Any]] = []
        self.ends: list[dict[str, Any]] = []
        self.stages: dict[str, Stage] = {}
        self.strategies: dict[str, StrategyRun] = {}
        self.nodes: dict[str, Node] = {}
        self.incidents: list[int] = []
        self.unknown_kinds: set[str] = set()
        #: Sums of every ``thinking`` event (the thinking/answer split).
        self.thinking = ThinkingSummary()

    # ------------------------------------------------------------ loading
    @classmethod
    def from_events(cls, events: list[dict[str, Any]]) -> TraceIndex:
        idx = cls()
        for e in events:
            idx.add(e)
        return idx

    @classmethod
    def from_file(cls, path: str | Path) -> TraceIndex:
        """Index a JSONL trace (unreadable lines skipped); UserError if none is readable."""
        from testtime.trace.jsonl import load_events

        events, skipped = load_events(path)
        if not events:
            what = f"{len(skipped)} unreadable line(s)" if skipped else "no events"
            raise UserError(f"{path}: not a trace ({what}); write one with `testtime run ... --trace {path}`")
        return cls.from_events(events)

    @property
    def version(self) -> int:
        """The trace format version (1 when run_start has no ``trace_version``)."""
        v = self.starts[0].get("trace_version") if self.starts else None
        return int(v) if number(v) is not None else 1

    def _stage(self, e: dict[str, Any]) -> Stage:
        name = e.get("stage") or RUN
        if not isinstance(name, str):
            name = str(name)
        st = self.stages.get(name)
        if st is None:
            st = self.stages[name] = Stage(name)
        return st

    def _strategy(self, st: Stage, name: str = "search", params: Any = None, seq: int = -1) -> StrategyRun:
        key = f"{st.name}#{len(st.strategies)}"
        s = StrategyRun(key, st.name, name, params if isinstance(params, dict) else {}, seq)
        st.strategies.append(s)
        self.strategies[key] = s
        return s

    def add(self, e: dict[str, Any]) -> None:
        """Take one event (a JSONL record or ``TraceEvent.to_dict()``)."""
        seq = len(self.events)
        self.events.append(e)
        kind = e.get("kind")
        if kind == "run_start":
            self.starts.append(e)
            return
        if kind == "run_end":
            self.ends.append(e)
            return
        if kind in ("run_resumed", "checkpoint"):
            return
        st = self._stage(e)
        if kind == "stage_start":
            st.start = e
        elif kind == "stage_end":
            st.end = e
        elif kind == "model_call":
            usage = e.get("usage") if isinstance(e.get("usage"), dict) else {}
            row = st.spend[str(e.get("role", "solve"))]
            row[0] += number(usage.get("calls", 1)) or 0
            row[1] += number(usage.get("input_tokens", 0)) or 0
            row[2] += number(usage.get("output_tokens", 0)) or 0
            row[3] += number(usage.get("usd", 0.0)) or 0.0
            row[4] += number(e.get("latency_s")) or 0.0
            row[5] += number(usage.get("reasoning_tokens", 0)) or 0
            st.last_call = e
        elif kind == "strategy_start":
            self._strategy(st, str(e.get("strategy")), e.get("params"), seq)
        elif kind == "strategy_end":
            if st.strategies:
                st.strategies[-1].end = e
        elif kind == "search_round":
            if st.strategies:
                st.strategies[-1].rounds.append(e)
        elif kind in ("node_added", "node_scored", "node_pruned", "node_selected"):
            self._node_event(st, kind, e, seq)
        elif kind in LEAF_KINDS:
            st.leaves.append(seq)
            if kind in INCIDENT_KINDS:
                self.incidents.append(seq)
            if kind == "verdict" and st.last_node is not None:
                st.last_node.verdicts.append(e)
            elif kind == "thinking":
                st.thinking.add(e)
                self.thinking.add(e)
        elif kind not in ("prm_scores",):
            self.unknown_kinds.add(str(kind))

    def _node_event(self, st: Stage, kind: str, e: dict[str, Any], seq: int) -> None:
        nid = e.get("node")
        if isinstance(nid, bool) or not isinstance(nid, int):
            return
        s = st.strategies[-1] if st.strategies else self._strategy(st)
        if kind == "node_added":
            parent = e.get("parent")
            parent = parent if isinstance(parent, int) and not isinstance(parent, bool) else None
            n = Node(key=f"{s.key}:{nid}", node=nid, parent=parent, strategy=s.key, seq=seq,
                     step=e.get("step"), tokens=int(number(e.get("tokens")) or 0),
                     terminal=bool(e.get("terminal")), text=str(e.get("text") or ""))
            n.update(e)
            if st.last_call is not None:
                n.call = st.last_call
            if nid in s.nodes:  # re-added (a resumed trace): keep the first, take new numbers
                s.nodes[nid].update(e)
                return
            s.nodes[nid] = n
            self.nodes[n.key] = n
            if parent in s.nodes:
                s.nodes[parent].children.append(nid)
            else:
                s.roots.append(nid)
            st.last_node = n
            return
        n = s.nodes.get(nid)
        if n is None:
            return
        st.last_node = n
        if kind == "node_scored":
            n.update(e)
        elif kind == "node_pruned":
            n.pruned.append(str(e.get("reason") or ""))
        else:
            n.selected.append(str(e.get("reason") or ""))

    # ------------------------------------------------------------ tree rows
    def run_label(self) -> str:
        start = self.starts[0] if self.starts else {}
        title = start.get("task") or short(start.get("question", ""), 50) or "run"
        out = f"run {start.get('run_id', '?')}  {title}"
        if start.get("strategy"):
            out += f"  [{start.get('strategy')} on {start.get('model')}]"
        if self.ends:
            end = self.ends[-1]
            out += f"  answer={short(end.get('answer'), 30)} ({end.get('stopped_reason')})"
        return out

    def items(self, *, only: set[str] | None = None) -> list[Item]:
        """The browsable tree as rows, parents before children.

        ``only``: node keys to keep (a filter); their ancestors are kept too,
        stages and strategies with nothing left are dropped.
        """
        rows: list[Item] = [Item("run", None, self.run_label(), "run")]
        keep = None
        if only is not None:
            keep = set()
            for key in only:
                n = self.nodes.get(key)
                while n is not None and n.key not in keep:
                    keep.add(n.key)
                    s = self.strategies[n.strategy]
                    n = s.nodes.get(n.parent) if n.parent is not None else None
        for st in self.stages.values():
            parent = "run"
            stage_rows: list[Item] = []
            if st.name != RUN:
                parent = f"stage:{st.name}"
                stage_rows.append(Item(parent, "run", st.label(), "stage"))
            for s in st.strategies:
                srows = [Item(f"strategy:{s.key}", parent, s.label(), "strategy")]
                stack = [(nid, f"strategy:{s.key}") for nid in reversed(s.roots)]
                while stack:
                    nid, host = stack.pop()
                    n = s.nodes[nid]
                    if keep is not None and n.key not in keep:
                        continue
                    srows.append(Item(f"node:{n.key}", host, n.label(), "node"))
                    stack.extend((c, f"node:{n.key}") for c in reversed(n.children))
                if keep is None or len(srows) > 1:
                    stage_rows.extend(srows)
            if keep is None:
                for i in st.leaves:
                    stage_rows.append(Item(f"event:{i}", parent, event_line(self.events[i]), "event"))
            if keep is None or any(r.kind == "node" for r in stage_rows):
                rows.extend(stage_rows)
        return rows

    # ------------------------------------------------------------ jumps
    def answer_node(self) -> Node | None:
        """The node the run chose: the last one selected as ``final``, else the last selected."""
        finals = [n for n in self.nodes.values() if "final" in n.selected]
        if finals:
            return max(finals, key=lambda n: n.seq)
        chosen = [n for n in self.nodes.values() if n.selected]
        return max(chosen, key=lambda n: n.seq) if chosen else None

    def best_node(self) -> Node | None:
        """The node with the highest score (ties: the earliest)."""
        scored = [n for n in self.nodes.values() if n.score is not None]
        return max(scored, key=lambda n: (n.score, -n.seq)) if scored else None

    def next_incident(self, after: int = -1) -> int | None:
        """Index of the first refused reservation or error after event ``after`` (wraps around)."""
        for i in self.incidents:
            if i > after:
                return i
        return self.incidents[0] if self.incidents else None

    def chosen_path(self) -> list[Node]:
        """The answer node and its ancestors, root first."""
        n = self.answer_node()
        path: list[Node] = []
        while n is not None:
            path.append(n)
            s = self.strategies[n.strategy]
            n = s.nodes.get(n.parent) if n.parent is not None else None
        return path[::-1]

    # ------------------------------------------------------------ search
    def search(self, query: str) -> list[Node]:
        """Nodes matching ``query``: ``score>=0.8`` (any node number, ops > >= < <= =) or text."""
        m = _SCORE_QUERY.match(query)
        if m:
            name, op, raw = m.groups()
            try:
                x = float(raw)
            except ValueError as exc:
                raise UserError(f"bad number in filter {query!r}") from exc
            ops = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__,
                   "=": float.__eq__, "==": float.__eq__}
            return [n for n in self.nodes.values()
                    if name in n.numbers and ops[op](n.numbers[name], x)]
        q = query.strip().lower()
        return [n for n in self.nodes.values() if q in n.text.lower()] if q else []

    # ------------------------------------------------------------ panels
    def spend_rows(self) -> list[tuple[str, str, int, int, int, float, float]]:
        """(stage, role, calls, input tokens, output tokens, usd, call seconds) per stage and role, then totals."""
        rows = []
        totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0.0])
        for st in self.stages.values():
            for role, r in sorted(st.spend.items()):
                rows.append((st.name, role, int(r[0]), int(r[1]), int(r[2]), r[3], r[4]))
                for i in range(5):
                    totals[role][i] += r[i]
        for role, r in sorted(totals.items()):
            rows.append(("total", role, int(r[0]), int(r[1]), int(r[2]), r[3], r[4]))
        return rows

    def thinking_tokens(self) -> dict[tuple[str, str], int]:
        """``(stage, role) -> reasoning tokens`` of the model calls, keyed like :meth:`spend_rows`
        (``("total", role)`` too); empty when no call thought."""
        out: dict[tuple[str, str], int] = {}
        for st in self.stages.values():
            for role, r in st.spend.items():
                out[(st.name, role)] = int(r[5])
                out[("total", role)] = out.get(("total", role), 0) + int(r[5])
        return out if any(out.values()) else {}

    def detail(self, key: str) -> str:
        """Everything known about a row, as plain text (the detail pane)."""
        if key.startswith("node:"):
            n = self.nodes.get(key[5:])
            return node_detail(n, self.strategies[n.strategy]) if n is not None else ""
        if key.startswith("event:"):
            i = int(key[6:])
            if self.events[i].get("kind") == "thinking":
                return f"event {i}: thinking\n" + event_detail(self.events[i])
            return f"event {i}: {self.events[i].get('kind')}\n" + json.dumps(self.events[i], indent=2,
                                                                              ensure_ascii=False, default=str)
        if key.startswith("strategy:"):
            s = self.strategies.get(key[9:])
            if s is None:
                return ""
            lines = [s.label(), "", "params: " + (", ".join(f"{k}={v}" for k, v in s.params.items()) or "-")]
            scored = sum(1 for n in s.nodes.values() if n.score is not None)
            lines.append(f"nodes: {len(s.nodes)} ({scored} scored, "
                         f"{sum(1 for n in s.nodes.values() if n.pruned)} pruned)")
            lines.append(f"rounds: {len(s.rounds)}")
            if s.end is not None:
                lines.append(f"answer: {s.end.get('answer')}  stopped: {s.end.get('stopped_reason')}")
            return "\n".join(lines)
        if key.startswith("stage:"):
            st = self.stages.get(key[6:])
            if st is None:
                return ""
            head = st.thinking.line() + "\n\n" if st.thinking else ""
            return head + json.dumps({"start": st.start, "end": st.end}, indent=2, default=str)
        start = self.starts[0] if self.starts else {}
        end = self.ends[-1] if self.ends else {}
        return "\n".join([self.run_label(), "", f"trace version: {self.version}",
                          f"events: {len(self.events)}  nodes: {len(self.nodes)}",
                          f"budget: {start.get('budget')}", f"usage: {end.get('usage')}",
                          *([self.thinking.line()] if self.thinking else [])])


def node_detail(n: Node, s: StrategyRun) -> str:
    """The detail pane of a node."""
    lines = [f"node #{n.node} of {s.name} (stage {s.stage})  parent #{n.parent}  step {n.step}"
             + ("  [terminal]" if n.terminal else "")]
    lines.append("score: " + fmt_num(n.score))
    others = [f"{k}={v:.4g}" for k, v in n.numbers.items() if k != "score"]
    if others:
        lines.append("numbers: " + "  ".join(others))
    if n.step_scores is not None:
        lines.append("step scores: " + ", ".join(f"{x:.3f}" for x in n.step_scores))
    lines.append(f"tokens: {n.tokens}")
    if "latency_s" in n.extra:
        lines.append(f"latency: {fmt_num(n.extra['latency_s'])} s")
    elif n.call is not None:
        lines.append(f"latency: {fmt_num(n.call.get('latency_s'))} s (the {n.call.get('role', '')} call to "
                     f"{n.call.get('model', '')} just before this node)")
    if "passed" in n.extra or "verdict" in n.extra:
        lines.append(f"verifier: passed={n.extra.get('passed')} {n.extra.get('verdict', '')}")
    for v in n.verdicts:
        lines.append(f"verdict: {v.get('verifier') or ''} passed={v.get('passed')} score={fmt_num(v.get('score'))}"
                     f" {short(v.get('detail', ''), 200)}")
    if n.selected:
        lines.append("selected: " + ", ".join(r or "(no reason given)" for r in n.selected))
    if n.pruned:
        lines.append("pruned: " + ", ".join(r or "(no reason given)" for r in n.pruned))
    lines += ["", "text:", n.text]
    return "\n".join(lines)


def event_line(e: dict[str, Any]) -> str:
    """One event in one line (leaves and the timeline)."""
    kind = e.get("kind")
    if kind == "budget_refused":
        return (f"⛔ budget refused ({e.get('role')}): {e.get('dimension')} needs {e.get('requested')}, "
                f"left {e.get('remaining')}")
    if kind in ("retry", "error"):
        return f"! {kind}: {short(e.get('error', ''), 80)}"
    if kind in ("verdict", "verify_round"):
        return (f"{'✔' if e.get('passed') else '✘'} {kind} {e.get('verifier') or ''} "
                f"score={fmt_num(e.get('score'))} {short(e.get('detail', ''), 50)}")
    if kind == "model_call":
        u = e.get("usage") if isinstance(e.get("usage"), dict) else {}
        return (f"{e.get('role', '')} call {e.get('model', '')} n={e.get('n')} in={u.get('input_tokens', 0)} "
                f"out={u.get('output_tokens', 0)} {fmt_num(e.get('latency_s'))}s")
    if kind == "thinking":
        return (f"thinking {e.get('thinking_tokens', 0)} + answer {e.get('answer_tokens', 0)} tok, "
                f"ended {e.get('ended', '?')}, forced {e.get('forced', 0)}  {short(e.get('thinking', ''), 40)}")
    if kind in ("node_added", "node_scored"):
        nums = " ".join(f"{k}={fmt_num(e[k])}" for k in NODE_NUMBERS if k in e)
        return f"{kind} #{e.get('node')} {nums} {short(e.get('text', ''), 40)}"
    skip = {"kind", "run_id", "t", "stage"}
    body = ", ".join(f"{k}={short(v, 30)}" for k, v in e.items() if k not in skip)
    return f"{kind} {short(body, 90)}"


class Follower:
    """Reads the complete lines appended to a trace file since the last read.

    A line still being written (no newline yet) waits for the next read; a
    file that shrank (rewritten) is read again from the start.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self.skipped = 0

    def read_new(self) -> list[dict[str, Any]]:
        """New events (unparseable lines are counted in ``skipped``)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        out = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                e = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                self.skipped += 1
                continue
            if isinstance(e, dict) and isinstance(e.get("kind"), str):
                out.append(e)
            else:
                self.skipped += 1
        return out
