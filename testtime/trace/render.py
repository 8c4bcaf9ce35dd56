"""Render a JSONL trace as a rich tree: run -> stages -> strategies -> search nodes.

Used by ``testtime trace show FILE.jsonl``. Works on traces of plain runs
(no stages: everything sits under one ``(run)`` stage) and of workflows,
including resumed ones (one file appended by both processes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

RUN = "(run)"


@dataclass(slots=True)
class _Spend:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0

    def add(self, usage: dict[str, Any]) -> None:
        self.calls += int(usage.get("calls", 1))
        self.input_tokens += int(usage.get("input_tokens", 0))
        self.output_tokens += int(usage.get("output_tokens", 0))
        self.usd += float(usage.get("usd", 0.0))


@dataclass(slots=True)
class _Strategy:
    label: str
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    end: dict[str, Any] | None = None


@dataclass(slots=True)
class _Stage:
    name: str
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    items: list[Any] = field(default_factory=list)  # _Strategy or Text, in order
    spend: dict[str, _Spend] = field(default_factory=lambda: defaultdict(_Spend))
    current: _Strategy | None = None


def _fmt_score(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, (int, float)) else str(v))


def _short(v: Any, n: int = 60) -> str:
    s = " ".join(str(v).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def collect(events: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, _Stage]]:
    """Group events by stage; returns (run-level events, stages in order)."""
    stages: dict[str, _Stage] = {}
    runs: list[dict[str, Any]] = []

    def stage_of(e: dict[str, Any]) -> _Stage:
        name = e.get("stage") or RUN
        if name not in stages:
            stages[name] = _Stage(name)
        return stages[name]

    for e in events:
        kind = e.get("kind")
        if kind in ("run_start", "run_end", "run_resumed"):
            runs.append(e)
            continue
        if kind == "checkpoint":
            continue
        st = stage_of(e)
        if kind == "stage_start":
            st.start = e
        elif kind == "stage_end":
            st.end = e
        elif kind == "model_call":
            st.spend[e.get("role", "solve")].add(e.get("usage") or {})
        elif kind == "strategy_start":
            params = ", ".join(f"{k}={v}" for k, v in (e.get("params") or {}).items())
            st.current = _Strategy(f"{e.get('strategy')}" + (f" ({params})" if params else ""))
            st.items.append(st.current)
        elif kind == "strategy_end":
            if st.current is not None:
                st.current.end = e
        elif kind in ("node_added", "node_pruned", "node_selected"):
            if st.current is None:
                st.current = _Strategy("search")
                st.items.append(st.current)
            node = int(e.get("node", -1))
            if kind == "node_added":
                st.current.nodes[node] = dict(e)
                st.current.order.append(node)
            elif node in st.current.nodes:
                st.current.nodes[node]["pruned" if kind == "node_pruned" else "selected"] = True
        elif kind in ("verify_round", "verdict", "refine", "route", "budget_refused", "retry", "error",
                      "prm_scores", "search_round", "note"):
            st.items.append((kind, _leaf(e)))
    for st in stages.values():
        if any(isinstance(i, tuple) and i[0] == "verify_round" for i in st.items):
            # The workflow's verify loop reports each round; the verifier's own
            # verdict events would repeat them.
            st.items = [i for i in st.items if not (isinstance(i, tuple) and i[0] == "verdict")]
    return runs, stages


def _leaf(e: dict[str, Any]) -> Text:
    kind = e["kind"]
    if kind in ("verify_round", "verdict"):
        ok = e.get("passed")
        style = "green" if ok else "red"
        rnd = f" round {e['round']}" if "round" in e else ""
        return Text.assemble(("✔ " if ok else "✘ ", style), f"{kind}{rnd} {e.get('verifier') or ''} "
                             f"score={_fmt_score(e.get('score'))} ", (_short(e.get("detail", ""), 50), "dim"))
    if kind == "refine":
        return Text(f"↻ refine round {e.get('round')}", style="yellow")
    if kind == "route":
        return Text(f"→ route to {e.get('target')}", style="magenta")
    if kind == "budget_refused":
        return Text(f"⛔ budget refused ({e.get('role')}): {e.get('dimension')} needs "
                    f"{e.get('requested')}, left {e.get('remaining')}", style="red")
    if kind in ("retry", "error"):
        return Text(f"! {kind}: {_short(e.get('error', ''), 80)}", style="red")
    if kind == "search_round":
        return Text(f"round {e.get('round')}: alive={e.get('alive')} best={_fmt_score(e.get('best_score'))}",
                    style="dim")
    if kind == "prm_scores":
        return Text(f"prm {e.get('prm', '')} aggregate={_fmt_score(e.get('aggregate'))}", style="dim")
    return Text(f"{kind}: {_short(e.get('message', e), 80)}", style="dim")


def _strategy_tree(parent: Tree, s: _Strategy, max_nodes: int) -> None:
    label = Text.assemble(("strategy ", "bold"), (s.label, "cyan"))
    if s.end is not None:
        label.append(f"  answer={_short(s.end.get('answer'), 30)} ({s.end.get('stopped_reason')})", style="dim")
    branch = parent.add(label)
    shown: dict[int, Tree] = {}
    for count, node in enumerate(s.order):
        if count >= max_nodes:
            branch.add(Text(f"… {len(s.order) - max_nodes} more nodes (use --max-nodes)", style="dim"))
            break
        d = s.nodes[node]
        style = "dim strike" if d.get("pruned") else ("bold green" if d.get("selected") else "")
        mark = "★ " if d.get("selected") else ("✂ " if d.get("pruned") else "")
        txt = Text(f"{mark}#{node} step {d.get('step')} score={_fmt_score(d.get('score'))} "
                   f"tok={d.get('tokens', 0)}{' [end]' if d.get('terminal') else ''} ", style=style)
        txt.append(_short(d.get("text", ""), 50), style="dim")
        host = shown.get(d.get("parent"), branch)
        shown[node] = host.add(txt)


def build_tree(events: Iterable[dict[str, Any]], *, max_nodes: int = 40) -> Tree:
    """The run as a rich Tree."""
    runs, stages = collect(events)
    start = next((e for e in runs if e["kind"] == "run_start"), {})
    end = next((e for e in reversed(runs) if e["kind"] == "run_end"), {})
    title = start.get("task") or _short(start.get("question", ""), 50) or "run"
    label = Text.assemble(("run ", "bold"), (str(start.get("run_id", "?")), "bold blue"), f"  {title}")
    if end:
        label.append(f"  answer={_short(end.get('answer'), 30)} ({end.get('stopped_reason')})", style="green")
    resumes = sum(1 for e in runs if e["kind"] == "run_resumed")
    if resumes:
        label.append(f"  resumed ×{resumes}", style="yellow")
    tree = Tree(label)
    for st in stages.values():
        if st.name == RUN:
            branch = tree
        else:
            s0 = st.start or {}
            lab = Text.assemble(("stage ", "bold"), (st.name, "bold magenta"),
                                f"  {s0.get('model', '')} / {s0.get('strategy', '')}")
            if st.end:
                lab.append(f"  answer={_short(st.end.get('answer'), 30)} score={_fmt_score(st.end.get('score'))}"
                           f" rounds={st.end.get('rounds')} ({st.end.get('stopped_reason')})", style="green")
            else:
                lab.append("  (did not finish)", style="yellow")
            branch = tree.add(lab)
        for item in st.items:
            if isinstance(item, _Strategy):
                _strategy_tree(branch, item, max_nodes)
            else:
                branch.add(item[1])
        calls = sum(s.calls for s in st.spend.values())
        if calls:
            toks = sum(s.input_tokens + s.output_tokens for s in st.spend.values())
            branch.add(Text(f"{calls} model call(s), {toks:,} tokens", style="dim"))
    return tree


def budget_table(events: Iterable[dict[str, Any]]) -> Table:
    """Spend per stage and role (from model_call events), with stage budgets."""
    _, stages = collect(events)
    table = Table(title="Budget by stage and role", header_style="bold")
    for col in ("stage", "role", "calls", "input tok", "output tok", "tokens", "usd", "stage budget"):
        table.add_column(col, justify="left" if col in ("stage", "role", "stage budget") else "right")
    totals: dict[str, _Spend] = defaultdict(_Spend)
    for st in stages.values():
        budget = ",".join(f"{k}={v:g}" for k, v in ((st.start or {}).get("budget") or {}).items()) or "-"
        for i, (role, s) in enumerate(sorted(st.spend.items())):
            table.add_row(st.name if i == 0 else "", role, str(s.calls), f"{s.input_tokens:,}",
                          f"{s.output_tokens:,}", f"{s.input_tokens + s.output_tokens:,}", f"${s.usd:.4f}",
                          budget if i == 0 else "")
            t = totals[role]
            t.calls += s.calls
            t.input_tokens += s.input_tokens
            t.output_tokens += s.output_tokens
            t.usd += s.usd
    for i, (role, s) in enumerate(sorted(totals.items())):
        table.add_row("total" if i == 0 else "", role, str(s.calls), f"{s.input_tokens:,}", f"{s.output_tokens:,}",
                      f"{s.input_tokens + s.output_tokens:,}", f"${s.usd:.4f}", "", style="bold")
    return table


def render(events: list[dict[str, Any]], *, max_nodes: int = 40) -> Group:
    """Tree + budget table + the run's limits."""
    start = next((e for e in events if e.get("kind") == "run_start"), {})
    limits = ", ".join(f"{k}={v:g}" for k, v in (start.get("budget") or {}).items()) or "unlimited"
    return Group(build_tree(events, max_nodes=max_nodes), budget_table(events),
                 Text.assemble(("global budget: ", "bold"), limits))


def show(path: str, *, console: Console | None = None, max_nodes: int = 40) -> None:
    from testtime.trace.jsonl import read_events

    (console or Console()).print(render(read_events(path), max_nodes=max_nodes))
