"""``testtime trace browse FILE.jsonl``: an interactive trace browser (Textual).

A thin view over :class:`~testtime.trace.index.TraceIndex` (all the logic
lives there and is tested without Textual). Left: the collapsible tree run
-> stages -> strategies -> search nodes; right: the detail pane of the row
under the cursor; below: spend per stage and role, and a status line.

Keys: ``a`` the chosen answer, ``b`` the best-scored node, ``n`` the next
refused reservation or error, ``/`` filter by text or ``score>=0.8``
(``escape`` clears it), ``t`` timeline mode (``.``/``→`` next event,
``,``/``←`` previous, ``p`` play/pause), ``e`` expand all, ``q`` quit.
With ``follow=True`` the file is polled and new events join the tree as
they are written.

Needs the ``tui`` extra (``pip install "testtime[tui]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Input, Static, Tree
from textual.widgets.tree import TreeNode

from testtime.trace.index import Follower, Item, TraceIndex, event_line

_STYLE = {"run": "bold", "stage": "bold magenta", "strategy": "cyan", "event": "yellow"}


def _label(item: Item) -> Text:
    style = _STYLE.get(item.kind, "")
    if item.kind == "node":
        style = "bold green" if item.label.startswith("★") else ("dim" if item.label.startswith("✂") else "")
    return Text(item.label, style=style, no_wrap=True, overflow="ellipsis")


class TraceBrowser(App[None]):
    """Browse one trace file; ``follow`` keeps reading what is appended to it."""

    TITLE = "testtime trace browse"
    CSS = """
    #main { height: 1fr; }
    #tree { width: 3fr; }
    #detail-box { width: 2fr; border-left: solid $accent; }
    #spend { height: auto; max-height: 12; }
    #status { height: 1; background: $boost; }
    #filter { display: none; }
    #filter.shown { display: block; }
    """
    BINDINGS: ClassVar[list[Any]] = [
        Binding("a", "answer", "answer"),
        Binding("b", "best", "best score"),
        Binding("n", "incident", "next refusal/error"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear filter", show=False),
        Binding("t", "timeline", "timeline"),
        Binding("full_stop,right", "step(1)", "next event", show=False),
        Binding("comma,left", "step(-1)", "previous event", show=False),
        Binding("p", "play", "play/pause", show=False),
        Binding("e", "expand_all", "expand all"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, path: str | Path, *, follow: bool = False, poll_s: float = 0.25,
                 index: TraceIndex | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.follow = follow
        self.poll_s = poll_s
        self.follower = Follower(self.path)
        self.index = index if index is not None else TraceIndex()
        if index is None:
            for e in self.follower.read_new():
                self.index.add(e)
        else:
            self.follower.offset = self.path.stat().st_size if self.path.exists() else 0
        self.view = self.index
        self.filter: str | None = None
        self.timeline: int | None = None  # events shown in timeline mode
        self._incident = -1
        self._tnodes: dict[str, TreeNode[str]] = {}
        self._labels: dict[str, str] = {}
        self._playing = False
        #: The row the last jump went to (the cursor lands there at the next refresh).
        self.cursor_key: str | None = None

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield Tree(Text("run"), id="tree", data="run")
            with VerticalScroll(id="detail-box"):
                yield Static("", id="detail")
        yield Static("", id="spend")
        yield Input(placeholder="filter: text, or score>=0.8 / visits>3 / f<1.2 (enter applies, escape clears)",
                    id="filter")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        tree = self.query_one("#tree", Tree)
        self._tnodes["run"] = tree.root
        tree.root.expand()
        self.refresh_view()
        tree.focus()
        if self.follow:
            self.set_interval(self.poll_s, self.poll)

    # ------------------------------------------------------------ model -> widgets
    def refresh_view(self, *, rebuild: bool = False) -> None:
        """Bring the tree, spend panel and status line up to date with ``self.view``."""
        only = None
        if self.filter is not None and self.timeline is None:
            only = {n.key for n in self.view.search(self.filter)}
        items = self.view.items(only=only)
        tree = self.query_one("#tree", Tree)
        keys = {it.key for it in items}
        if rebuild or any(k not in keys for k in self._tnodes):
            tree.clear()
            self._tnodes = {"run": tree.root}
            self._labels = {}
        parents = {it.parent for it in items}
        for it in items:
            label = it.label
            node = self._tnodes.get(it.key)
            if node is None:
                host = self._tnodes.get(it.parent or "run", tree.root)
                node = host.add(_label(it), data=it.key, expand=it.kind in ("stage", "strategy")
                                or only is not None, allow_expand=it.key in parents)
                self._tnodes[it.key] = node
            elif self._labels.get(it.key) != label:
                node.set_label(_label(it))
            node.allow_expand = it.key in parents
            self._labels[it.key] = label
        self.query_one("#spend", Static).update(self._spend_table())
        self._status()
        if tree.cursor_node is not None and tree.cursor_node.data:
            self.show_detail(str(tree.cursor_node.data))

    def _spend_table(self) -> Table:
        # The thinking column and the thinking/answer split appear only when some call thought.
        thinking = self.view.thinking_tokens()
        summary = self.view.thinking
        table = Table(title="spend by stage and role", header_style="bold", expand=True,
                      caption=summary.line() if summary else None)
        cols = ("stage", "role", "calls", "input tok", "output tok", *(("thinking",) if thinking else ()),
                "usd", "call s")
        for col in cols:
            table.add_column(col, justify="left" if col in ("stage", "role") else "right")
        for stage, role, calls, tin, tout, usd, secs in self.view.spend_rows():
            think = (f"{thinking.get((stage, role), 0):,}",) if thinking else ()
            table.add_row(stage, role, str(calls), f"{tin:,}", f"{tout:,}", *think, f"${usd:.4f}", f"{secs:.2f}",
                          style="bold" if stage == "total" else "")
        return table

    def _status(self, extra: str = "") -> None:
        parts = [f"{len(self.index.events)} events, {len(self.index.nodes)} nodes, trace v{self.index.version}"]
        if self.follow:
            parts.append("following")
        if self.filter is not None:
            parts.append(f"filter {self.filter!r}: {len(self.view.search(self.filter))} match(es)")
        if self.timeline is not None:
            e = self.index.events[self.timeline - 1] if self.timeline else {}
            parts.append(f"timeline {self.timeline}/{len(self.index.events)}: "
                         + (event_line(e) if e else "(start)"))
        if extra:
            parts.append(extra)
        self.query_one("#status", Static).update(Text(" | ".join(parts), no_wrap=True, overflow="ellipsis"))

    def show_detail(self, key: str) -> None:
        self.query_one("#detail", Static).update(Text(self.view.detail(key)))

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[str]) -> None:
        if event.node.data:
            self.show_detail(str(event.node.data))

    def jump(self, key: str) -> bool:
        """Expand down to row ``key``, put the cursor on it and show its detail."""
        node = self._tnodes.get(key)
        if node is None:
            return False
        up = node.parent
        while up is not None:
            up.expand()
            up = up.parent
        tree = self.query_one("#tree", Tree)
        self.cursor_key = key
        # Rows of nodes just expanded get their line numbers at the next refresh.
        tree.call_after_refresh(self._cursor_to, node)
        self.show_detail(key)
        return True

    def _cursor_to(self, node: TreeNode[str]) -> None:
        tree = self.query_one("#tree", Tree)
        tree.move_cursor(node)
        tree.scroll_to_node(node, animate=False)

    # ------------------------------------------------------------ follow
    def poll(self) -> int:
        """Read what was appended to the file; returns the number of new events."""
        new = self.follower.read_new()
        for e in new:
            self.index.add(e)
        if new and self.timeline is None:
            self.refresh_view()
        elif new:
            self._status()
        return len(new)

    # ------------------------------------------------------------ actions
    def action_answer(self) -> None:
        n = self.view.answer_node()
        if n is None or not self.jump(f"node:{n.key}"):
            self._status("no chosen answer node in this trace")

    def action_best(self) -> None:
        n = self.view.best_node()
        if n is None or not self.jump(f"node:{n.key}"):
            self._status("no scored node in this trace")

    def action_incident(self) -> None:
        i = self.view.next_incident(self._incident)
        if i is None or not self.jump(f"event:{i}"):
            self._status("no refused reservation or error in this trace")
            return
        self._incident = i

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.apply_filter(event.value)
        self.query_one("#tree", Tree).focus()

    def apply_filter(self, query: str | None) -> None:
        """Show only nodes matching ``query`` (and their ancestors); None or '' shows all."""
        self.filter = query.strip() if query and query.strip() else None
        if self.filter is None:
            self.query_one("#filter", Input).remove_class("shown")
        self.refresh_view(rebuild=True)

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        self.apply_filter(None)
        self.query_one("#tree", Tree).focus()

    def action_timeline(self) -> None:
        """Toggle timeline mode: the tree as it stood after each event."""
        self._playing = False
        self.timeline = None if self.timeline is not None else min(1, len(self.index.events))
        self._set_timeline_view()

    def action_step(self, delta: int) -> None:
        if self.timeline is None:
            return
        self.timeline = max(0, min(len(self.index.events), self.timeline + delta))
        self._set_timeline_view()
        e = self.index.events[self.timeline - 1] if self.timeline else None
        if e is not None and e.get("kind") in ("node_added", "node_scored", "node_selected", "node_pruned"):
            s = next((s for s in self.view.strategies.values() if e.get("node") in s.nodes
                      and s.stage == (e.get("stage") or "(run)")), None)
            if s is not None:
                self.jump(f"node:{s.key}:{e.get('node')}")

    def action_play(self) -> None:
        if self.timeline is None:
            return
        self._playing = not self._playing
        if self._playing:
            self._tick()

    def _tick(self) -> None:
        if not self._playing or self.timeline is None or self.timeline >= len(self.index.events):
            self._playing = False
            return
        self.action_step(1)
        self.set_timer(0.15, self._tick)

    def _set_timeline_view(self) -> None:
        if self.timeline is None:
            self.view = self.index
        else:
            self.view = TraceIndex.from_events(self.index.events[: self.timeline])
        self.refresh_view(rebuild=True)

    def action_expand_all(self) -> None:
        self.query_one("#tree", Tree).root.expand_all()


def browse(path: str | Path, *, follow: bool = False) -> None:
    """Open the browser on ``path`` (blocks until the user quits)."""
    from testtime.errors import UserError

    p = Path(path)
    index = None
    if not follow:
        index = TraceIndex.from_file(p)
    elif p.exists() and not p.is_file():
        raise UserError(f"{p}: not a file")
    TraceBrowser(p, follow=follow, index=index).run()
