"""Render a trace as a rich tree: run -> stages -> strategies -> search nodes.

Used by ``testtime trace show FILE.jsonl`` (a finished trace, every node up to
``--max-nodes``) and by the live view of ``testtime run`` (the same tree, fed
one event at a time and drawn within a number of screen lines). Both go
through :class:`TraceTree`: :meth:`TraceTree.add` does constant work per
event, and the tree is only built when someone draws it. Works on traces of
plain runs (no stages: everything sits under one ``(run)`` stage) and of
workflows, including resumed ones (one file appended by both processes).
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

from testtime.trace.numbers import number
from testtime.trace.thinking import ThinkingSummary

RUN = "(run)"

#: Event kinds drawn as one-line leaves under their stage.
LEAF_KINDS = frozenset({"verify_round", "verdict", "refine", "route", "budget_refused", "retry", "error",
                        "prm_scores", "search_round", "note"})
#: Leaves the live view leaves out: they come once per PRM call or round, and
#: the strategy's label already shows the latest round.
_LIVE_SKIP = frozenset({"prm_scores", "search_round"})
#: Node fields kept per node (the trace's text is cut to what is ever drawn).
_NODE_KEYS = ("node", "parent", "step", "score", "tokens", "terminal")
#: A strategy's own numbers on a node (MCTS visits/Q/prior, A* f/g/h, PF
#: weight), printed after the score; ``node_scored`` events update them.
_NODE_NUMBERS = ("score", "visits", "q", "prior", "f", "g", "h", "weight")
_TOP = 3


@dataclass(slots=True)
class _Spend:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    #: The part of ``output_tokens`` spent thinking (``usage.reasoning_tokens``).
    reasoning_tokens: int = 0

    def add(self, usage: dict[str, Any]) -> None:
        """Add one call's ``usage``; a field that is not a finite number counts as 0."""
        self.calls += int(number(usage.get("calls", 1)) or 0)
        self.input_tokens += int(number(usage.get("input_tokens", 0)) or 0)
        self.output_tokens += int(number(usage.get("output_tokens", 0)) or 0)
        self.usd += number(usage.get("usd", 0.0)) or 0.0
        self.reasoning_tokens += int(number(usage.get("reasoning_tokens")) or 0)


@dataclass(slots=True)
class _Strategy:
    label: str
    name: str = ""
    params: str = ""
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    end: dict[str, Any] | None = None
    #: The best few nodes by score, best first (kept as nodes arrive).
    top: list[tuple[float, int]] = field(default_factory=list)
    pruned: int = 0
    round: dict[str, Any] | None = None

    def add_node(self, e: dict[str, Any]) -> None:
        node = int(e.get("node", -1))
        d = {k: e.get(k) for k in _NODE_KEYS}
        d.update((k, e[k]) for k in _NODE_NUMBERS[1:] if _real(e.get(k)))
        d["text"] = str(e.get("text", ""))[:120]
        if node not in self.nodes:
            self.order.append(node)
        self.nodes[node] = d
        self._rank(node, d.get("score"))

    def score_node(self, e: dict[str, Any]) -> None:
        """Apply a ``node_scored`` event: its numbers overwrite the node's."""
        node = int(e.get("node", -1))
        d = self.nodes.get(node)
        if d is None:
            return
        for k in _NODE_NUMBERS:
            if _real(e.get(k)):
                d[k] = e[k]
        if "score" in e:
            self._rank(node, d.get("score"))

    def _rank(self, node: int, score: Any) -> None:
        n = number(score)
        if n is not None:
            top = [t for t in self.top if t[1] != node]
            top.append((n, node))
            top.sort(key=lambda t: (-t[0], t[1]))
            self.top = top[:_TOP]

    def mark(self, node: int, what: str) -> None:
        d = self.nodes.get(node)
        if d is None:
            return
        if what == "pruned" and not d.get("pruned"):
            self.pruned += 1
        d[what] = True


@dataclass(slots=True)
class _Stage:
    name: str
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    #: _Strategy or (kind, event), in order (what ``trace show`` draws).
    items: list[Any] = field(default_factory=list)
    spend: dict[str, _Spend] = field(default_factory=lambda: defaultdict(_Spend))
    current: _Strategy | None = None
    strategies: list[_Strategy] = field(default_factory=list)
    #: Leaves the live view may draw (indices into ``items``).
    live_leaves: list[int] = field(default_factory=list)
    #: The workflow's verify loop reports each round; the verifier's own
    #: verdict events would repeat them, so verdicts are then not drawn.
    has_verify_rounds: bool = False
    #: Sums of the stage's ``thinking`` events.
    thinking: ThinkingSummary = field(default_factory=ThinkingSummary)

    def strategy(self, name: str, params: str = "") -> _Strategy:
        s = _Strategy(name + (f" ({params})" if params else ""), name=name, params=params)
        self.current = s
        self.strategies.append(s)
        self.items.append(s)
        return s

    def leaf_shown(self, kind: str) -> bool:
        return not (kind == "verdict" and self.has_verify_rounds)


