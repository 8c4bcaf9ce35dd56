"""Reports drawn from the results store only: tables, JSON and plots.

:func:`summarize` turns the store's rows into the report dict
(``report.json``); :func:`markdown` renders it (``report.md``);
:func:`write_report` writes both and the plots (:mod:`testtime.benchmark.plots`).
``testtime bench report DIR`` calls :func:`write_report` on an existing store,
so a report can be redrawn at any time without running anything.

Per (strategy, budget): accuracy with its 95% Wilson interval, mean and total
tokens / USD / seconds, solve vs verify spend (usage by role), how many cells
ended on ``budget_exhausted``, and the mean and largest spend/limit ratio
(the largest must be <= 1). Across budgets: the tokens (and USD) each
strategy needs to reach best-of-N's accuracy at each of best-of-N's budgets,
as a ratio to what best-of-N spent (< 1: cheaper), interpolated on log-spend;
``n/a`` when the strategy never reaches it. Coverage: pass@k from the
samples each cell drew (unbiased estimator), and pass@k of Best-of-Majority
over the same samples.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from testtime.benchmark.stats import (
    bom_pass_at_k,
    cost_to_reach,
    ks_for,
    pass_at_k,
    wilson_interval,
)
from testtime.benchmark.store import ResultsStore
from testtime.budget import Budget

REFERENCE = "best_of_n"
#: Report keys that are wall-clock measurements (differ run to run; everything else is deterministic).
TIMING_KEYS = ("mean_seconds", "total_seconds")


def _budget_order(spec: str) -> tuple[str, float]:
    limits = Budget.parse(spec).limits()
    dim = next(iter(limits))
    return dim, float(limits[dim])


def _spend_ratio(row: dict[str, Any]) -> float:
    usage = row.get("usage") or {}
    worst = 0.0
    for dim, lim in Budget.parse(row["budget"]).limits().items():
        spent = float(row.get("seconds", 0.0)) if dim == "seconds" else float(usage.get(dim, 0.0))
        worst = max(worst, spent / lim if lim > 0 else 1.0)
    return worst


def _role_tokens(row: dict[str, Any], role: str) -> float:
    by_role = (row.get("usage") or {}).get("by_role") or {}
    return float((by_role.get(role) or {}).get("tokens", 0))


def summarize(rows: list[dict[str, Any]], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict for ``rows`` (one configuration's rows)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    strategies: list[str] = []
    for r in rows:
        groups[(r["strategy"], r["budget"])].append(r)
        if r["strategy"] not in strategies:
            strategies.append(r["strategy"])
    # A fixed order (the registry's, simplest first), not the order cells
    # happened to finish in: a resumed sweep draws the same report.
    from testtime.search.registry import STRATEGIES

    known = list(STRATEGIES)
    strategies.sort(key=lambda s: (known.index(s) if s in known else len(known), s))
    budgets = sorted({b for _, b in groups}, key=_budget_order)
    table = []
    for s in strategies:
        for b in budgets:
            g = groups.get((s, b))
            if not g:
                continue
            n = len(g)
            correct = sum(1 for r in g if r.get("correct"))
            lo, hi = wilson_interval(correct, n)
            tokens = [float(r["usage"].get("tokens", 0)) for r in g]
            usd = [float(r["usage"].get("usd", 0.0)) for r in g]
            secs = [float(r.get("seconds", 0.0)) for r in g]
            solve = sum(_role_tokens(r, "solve") for r in g)
            verify = sum(_role_tokens(r, "verify") for r in g)
            ratios = [_spend_ratio(r) for r in g]
            table.append({
                "strategy": s, "budget": b, "cells": n, "correct": correct,
                "ungraded": sum(1 for r in g if r.get("correct") is None),
                "accuracy": round(correct / n, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
                "mean_tokens": round(sum(tokens) / n, 1), "total_tokens": int(sum(tokens)),
                "mean_usd": round(sum(usd) / n, 8), "total_usd": round(sum(usd), 8),
                "mean_seconds": round(sum(secs) / n, 3), "total_seconds": round(sum(secs), 3),
                "solve_tokens": int(solve), "verify_tokens": int(verify),
                "other_tokens": int(sum(tokens) - solve - verify),
                "budget_exhausted": sum(1 for r in g if r.get("stopped_reason") == "budget_exhausted"),
                "mean_spend_ratio": round(sum(ratios) / n, 4), "max_spend_ratio": round(max(ratios), 4),
                "mean_samples": round(sum(len(r.get("samples") or []) for r in g) / n, 2),
                "problems": len({r["problem_id"] for r in g}), "seeds": sorted({int(r["seed"]) for r in g}),
            })
    return {
        "dataset": (config or {}).get("dataset") or (rows[0]["dataset"] if rows else ""),
        "model": (config or {}).get("model"), "config_hash": (config or {}).get("config_hash"),
        "cells": len(rows), "strategies": strategies, "budgets": budgets, "rows": table,
        "match_best_of_n": _match_reference(table, strategies),
        "pass_at_k": _pass_at_k(groups, strategies, budgets),
    }


def _match_reference(table: list[dict[str, Any]], strategies: list[str]) -> list[dict[str, Any]]:
    ref = [r for r in table if r["strategy"] == REFERENCE]
    if not ref:
        return []
    out = []
    for s in strategies:
        if s == REFERENCE:
            continue
        mine = [r for r in table if r["strategy"] == s]
        for b in ref:
            if b["accuracy"] <= 0:
                continue  # best-of-N solved nothing at this budget: reaching 0 says nothing
            entry: dict[str, Any] = {"strategy": s, "reference_budget": b["budget"],
                                     "target_accuracy": b["accuracy"]}
            for unit, key in (("tokens", "mean_tokens"), ("usd", "mean_usd")):
                need, exact = cost_to_reach([(r[key], r["accuracy"]) for r in mine], b["accuracy"])
                base = b[key]
                entry[f"{unit}_needed"] = None if need is None else round(need, 8 if unit == "usd" else 1)
                entry[f"{unit}_ratio"] = None if need is None or base <= 0 else round(need / base, 4)
                entry[f"{unit}_exact"] = exact
            out.append(entry)
    return out


def _pass_at_k(groups: dict[tuple[str, str], list[dict[str, Any]]], strategies: list[str],
               budgets: list[str]) -> list[dict[str, Any]]:
    out = []
    for s in strategies:
        for b in budgets:
            g = groups.get((s, b))
            if not g:
                continue
            draws = [(r.get("samples") or []) for r in g]
            # k runs up to the fewest samples any cell drew (a cell that drew
            # none covers nothing at any k), so every point averages the same cells.
            drawn = [len(d) for d in draws if d]
            ks, values, bom = ks_for(min(drawn) if drawn else 0), [], []
            for k in ks:
                values.append(round(sum(pass_at_k(len(d), sum(1 for x in d if x.get("correct")), k)
                                        for d in draws if d) / len(g), 4))
                bom.append(round(sum(bom_pass_at_k(d, k) for d in draws if d) / len(g), 4))
            out.append({"strategy": s, "budget": b, "k": ks, "pass_at_k": values, "bom_pass_at_k": bom,
                        "cells": len(g), "mean_samples": round(sum(len(d) for d in draws) / len(g), 2)})
    return out


# ------------------------------------------------------------------ markdown
def _fmt_ratio(entry: dict[str, Any], unit: str) -> str:
    ratio = entry.get(f"{unit}_ratio")
    if ratio is None:
        return "n/a"
    return f"{'' if entry.get(f'{unit}_exact') else '<= '}{ratio:.2f}x"


def markdown(report: dict[str, Any], *, plots: list[str] | None = None) -> str:
    """The report as Markdown tables."""
    lines = [f"# testtime bench: {report['dataset']}", "",
             f"model `{report.get('model')}`, config `{report.get('config_hash')}`, {report['cells']} cells "
             "(one cell = one problem x strategy x budget x seed).", "",
             "## Accuracy and spend per (strategy, budget)", "",
             "| strategy | budget | cells | accuracy | 95% CI | mean tokens | total tokens | mean $ | total $ "
             "| mean s | solve / verify tokens | budget hit | mean / max spend/limit |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['strategy']} | {r['budget']} | {r['cells']} | {r['accuracy']:.3f} | "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['mean_tokens']:,.0f} | {r['total_tokens']:,} | "
            f"{r['mean_usd']:.6f} | {r['total_usd']:.4f} | {r['mean_seconds']:.2f} | "
            f"{r['solve_tokens']:,} / {r['verify_tokens']:,} | {r['budget_exhausted']}/{r['cells']} | "
            f"{r['mean_spend_ratio']:.3f} / {r['max_spend_ratio']:.3f} |")
    match = report.get("match_best_of_n") or []
    lines += ["", f"## Spend to reach {REFERENCE}'s accuracy", ""]
    if not match:
        lines.append(f"(nothing to match: add {REFERENCE} and another strategy to --strategies; "
                     f"budgets where {REFERENCE} solved nothing are left out)")
    else:
        lines += ["Tokens (and $) a strategy needs to reach best-of-N's accuracy at each best-of-N budget, as a "
                  "ratio to what best-of-N spent there (< 1: cheaper; interpolated on log-spend; `<=`: already "
                  "reached at its smallest budget; n/a: never reached).", "",
                  f"| strategy | {REFERENCE} budget | target accuracy | tokens needed | token ratio | usd ratio |",
                  "|---|---|---:|---:|---:|---:|"]
        for m in match:
            need = "n/a" if m["tokens_needed"] is None else f"{m['tokens_needed']:,.0f}"
            lines.append(f"| {m['strategy']} | {m['reference_budget']} | {m['target_accuracy']:.3f} | {need} | "
                         f"{_fmt_ratio(m, 'tokens')} | {_fmt_ratio(m, 'usd')} |")
    lines += ["", "## Coverage: pass@k from the samples drawn", "",
              "Unbiased estimator 1 - C(n-c,k)/C(n,k) over each cell's n samples, for k up to the fewest samples "
              "a cell drew (a cell with none counts as 0); "
              "BoM: Best-of-Majority's top-k answers (threshold 0.2) over the same samples.", "",
              "| strategy | budget | mean samples | pass@k (k: value) | BoM pass@k |", "|---|---|---:|---|---|"]
    for p in report["pass_at_k"]:
        pk = ", ".join(f"{k}: {v:.3f}" for k, v in zip(p["k"], p["pass_at_k"], strict=False)) or "-"
        bk = ", ".join(f"{k}: {v:.3f}" for k, v in zip(p["k"], p["bom_pass_at_k"], strict=False)) or "-"
        lines.append(f"| {p['strategy']} | {p['budget']} | {p['mean_samples']:.1f} | {pk} | {bk} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(store: ResultsStore) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the PNG plots next to the store; returns the report."""
    from testtime.benchmark.plots import draw_all

    rows = [r for r in store.rows() if r.get("config_hash") == store.hash]
    report = summarize(rows, store.config)
    plots = draw_all(report, store.dir)
    report["plots"] = [Path(p).name for p in plots]
    (store.dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (store.dir / "report.md").write_text(markdown(report, plots=plots))
    return report


def without_timings(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` without wall-clock fields (what two runs of the same sweep agree on exactly)."""
    out = json.loads(json.dumps(report))
    for r in out.get("rows", []):
        for k in TIMING_KEYS:
            r.pop(k, None)
    return out
