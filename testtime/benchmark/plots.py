"""PNG plots of a benchmark report (matplotlib, Agg backend: no display needed).

* ``accuracy_vs_tokens.png`` -- accuracy (95% Wilson interval as error bars)
  against mean tokens per cell, log x, one line per strategy;
* ``accuracy_vs_usd.png`` -- the same against mean USD per cell (linear x
  with a note when every cell cost $0, e.g. local models);
* ``pass_at_k.png`` -- pass@k against k (log2 x) at each strategy's largest
  budget, one line per strategy, plus Best-of-Majority's pass@k (dashed)
  over best-of-N's samples (else those of the strategy that drew the most).

Each strategy keeps one colour (``tab10``) across the plots. ``plots.json``
lists every plot's lines (labels and colours), so tests and tools can check
a figure without parsing pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testtime.errors import MissingDependency

#: Strategy colours, in order of first appearance (matplotlib's tab10).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
BOM_COLOR = "#000000"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("matplotlib", "bench", "benchmark plots") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def colors_for(strategies: list[str]) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(strategies)}


def draw_all(report: dict[str, Any], directory: Path) -> list[Path]:
    """Draw every plot of ``report`` into ``directory``; returns the PNG paths."""
    plt = _pyplot()
    colors = colors_for(report["strategies"])
    meta: dict[str, Any] = {}
    paths = []
    for name, fn in (("accuracy_vs_tokens.png", _accuracy("mean_tokens", "mean tokens per cell (log)", True)),
                     ("accuracy_vs_usd.png", _accuracy("mean_usd", "mean USD per cell", False)),
                     ("pass_at_k.png", _pass_at_k)):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        lines = fn(ax, report, colors)
        ax.grid(True, alpha=0.3)
        if lines:
            ax.legend(fontsize=8, loc="best")
        ax.set_title(f"{report['dataset']} | {report.get('model')}", fontsize=9)
        fig.tight_layout()
        path = Path(directory) / name
        fig.savefig(path, format="png")
        plt.close(fig)
        meta[name] = {"lines": lines}
        paths.append(path)
    (Path(directory) / "plots.json").write_text(json.dumps(meta, indent=2) + "\n")
    return paths


def _accuracy(key: str, xlabel: str, log_x: bool) -> Any:
    def draw(ax: Any, report: dict[str, Any], colors: dict[str, str]) -> list[dict[str, str]]:
        lines = []
        all_x = [r[key] for r in report["rows"]]
        free = all(x <= 0 for x in all_x)
        for s in report["strategies"]:
            rows = sorted((r for r in report["rows"] if r["strategy"] == s), key=lambda r: r[key])
            if not rows:
                continue
            xs = [r[key] for r in rows]
            if log_x:
                xs = [max(x, 1e-9) for x in xs]
            ys = [r["accuracy"] for r in rows]
            err = [[y - r["ci_low"] for y, r in zip(ys, rows, strict=False)], [r["ci_high"] - y for y, r in zip(ys, rows, strict=False)]]
            ax.errorbar(xs, ys, yerr=err, color=colors[s], marker="o", linewidth=2, capsize=3, label=s)
            lines.append({"label": s, "color": colors[s]})
        if log_x and not free:
            ax.set_xscale("log")
        if free:
            ax.text(0.5, 0.02, "every cell cost $0 (free models): no USD axis to compare on",
                    transform=ax.transAxes, ha="center", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(-0.02, 1.02)
        return lines

    return draw


def _pass_at_k(ax: Any, report: dict[str, Any], colors: dict[str, str]) -> list[dict[str, str]]:
    lines = []
    best: dict[str, dict[str, Any]] = {}
    for p in report["pass_at_k"]:
        if p["k"]:
            best[p["strategy"]] = p  # budgets are in ascending order: the last is the largest
    for s in report["strategies"]:
        p = best.get(s)
        if p is None:
            continue
        ax.plot(p["k"], p["pass_at_k"], color=colors[s], marker="o", linewidth=2, label=f"{s} ({p['budget']})")
        lines.append({"label": s, "color": colors[s]})
    if best:
        # Best-of-N's samples carry the reward scores BoM ranks by; else the strategy that drew the most.
        src = best.get("best_of_n") or max(
            best.values(), key=lambda p: (p["mean_samples"], -report["strategies"].index(p["strategy"])))
        ax.plot(src["k"], src["bom_pass_at_k"], color=BOM_COLOR, linestyle="--", linewidth=1.5,
                label=f"best-of-majority over {src['strategy']}'s samples")
        lines.append({"label": f"best_of_majority[{src['strategy']}]", "color": BOM_COLOR})
        if max(max(p["k"]) for p in best.values()) > 1:
            ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    return lines