def _fmt_score(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        try:
            return f"{v:.3f}"
        except OverflowError:  # an int too large for a float
            return _short(v, 20)
    return str(v)


def _numbers(d: dict[str, Any]) -> str:
    """A node's strategy numbers: ``N=3 Q=0.812 `` (MCTS), ``f=.. g=.. h=.. `` (A*), ``w=.. `` (PF)."""
    out = ""
    if "visits" in d:
        out += f"N={int(d['visits'])} "
    for key, name in (("q", "Q"), ("prior", "P"), ("f", "f"), ("g", "g"), ("h", "h"), ("weight", "w")):
        if key in d:
            out += f"{name}={d[key]:.3f} "
    return out


def _short(v: Any, n: int = 60) -> str:
    s = " ".join(str(v).split())
    return s if len(s) <= n else s[: n - 1] + "…"


class TraceTree:
    """Events grouped into run -> stages -> strategies -> nodes, as they arrive.

    ``add`` takes event dicts (``TraceEvent.to_dict()`` or JSONL records) and
    does constant work per event; :meth:`tree` draws everything (``trace
    show``) and :meth:`live_tree` draws within a number of lines (the live
    view).
    """

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.stages: dict[str, _Stage] = {}
        self.nodes = 0
        #: Sums of every ``thinking`` event of the trace.
        self.thinking = ThinkingSummary()

    @classmethod
    def from_events(cls, events: Iterable[dict[str, Any]]) -> TraceTree:
        tt = cls()
        for e in events:
            tt.add(e)
        return tt

    def _stage(self, e: dict[str, Any]) -> _Stage:
        name = e.get("stage") or RUN
        st = self.stages.get(name)
        if st is None:
            st = self.stages[name] = _Stage(name)
        return st

    def add(self, e: dict[str, Any]) -> None:
        """Take one event."""
        kind = e.get("kind")
        if kind in ("run_start", "run_end", "run_resumed"):
            self.runs.append(e)
            return
        if kind == "checkpoint":
            return
        st = self._stage(e)
        if kind == "stage_start":
            st.start = e
        elif kind == "stage_end":
            st.end = e
        elif kind == "model_call":
            st.spend[e.get("role", "solve")].add(e.get("usage") or {})
        elif kind == "thinking":
            st.thinking.add(e)
            self.thinking.add(e)
        elif kind == "strategy_start":
            params = ", ".join(f"{k}={v}" for k, v in (e.get("params") or {}).items())
            st.strategy(f"{e.get('strategy')}", params)
        elif kind == "strategy_end":
            if st.current is not None:
                st.current.end = e
        elif kind in ("node_added", "node_pruned", "node_selected", "node_scored"):
            cur = st.current or st.strategy("search")
            if kind == "node_added":
                cur.add_node(e)
                self.nodes += 1
            elif kind == "node_scored":
                cur.score_node(e)
            else:
                cur.mark(int(e.get("node", -1)), "pruned" if kind == "node_pruned" else "selected")
        elif kind in LEAF_KINDS:
            if kind == "verify_round":
                st.has_verify_rounds = True
            elif kind == "search_round" and st.current is not None:
                st.current.round = e
            if kind not in _LIVE_SKIP:
                st.live_leaves.append(len(st.items))
            st.items.append((kind, e))

    # ------------------------------------------------------------- labels
    def _run_label(self) -> Text:
        start = next((e for e in self.runs if e["kind"] == "run_start"), {})
        end = next((e for e in reversed(self.runs) if e["kind"] == "run_end"), {})
        title = start.get("task") or _short(start.get("question", ""), 50) or "run"
        label = Text.assemble(("run ", "bold"), (str(start.get("run_id", "?")), "bold blue"), f"  {title}")
        if end:
            label.append(f"  answer={_short(end.get('answer'), 30)} ({end.get('stopped_reason')})", style="green")
        resumes = sum(1 for e in self.runs if e["kind"] == "run_resumed")
        if resumes:
            label.append(f"  resumed ×{resumes}", style="yellow")
        return label

    @staticmethod
    def _stage_label(st: _Stage, *, live: bool = False) -> Text:
        s0 = st.start or {}
        lab = Text.assemble(("stage ", "bold"), (st.name, "bold magenta"),
                            f"  {s0.get('model', '')} / {s0.get('strategy', '')}")
        if st.end:
            lab.append(f"  answer={_short(st.end.get('answer'), 30)} score={_fmt_score(st.end.get('score'))}"
                       f" rounds={st.end.get('rounds')} ({st.end.get('stopped_reason')})", style="green")
        else:
            lab.append("  (running)" if live else "  (did not finish)", style="yellow")
        return lab

    @staticmethod
    def _strategy_label(s: _Strategy, *, live: bool = False) -> Text:
        if not live:
            label = Text.assemble(("strategy ", "bold"), (s.label, "cyan"))
            if s.end is not None:
                label.append(f"  answer={_short(s.end.get('answer'), 30)} ({s.end.get('stopped_reason')})",
                             style="dim")
            return label
        # Live rows are cut at the terminal's width: progress first, parameters last.
        label = Text.assemble(("strategy ", "bold"), (s.name, "cyan"))
        if s.end is not None:
            label.append(f"  answer={_short(s.end.get('answer'), 30)} ({s.end.get('stopped_reason')})",
                         style="green")
        elif s.round is not None:
            r = s.round
            label.append(f"  round {r.get('round')}: alive={r.get('alive')} best={_fmt_score(r.get('best_score'))}",
                         style="yellow")
        if s.order:
            label.append(f"  {len(s.order)} node(s)")
        # Unset parameters say nothing while watching.
        params = ", ".join(p for p in s.params.split(", ") if p and not p.endswith("=None"))
        if params:
            label.append(f"  ({params})", style="dim")
        return label

    @staticmethod
    def _spend_line(st: _Stage) -> Text | None:
        calls = sum(s.calls for s in st.spend.values())
        if not calls:
            return None
        toks = sum(s.input_tokens + s.output_tokens for s in st.spend.values())
        return Text(f"{calls} model call(s), {toks:,} tokens", style="dim")

    @staticmethod
    def _node_text(d: dict[str, Any], *, best: bool = False, orphan: bool = False) -> Text:
        style = "dim strike" if d.get("pruned") else ("bold green" if d.get("selected") else "")
        mark = "★ " if d.get("selected") else ("✂ " if d.get("pruned") else "")
        txt = Text()
        if orphan:
            txt.append(f"#{d.get('parent')} → ", style="dim")
        txt.append(f"{mark}#{d.get('node')} step {d.get('step')} score={_fmt_score(d.get('score'))} "
                   f"{_numbers(d)}tok={d.get('tokens') or 0}{' [end]' if d.get('terminal') else ''} ", style=style)
        if best:
            txt.append("◀ best ", style="bold yellow")
        txt.append(_short(d.get("text", ""), 50), style="dim")
        return txt

    # ------------------------------------------------------ the full tree
    def tree(self, *, max_nodes: int = 40) -> Tree:
        """Everything (``trace show``): the first ``max_nodes`` nodes per strategy."""
        tree = Tree(self._run_label())
        for st in self.stages.values():
            branch = tree if st.name == RUN else tree.add(self._stage_label(st))
            for item in st.items:
                if isinstance(item, _Strategy):
                    self._full_strategy(branch, item, max_nodes)
                elif st.leaf_shown(item[0]):
                    branch.add(leaf(item[1]))
            spend = self._spend_line(st)
            if spend is not None:
                branch.add(spend)
            if st.thinking and st.name != RUN:  # the run's own line follows the tree
                branch.add(Text(st.thinking.line(), style="dim"))
        return tree

    def _full_strategy(self, parent: Tree, s: _Strategy, max_nodes: int) -> None:
        branch = parent.add(self._strategy_label(s))
        shown: dict[Any, Tree] = {}
        for count, node in enumerate(s.order):
            if count >= max_nodes:
                branch.add(Text(f"… {len(s.order) - max_nodes} more nodes (use --max-nodes)", style="dim"))
                break
            d = s.nodes[node]
            host = shown.get(d.get("parent"), branch)
            shown[node] = host.add(self._node_text(d))

    # ------------------------------------------------------ the live tree
    def live_tree(self, max_lines: int = 20) -> Tree:
        """The tree within about ``max_lines`` one-line rows (the live view).

        Finished stages fold into their label line; running stages share the
        rows left; in a stage only the last strategy shows its nodes, picked
        as the best few by score plus the most recent, with a ``+M more``
        row. Work is bounded by ``max_lines`` and the number of stages, not
        by how many events came in.
        """
        def row(t: Text) -> Text:
            t.no_wrap = True
            t.overflow = "ellipsis"
            return t

        tree = Tree(row(self._run_label()))
        left = max(max_lines - 1, 3)
        stages = list(self.stages.values())
        finished = [st for st in stages if st.end is not None and st.name != RUN]
        running = [st for st in stages if st.end is None or st.name == RUN]
        if finished and not running and left // len(finished) >= 3:
            # All done and room enough: every stage shows its last strategy's nodes.
            for i, st in enumerate(finished):
                left -= self._live_stage(tree, st, left // (len(finished) - i), row)
            return tree
        # Finished stages take one row each, but leave most rows to the work in progress.
        keep = len(finished) if not running else min(len(finished), max(1, left // 4))
        if len(finished) > keep:
            tree.add(row(Text(f"… {len(finished) - keep} earlier stage(s) done", style="dim")))
            left -= 1
        for st in finished[len(finished) - keep:]:
            tree.add(row(self._stage_label(st, live=True)))
            left -= 1
        for i, st in enumerate(running):
            share = max(left // (len(running) - i), 2)
            left -= self._live_stage(tree, st, share, row)
        return tree

    def _live_stage(self, tree: Tree, st: _Stage, lines: int, row: Any) -> int:
        """Draw one running stage in ``lines`` rows; returns the rows used."""
        used = 0
        if st.name == RUN:
            branch = tree
        else:
            branch = tree.add(row(self._stage_label(st, live=True)))
            used += 1
        spend = self._spend_line(st)
        leaves = [st.items[i] for i in st.live_leaves[-2:] if st.leaf_shown(st.items[i][0])]
        reserve = (spend is not None) + len(leaves)
        earlier = st.strategies[:-1]
        if earlier:
            branch.add(row(Text(f"… {len(earlier)} earlier strateg{'y' if len(earlier) == 1 else 'ies'}: "
                                + ", ".join(s.name for s in earlier[-3:]), style="dim")))
            used += 1
        if st.strategies:
            s = st.strategies[-1]
            sb = branch.add(row(self._strategy_label(s, live=True)))
            used += 1
            used += self._live_nodes(sb, s, max(lines - used - reserve, 1), row)
        for _kind, e in leaves:
            branch.add(row(leaf(e)))
        if spend is not None:
            branch.add(row(spend))
        return used + reserve

    def _live_nodes(self, branch: Tree, s: _Strategy, lines: int, row: Any) -> int:
        """Up to ``lines`` rows of nodes: the best few plus the latest."""
        total = len(s.order)
        if total == 0:
            return 0
        if total <= lines:
            chosen = list(s.order)
        else:
            slots = max(lines - 1, 1)  # one row says how many are hidden
            best = [n for _, n in s.top[: max(1, min(_TOP, slots // 3))]]
            recent: list[int] = []
            for n in reversed(s.order):
                if len(recent) + len(best) >= slots:
                    break
                if n not in best:
                    recent.append(n)
            picked = set(best) | set(recent)
            # Node ids grow as nodes are added: sorting by id keeps the tree's order.
            chosen = sorted(picked, key=lambda n: (n if isinstance(n, int) else 0))
        best_id = s.top[0][1] if s.top else None
        shown: dict[Any, Tree] = {}
        for node in chosen:
            d = s.nodes[node]
            parent = d.get("parent")
            host = shown.get(parent)
            text = self._node_text(d, best=node == best_id and total > 1,
                                   orphan=host is None and parent not in (None, 0))
            shown[node] = (host or branch).add(row(text))
        hidden = total - len(chosen)
        if hidden > 0:
            branch.add(row(Text(f"+{hidden} more node(s), {s.pruned} pruned in all", style="dim")))
            return len(chosen) + 1
        return len(chosen)


def collect(events: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, _Stage]]:
    """Group events by stage; returns (run-level events, stages in order)."""
    tt = TraceTree.from_events(events)
    return tt.runs, tt.stages


def leaf(e: dict[str, Any]) -> Text:
    """One event drawn as a one-line leaf."""
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


def build_tree(events: Iterable[dict[str, Any]], *, max_nodes: int = 40) -> Tree:
    """The run as a rich Tree."""
    return TraceTree.from_events(events).tree(max_nodes=max_nodes)


def budget_table(events: Iterable[dict[str, Any]]) -> Table:
    """Spend per stage and role (from model_call events), with stage budgets."""
    return _budget_table(collect(events)[1])


def _budget_table(stages: dict[str, _Stage]) -> Table:
    table = Table(title="Budget by stage and role", header_style="bold")
    # A "thinking" column (the part of output tokens spent thinking) only when some call thought.
    thinks = any(s.reasoning_tokens > 0 for st in stages.values() for s in st.spend.values())
    cols = ("stage", "role", "calls", "input tok", "output tok", *(("think tok",) if thinks else ()),
            "tokens", "usd", "stage budget")
    for col in cols:
        table.add_column(col, justify="left" if col in ("stage", "role", "stage budget") else "right")

    def cells(s: _Spend) -> list[str]:
        return [str(s.calls), f"{s.input_tokens:,}", f"{s.output_tokens:,}",
                *((f"{s.reasoning_tokens:,}",) if thinks else ()),
                f"{s.input_tokens + s.output_tokens:,}", f"${s.usd:.4f}"]

    totals: dict[str, _Spend] = defaultdict(_Spend)
    for st in stages.values():
        budget = ",".join(f"{k}={v:g}" for k, v in ((st.start or {}).get("budget") or {}).items()) or "-"
        for i, (role, s) in enumerate(sorted(st.spend.items())):
            table.add_row(st.name if i == 0 else "", role, *cells(s), budget if i == 0 else "")
            t = totals[role]
            t.calls += s.calls
            t.input_tokens += s.input_tokens
            t.output_tokens += s.output_tokens
            t.usd += s.usd
            t.reasoning_tokens += s.reasoning_tokens
    for i, (role, s) in enumerate(sorted(totals.items())):
        table.add_row("total" if i == 0 else "", role, *cells(s), "", style="bold")
    return table


def render(events: list[dict[str, Any]], *, max_nodes: int = 40) -> Group:
    """Tree + the thinking/answer split (if any call thought) + budget table + the run's limits."""
    start = next((e for e in events if e.get("kind") == "run_start"), {})
    limits = ", ".join(f"{k}={v:g}" for k, v in (start.get("budget") or {}).items()) or "unlimited"
    tt = TraceTree.from_events(events)
    parts: list[Any] = [tt.tree(max_nodes=max_nodes)]
    if tt.thinking:
        parts.append(Text(tt.thinking.line(), style="cyan"))
    parts += [_budget_table(tt.stages), Text.assemble(("global budget: ", "bold"), limits)]
    return Group(*parts)


def _real(v: Any) -> bool:
    """A finite number that is not a bool (a node's score, visits, f, a budget's limit, ...)."""
    return number(v) is not None


def check_event(e: dict[str, Any]) -> str | None:
    """None if the renderer can draw ``e``, else which field has the wrong type.

    ``trace show`` skips such events (a hand-edited or foreign trace) instead
    of failing on them. Only what :class:`TraceTree` and the budget lines
    cannot take is checked here, and a usage count that is not a number (the
    line is skipped and counted, so the user sees the trace is damaged).
    """
    kind = e.get("kind")
    if kind in ("node_added", "node_pruned", "node_selected", "node_scored"):
        node = e.get("node")
        if isinstance(node, bool) or not isinstance(node, int):
            return "'node' is not an integer"
        parent = e.get("parent")
        if parent is not None and (isinstance(parent, bool) or not isinstance(parent, int)):
            return "'parent' is not an integer"
    if "role" in e and not isinstance(e["role"], str):
        return "'role' is not a string"
    usage = e.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            return "'usage' is not an object"
        if any(k in usage and not _real(usage[k])
               for k in ("calls", "input_tokens", "output_tokens", "usd", "reasoning_tokens")):
            return "'usage' has a non-numeric count"
    for key in ("params", "budget"):
        value = e.get(key)
        if value is not None and not isinstance(value, dict):
            return f"'{key}' is not an object"
    budget = e.get("budget")
    if isinstance(budget, dict) and not all(_real(v) for v in budget.values()):
        return "'budget' has a non-numeric limit"
    return None


def show(path: str, *, console: Console | None = None, max_nodes: int = 40) -> list[tuple[int, str]]:
    """Print the trace at ``path``; returns the skipped lines ``(line, why)``.

    Unreadable lines are skipped; a trace without a single readable event
    is a :class:`~testtime.errors.UserError` naming the first bad line.
    """
    from testtime.errors import UserError
    from testtime.trace.jsonl import load_events

    events, skipped = load_events(path, check=check_event)
    if not events:
        if skipped:
            lineno, why = skipped[0]
            raise UserError(f"{path}: no readable trace events, {len(skipped)} line(s) skipped "
                            f"(first: {path}:{lineno}: {why})")
        raise UserError(f"{path}: empty trace, no events")
    (console or Console()).print(render(events, max_nodes=max_nodes))
    return skipped
