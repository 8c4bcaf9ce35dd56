"""``testtime trace render RUN.jsonl --png tree.png``: the search tree as a picture.

One marker per search node, laid out top-down (a tidy tree: leaves side by
side, each parent centred over its children; no graphviz needed), drawn
with networkx on matplotlib's Agg backend. Markers are coloured by score
(viridis, colour bar at the right; unscored nodes white), the chosen path
has thick dark edges and red rings, pruned nodes are smaller. Strategies of
a workflow sit side by side, each titled ``stage / strategy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from testtime.errors import UserError
from testtime.trace.index import Node, StrategyRun, TraceIndex

#: Figure width cap (inches): wider trees get smaller markers instead.
_MAX_WIDTH_IN = 60.0
_UNIT_IN = 0.45


@dataclass(slots=True)
class Drawn:
    """What was drawn: node count, the chosen path's node keys, positions in data units,
    and the main axes' box in image pixels ``(x0, y0, x1, y1)``, origin top-left."""

    nodes: int
    chosen: list[str]
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)
    axes_px: tuple[int, int, int, int] = (0, 0, 0, 0)
    size_px: tuple[int, int] = (0, 0)


def tidy_layout(s: StrategyRun, keep: set[str], x0: float = 0.0) -> tuple[dict[str, tuple[float, float]], float]:
    """Positions of ``s``'s kept nodes: leaves at consecutive x from ``x0``, parents centred,
    y = -depth. Returns (positions, next free x)."""
    pos: dict[str, tuple[float, float]] = {}
    nxt = x0

    def place(n: Node, depth: int) -> float:
        nonlocal nxt
        kids = [s.nodes[c] for c in n.children if s.nodes[c].key in keep]
        if not kids:
            x = nxt
            nxt += 1.0
        else:
            xs = [place(k, depth + 1) for k in kids]
            x = (xs[0] + xs[-1]) / 2
        pos[n.key] = (x, -float(depth))
        return x

    # Iterative deepening would be safer for very deep trees; search depth is bounded by max_steps.
    for r in s.roots:
        if s.nodes[r].key in keep:
            place(s.nodes[r], 0)
    return pos, nxt


def draw(index: TraceIndex, out: str | Path, *, fmt: str = "png", max_nodes: int = 2000,
         dpi: int = 100) -> Drawn:
    """Draw every strategy's nodes (the first ``max_nodes`` in trace order) to ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib import colormaps
        from matplotlib.colors import Normalize
    except ModuleNotFoundError as exc:
        raise UserError('`testtime trace render` needs matplotlib: pip install "testtime[bench]" '
                        "(or pip install matplotlib)") from exc
    import networkx as nx

    ordered = sorted(index.nodes.values(), key=lambda n: n.seq)[:max_nodes]
    if not ordered:
        raise UserError("the trace has no search nodes to draw (strategies that sample whole "
                        "solutions without a tree emit none)")
    keep = {n.key for n in ordered}
    # A kept node whose parent was cut off becomes a root of its drawing.
    positions: dict[str, tuple[float, float]] = {}
    titles: list[tuple[float, str]] = []
    x = 0.0
    for s in index.strategies.values():
        if not any(n.key in keep for n in s.nodes.values()):
            continue
        roots = [n.node for n in s.nodes.values() if n.key in keep
                 and (n.parent not in s.nodes or s.nodes[n.parent].key not in keep)]
        view = StrategyRun(s.key, s.stage, s.name, nodes=s.nodes, roots=sorted(roots, key=lambda i: s.nodes[i].seq))
        pos, nxt = tidy_layout(view, keep, x)
        positions.update(pos)
        titles.append(((x + nxt - 1) / 2, s.name if s.stage == "(run)" else f"{s.stage} / {s.name}"))
        x = nxt + 1.0
    g = nx.DiGraph()
    for n in ordered:
        g.add_node(n.key)
        s = index.strategies[n.strategy]
        if n.parent in s.nodes and s.nodes[n.parent].key in keep:
            g.add_edge(s.nodes[n.parent].key, n.key)
    chosen = [n.key for n in index.chosen_path() if n.key in keep]
    on_path = set(chosen)
    path_edges = [(a, b) for a, b in zip(chosen, chosen[1:], strict=False) if g.has_edge(a, b)]

    width_units = max(x - 1.0, 1.0)
    depth = max((-y for _, y in positions.values()), default=0.0) + 1
    unit = min(_UNIT_IN, (_MAX_WIDTH_IN - 2) / width_units)
    fig_w = max(4.0, unit * width_units + 2.0)
    fig_h = max(3.0, 0.8 * depth + 1.4)
    marker = max(2.0, unit * 72 * 0.6)  # diameter in points: 60% of the gap between leaves
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.5 / fig_w, 0.3 / fig_h, 1 - 1.7 / fig_w, 1 - 1.0 / fig_h))
    cax = fig.add_axes((1 - 0.9 / fig_w, 0.3 / fig_h, 0.15 / fig_w, 1 - 1.0 / fig_h))
    scores = [n.score for n in ordered if n.score is not None]
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    if 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(lo, hi)
    cmap = colormaps["viridis"]
    nodelist = [n.key for n in ordered]
    colors = [cmap(norm(n.score)) if n.score is not None else (1.0, 1.0, 1.0, 1.0) for n in ordered]
    sizes = [(marker * (0.7 if n.pruned and n.key not in on_path else 1.0)) ** 2 for n in ordered]
    edge_colors = ["#d62728" if k in on_path else "#555555" for k in nodelist]
    widths = [2.5 if k in on_path else 0.6 for k in nodelist]
    nx.draw_networkx_edges(g, positions, ax=ax, edge_color="#bbbbbb", width=0.8, arrows=False,
                           node_size=sizes, nodelist=nodelist)
    if path_edges:
        nx.draw_networkx_edges(g, positions, edgelist=path_edges, ax=ax, edge_color="#222222", width=2.5,
                               arrows=False, node_size=sizes, nodelist=nodelist)
    nx.draw_networkx_nodes(g, positions, nodelist=nodelist, node_color=colors, node_size=sizes,
                           edgecolors=edge_colors, linewidths=widths, ax=ax)
    for tx, title in titles:
        ax.text(tx, 0.6, title, ha="center", va="bottom", fontsize=9)
    ax.set_xlim(-0.8, width_units - 0.2)
    ax.set_ylim(-depth + 0.4, 1.1)
    ax.axis("off")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, cax=cax, label="score")
    run = index.starts[0] if index.starts else {}
    fig.suptitle(f"{run.get('strategy') or run.get('task') or 'trace'}: {len(ordered)} nodes"
                 + (f", chosen path of {len(chosen)}" if chosen else ""), fontsize=10, y=1 - 0.1 / fig_h,
                 va="top")
    fig.canvas.draw()
    w_px, h_px = fig.canvas.get_width_height()
    bb = ax.get_window_extent()
    axes_px = (int(bb.x0), int(h_px - bb.y1), int(bb.x1), int(h_px - bb.y0))
    try:
        fig.savefig(out, format=fmt, dpi=dpi)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)
    return Drawn(len(ordered), chosen, positions, axes_px, (w_px, h_px))


def render_file(path: str | Path, out: str | Path, *, fmt: str = "png", max_nodes: int = 2000) -> Drawn:
    """``trace render``: read ``path`` and draw it to ``out``."""
    if fmt not in ("png", "svg"):
        raise UserError(f"unknown picture format {fmt!r}: png or svg")
    return draw(TraceIndex.from_file(path), out, fmt=fmt, max_nodes=max_nodes)
