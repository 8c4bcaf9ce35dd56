"""Fit ``--strategy auto``'s policy table from a bench results store.

Compute-optimal scaling per difficulty ("Scaling LLM Test-Time Compute
Optimally can be More Effective than Scaling Model Parameters", Snell et al.):
estimate how hard a question is from a few cheap probe samples, then use the
strategy that did best *on questions that looked like that* at that budget.

:func:`fit_table` reads rows of a ``results.jsonl`` store (one row per
problem x strategy x budget x seed; schema in ``testtime bench``'s docs) and:

1. computes each problem's **probe features offline** from the recorded
   ``samples`` of a sampling strategy's row (the first ``probe_n`` samples in
   draw order, exactly what ``auto`` would have drawn as its probe): answer
   agreement (the top answer's share of the probes) and, when the samples
   carry scores, their mean score; the feature is
   :func:`probe_feature` (agreement, or the mean of agreement and mean score);
2. bins problems by quantiles of that feature (``bins`` bins, low feature =
   hard);
3. per bin and (total) budget, chooses the strategy with the best accuracy
   over the bin's problems (ties within ``tie`` go to fewer mean tokens). A
   virtual strategy ``probe`` -- answer from the probe samples alone, spend
   nothing more -- competes too, with its cost estimated from the sampling
   row. The probe is paid for honestly: strategies that pool the probe
   samples (best-of-N, self-consistency) are judged at the budget, the
   others at the budget minus the probe's tokens (interpolated on log
   budget between the measured budgets; not below the smallest);
4. records the unbinned best per budget (``all``) and, per budget, whether
   probing paid (``probe.use``): where the binned choices, probe cost
   included, did not beat the best single strategy, ``auto`` does not probe
   and runs that strategy.

The table is JSON (:func:`save_table` / :func:`load_table`); the default one
ships as package data (``testtime/search/auto_table.json``, fitted on the
simulator's ``mixed`` suite, seeds 0-3, by ``python bench/search.py --auto
--write-default``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from testtime.errors import UserError
from testtime.verifiers.answer import normalize_answer

#: Strategies whose ``samples`` are independent full solutions in draw
#: order, usable as offline probes (preferred first: scored ones).
PROBE_SOURCES: tuple[str, ...] = ("best_of_n", "weighted_self_consistency", "best_of_majority",
                                  "self_consistency")
#: The virtual strategy "answer from the probes alone".
PROBE = "probe"
#: Strategies ``auto`` runs so that the probe samples are their first
#: candidates (no probe cost is lost); the others start after the probe.
POOLING: tuple[str, ...] = (PROBE, "best_of_n", "self_consistency", "weighted_self_consistency")
TABLE_KIND = "testtime.auto_table"
DEFAULT_TABLE = "auto_table.json"


# ------------------------------------------------------------------ features
def probe_stats(answers: Sequence[str | None], scores: Sequence[float | None]) -> dict[str, Any]:
    """Agreement and mean score of probe samples.

    ``agreement`` is the top answer's count over all probes (a probe with no
    answer agrees with nothing); ``mean_score`` averages the scores present
    (None when none is).
    """
    keys = [normalize_answer(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    agreement = (counts.most_common(1)[0][1] / len(keys)) if counts and keys else 0.0
    present = [float(s) for s in scores if s is not None]
    return {"n": len(keys), "agreement": agreement,
            "mean_score": statistics.fmean(present) if present else None}


def probe_feature(stats: dict[str, Any], kind: str) -> float:
    """The scalar the table bins on: ``agreement`` or ``agreement+score``
    (their mean; agreement alone when no probe was scored)."""
    if kind == "agreement" or stats.get("mean_score") is None:
        return float(stats["agreement"])
    if kind == "agreement+score":
        return 0.5 * (float(stats["agreement"]) + float(stats["mean_score"]))
    raise UserError(f"unknown probe feature {kind!r}; choose agreement or agreement+score")


def probe_answer(answers: Sequence[str | None], scores: Sequence[float | None]) -> str | None:
    """The answer the probes alone give: score-weighted vote when scored, else majority.

    Ties go to the answer seen first."""
    tally: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    scored = any(s is not None for s in scores)
    for i, (a, s) in enumerate(zip(answers, scores, strict=False)):
        key = normalize_answer(a)
        if key is None:
            continue
        tally[key] += (float(s) if s is not None else 0.0) if scored else 1.0
        first.setdefault(key, i)
    if not tally:
        return None
    return max(tally, key=lambda k: (tally[k], -first[k]))


# ------------------------------------------------------------------ table I/O
def load_table(path: str | Path | None = None) -> dict[str, Any]:
    """A policy table from ``path``, or the packaged default (None).

    Raises:
        UserError: unreadable file or not a table.
    """
    try:
        if path is None:
            text = resources.files("testtime.search").joinpath(DEFAULT_TABLE).read_text(encoding="utf-8")
            where = f"packaged {DEFAULT_TABLE}"
        else:
            text = Path(path).read_text(encoding="utf-8")
            where = str(path)
        table = json.loads(text)
    except OSError as exc:
        raise UserError(f"cannot read auto policy table {path}: {exc.strerror or exc}; "
                        "make one with `testtime tune RESULTS.jsonl --out table.json`") from exc
    except ValueError as exc:
        raise UserError(f"auto policy table {path} is not JSON: {exc}") from exc
    check_table(table, where)
    return table


def probe_pays(table: dict[str, Any], tokens: float) -> bool:
    """Whether ``auto`` probes at this budget (the nearest table budget's flag)."""
    return bool(table["probe"].get("use", {}).get(str(nearest_budget(table, tokens)), True))


def check_table(table: Any, where: str = "table") -> None:
    """Raise UserError unless ``table`` has the fields ``auto`` reads."""
    if not isinstance(table, dict) or table.get("kind") != TABLE_KIND:
        raise UserError(f"{where} is not an auto policy table (kind {TABLE_KIND!r}); "
                        "make one with `testtime tune RESULTS.jsonl --out table.json`")
    for key in ("probe", "bins", "policy", "all", "budgets"):
        if key not in table:
            raise UserError(f"auto policy table {where} lacks {key!r}")
    if not table["budgets"] or not table["bins"]:
        raise UserError(f"auto policy table {where} has no budgets or no bins")


def save_table(table: dict[str, Any], path: str | Path) -> None:
    """Write ``table`` as indented JSON."""
    Path(path).write_text(json.dumps(table, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def bin_of(table: dict[str, Any], feature: float) -> str:
    """The name of the bin ``feature`` falls in (bins are ``(previous upper, upper]``)."""
    for b in table["bins"]:
        if b.get("upper") is None or feature <= b["upper"]:
            return str(b["name"])
    return str(table["bins"][-1]["name"])


def nearest_budget(table: dict[str, Any], tokens: float) -> int:
    """The table budget nearest to ``tokens`` on a log scale (inf: the largest)."""
    budgets = [int(b) for b in table["budgets"]]
    if not math.isfinite(tokens):
        return max(budgets)
    t = max(tokens, 1.0)
    return min(budgets, key=lambda b: (abs(math.log(b / t)), b))


def choose(table: dict[str, Any], bin_name: str | None, tokens: float) -> dict[str, Any]:
    """The table entry for a bin (None: the unbinned ``all``) at the budget nearest ``tokens``."""
    budget = str(nearest_budget(table, tokens))
    if bin_name is not None:
        entry = table["policy"].get(bin_name, {}).get(budget)
        if entry is not None:
            return entry
    return table["all"][budget]


# ------------------------------------------------------------------ fitting
def read_results(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of one or more ``results.jsonl`` files (a directory means its results.jsonl).

    Raises:
        UserError: a missing file or a line that is not a JSON object.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "results.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UserError(f"cannot read results store {path}: {exc.strerror or exc}") from exc
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                if n == len(lines):  # a run killed mid-write leaves a torn last line
                    continue
                raise UserError(f"{path}:{n} is not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n} is not a JSON object")
            rows.append(row)
    return rows


def _budget_tokens(spec: Any) -> int | None:
    if isinstance(spec, (int, float)):
        return int(spec)
    from testtime.budget import Budget

    try:
        b = Budget.parse(str(spec))
    except UserError:
        return None
    return int(b.tokens) if b.tokens else None


def _base_name(spec: str) -> str:
    from testtime.sim.bench import parse_strategy_spec

    try:
        return parse_strategy_spec(spec)[0]
    except UserError:
        return spec


def _tokens(row: dict[str, Any]) -> float:
    usage = row.get("usage") or {}
    return float(usage.get("tokens", 0) or 0)


def fit_table(rows: Sequence[dict[str, Any]], *, probe_n: int = 4, bins: int = 3, tie: float = 0.0,
              feature: str | None = None, dataset: str | None = None,
              strategies: Sequence[str] | None = None, confidence: float = 1.0) -> dict[str, Any]:
    """Fit a policy table (see the module docstring).

    Args:
        rows: results-store rows.
        probe_n: probe samples per problem (the first ``probe_n`` samples of
            a sampling row are the offline probe).
        bins: difficulty bins (quantiles of the probe feature).
        tie: accuracies within ``tie`` of the best count as tied; ties go
            to fewer mean tokens.
        feature: ``agreement`` or ``agreement+score`` (None: the latter when
            the probe rows carry scores).
        dataset: use only rows of this dataset (None: all; several datasets
            in one store must be chosen between).
        strategies: only consider these strategy labels (None: all).
        confidence: a bin leaves the best single strategy (the ``all``
            choice at that budget) for another only when that one's accuracy
            in the bin is higher by more than ``confidence`` standard errors
            of the difference: per-bin choices on a few dozen problems are
            noisy, and chasing noise loses out of sample (0: plain argmax).

    Raises:
        UserError: no usable rows, several datasets without ``dataset``, bad arguments.
    """
    if probe_n < 1 or bins < 1 or tie < 0 or confidence < 0:
        raise UserError("tune needs probe_n >= 1, bins >= 1, tie >= 0 and confidence >= 0")
    # auto's own rows are not a strategy to choose (a table pointing at auto would recurse).
    rows = [r for r in rows if r.get("v") == 1 and r.get("correct") is not None
            and _base_name(str(r.get("strategy", ""))) != "auto"]
    datasets = sorted({str(r.get("dataset")) for r in rows})
    if dataset is not None:
        rows = [r for r in rows if r.get("dataset") == dataset]
    elif len(datasets) > 1:
        raise UserError(f"the results hold several datasets ({', '.join(datasets)}); pick one with --dataset")
    if strategies is not None:
        keep = set(strategies) | set(PROBE_SOURCES)
        rows = [r for r in rows if r.get("strategy") in keep]
    if not rows:
        raise UserError("no finished rows with a known correct/incorrect outcome to fit on")
    # One instance = one problem under one seed.
    by_inst: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if _budget_tokens(r.get("budget")) is None:
            continue
        by_inst[(str(r.get("problem_id")), r.get("seed"))].append(r)
    probes: dict[tuple[str, Any], dict[str, Any]] = {}
    for key, inst in by_inst.items():
        src = _probe_source(inst, probe_n)
        if src is not None:
            probes[key] = src
    if not probes:
        raise UserError(f"no row of a sampling strategy ({', '.join(PROBE_SOURCES)}) with >= {probe_n} "
                        "recorded samples: run the bench with best_of_n (or another sampler) included")
    scored = sum(p["stats"]["mean_score"] is not None for p in probes.values())
    kind = feature or ("agreement+score" if scored >= 0.8 * len(probes) else "agreement")
    feats = {k: probe_feature(p["stats"], kind) for k, p in probes.items()}
    edges = _quantile_edges(sorted(feats.values()), bins)
    names = _bin_names(len(edges) + 1)
    bin_defs = [{"name": names[i], "upper": edges[i] if i < len(edges) else None} for i in range(len(names))]
    table_stub = {"bins": bin_defs}
    inst_bin = {k: bin_of(table_stub, f) for k, f in feats.items()}
    budgets = sorted({b for inst in by_inst.values() for r in inst
                      if (b := _budget_tokens(r.get("budget"))) is not None})
    policy: dict[str, dict[str, Any]] = {n: {} for n in names}
    overall: dict[str, Any] = {}
    binned_acc: dict[int, float] = {}
    curves_all = _curves(by_inst, list(probes), budgets)
    curves_bin = {name: _curves(by_inst, [k for k in probes if inst_bin[k] == name], budgets) for name in names}
    for budget in budgets:
        total_right = 0.0
        total_n = 0
        best_all = _best(curves_all, budget, len(probes), tie, probe=None)
        if best_all is not None:
            best_all["problems"] = len(probes)
            overall[str(budget)] = best_all
        for name in names:
            keys = [k for k in probes if inst_bin[k] == name]
            if not keys:
                continue
            probe_acc = statistics.fmean(float(probes[k]["correct"]) for k in keys)
            probe_cost = statistics.fmean(probes[k]["tokens"] for k in keys)
            entry = _best(curves_bin[name], budget, len(keys), tie, probe=(probe_acc, probe_cost),
                          anchor=None if best_all is None else best_all["label"], z=confidence)
            if entry is not None:
                entry["problems"] = len(keys)
                policy[name][str(budget)] = entry
                total_right += entry["accuracy"] * len(keys)
                total_n += len(keys)
        if total_n:
            binned_acc[budget] = total_right / total_n
    budgets = [b for b in budgets if str(b) in overall]
    if not budgets:
        raise UserError("no budget has rows for every problem of some strategy; nothing to fit")
    # Probing pays where the binned choices (probe charged) beat the best
    # single strategy without a probe; elsewhere auto runs that strategy.
    use = {str(b): binned_acc.get(b, 0.0) > overall[str(b)]["accuracy"] + 1e-6 for b in budgets}
    return {
        "v": 1, "kind": TABLE_KIND,
        "fitted_on": {"datasets": sorted({str(r.get("dataset")) for r in rows}), "rows": len(rows),
                      "problems": len(probes), "seeds": sorted({str(k[1]) for k in probes}),
                      "strategies": sorted({str(r.get("strategy")) for r in rows})},
        "probe": {"n": probe_n, "feature": kind, "use": use},
        "bins": bin_defs,
        "budgets": budgets,
        "policy": policy,
        "all": overall,
        "in_sample_accuracy": {str(b): round(binned_acc[b], 4) for b in budgets if b in binned_acc},
    }


def _probe_source(inst: list[dict[str, Any]], k: int) -> dict[str, Any] | None:
    """Probe stats from the best sampling row of one problem instance."""
    best = None
    for r in inst:
        name = _base_name(str(r.get("strategy", "")))
        samples = r.get("samples") or []
        if name not in PROBE_SOURCES or len(samples) < k:
            continue
        has_scores = all(s.get("score") is not None for s in samples[:k] if s.get("answer") is not None)
        # The largest budget: its first k samples are full-length draws, as
        # auto's probe is (at a small budget the k-th may be one shortened to
        # fit), and tokens / samples there is the honest cost per sample.
        rank = (not has_scores, PROBE_SOURCES.index(name), -(_budget_tokens(r.get("budget")) or 0))
        if best is None or rank < best[0]:
            best = (rank, r)
    if best is None:
        return None
    r = best[1]
    samples = r["samples"]
    first = samples[:k]
    answers = [s.get("answer") for s in first]
    scores = [s.get("score") for s in first]
    stats = probe_stats(answers, scores)
    answer = probe_answer(answers, scores)
    right = next((bool(s.get("correct")) for s in first
                  if answer is not None and normalize_answer(s.get("answer")) == answer), False)
    return {"stats": stats, "correct": right, "tokens": _tokens(r) * k / max(len(samples), 1)}


def _curves(by_inst: dict[tuple[str, Any], list[dict[str, Any]]], keys: list[tuple[str, Any]],
            budgets: list[int]) -> dict[str, dict[int, tuple[float, float]]]:
    """label -> budget -> (accuracy, mean tokens) over the instances ``keys``.

    A strategy missing on more than 10% of the instances at a budget has no
    point there (it cannot be compared)."""
    cells: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for k in keys:
        for r in by_inst[k]:
            b = _budget_tokens(r.get("budget"))
            cells[(str(r["strategy"]), b)].append((float(bool(r["correct"])), _tokens(r)))
    out: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for (label, b), vals in cells.items():
        if b in budgets and len(vals) >= 0.9 * len(keys):
            out[label][b] = (statistics.fmean(v[0] for v in vals), statistics.fmean(v[1] for v in vals))
    return out


def _at(curve: dict[int, tuple[float, float]], x: float) -> tuple[float, float] | None:
    """A curve's (accuracy, tokens) at budget ``x``: interpolated on log budget
    between measured points, None below the smallest or above the largest."""
    pts = sorted(curve)
    if not pts or x < pts[0] * 0.999 or x > pts[-1] * 1.001:
        return None
    for lo, hi in zip(pts, pts[1:], strict=False):
        if lo <= x <= hi:
            w = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return tuple((1 - w) * a + w * b for a, b in zip(curve[lo], curve[hi], strict=True))  # type: ignore[return-value]
    return curve[pts[0]] if abs(x - pts[0]) <= pts[0] * 0.001 else curve[pts[-1]]


def _best(curves: dict[str, dict[int, tuple[float, float]]], budget: int, count: int, tie: float, *,
          probe: tuple[float, float] | None, anchor: str | None = None, z: float = 0.0) -> dict[str, Any] | None:
    """The best strategy for a total budget ``budget``.

    With ``probe`` = (accuracy, tokens) of answering from the probes, the
    choice is for ``auto`` after probing: strategies that pool the probe
    samples (:data:`POOLING`) are judged at ``budget``; the others run on
    what the probe left, so they are judged at ``budget - probe tokens``
    (interpolated between measured budgets) and charged the probe's tokens.
    Without ``probe``: every strategy at ``budget`` (no probe is spent).
    With ``anchor`` (a label), the anchor is kept unless the best beats it
    by more than ``z`` standard errors of the difference.
    """
    if count == 0:
        return None
    cands: list[tuple[float, float, str]] = []
    for label, curve in curves.items():
        if probe is None or _base_name(label) in POOLING:
            point = curve.get(budget)
        else:
            at = _at(curve, budget - probe[1])
            point = None if at is None else (at[0], at[1] + probe[1])
        if point is not None:
            cands.append((point[0], point[1], label))
    if probe is not None:
        cands.append((probe[0], probe[1], PROBE))
    if not cands:
        return None
    top = max(c[0] for c in cands)
    tied = [c for c in cands if c[0] >= top - tie - 1e-12]
    a, t, s = min(tied, key=lambda c: (c[1], c[2]))
    held = next((c for c in cands if c[2] == anchor), None)
    if held is not None and s != anchor:
        se = math.sqrt((a * (1 - a) + held[0] * (1 - held[0])) / count)
        if a - held[0] <= z * se:
            a, t, s = held
    ranked = sorted(cands, key=lambda c: (-c[0], c[1]))
    name, options = (PROBE, {}) if s == PROBE else _split(s)
    return {"strategy": name, "options": options, "label": s, "accuracy": round(a, 4), "tokens": round(t, 1),
            "ranking": [{"label": c[2], "accuracy": round(c[0], 4), "tokens": round(c[1], 1)} for c in ranked[:5]]}


def _split(label: str) -> tuple[str, dict[str, Any]]:
    from testtime.sim.bench import parse_strategy_spec

    return parse_strategy_spec(label)


def _quantile_edges(values: list[float], bins: int) -> list[float]:
    """Upper edges of ``bins`` quantile bins (duplicates merged)."""
    if bins <= 1 or not values:
        return []
    edges = []
    for i in range(1, bins):
        q = values[min(len(values) - 1, max(0, math.ceil(i * len(values) / bins) - 1))]
        if (not edges or q > edges[-1]) and q < values[-1]:
            edges.append(round(q, 6))
    return edges


def _bin_names(n: int) -> list[str]:
    if n == 1:
        return ["all"]
    if n == 2:
        return ["hard", "easy"]
    if n == 3:
        return ["hard", "medium", "easy"]
    return [f"bin{i}" for i in range(n)]


def describe(table: dict[str, Any]) -> str:
    """A Markdown summary: bins, then the chosen strategy per bin and budget."""
    probe = table["probe"]
    used = [f"{int(b):,}" for b, on in probe["use"].items() if on]
    where = f"probing at {', '.join(used)} tokens" if used else "probing at no budget"
    lines = [f"probe: {probe['n']} samples, feature {probe['feature']}; {where} (elsewhere: the `all` column)",
             ""]
    lower = None
    for b in table["bins"]:
        hi = "" if b["upper"] is None else f"{b['upper']:.3f}"
        lo = "" if lower is None else f"{lower:.3f}"
        lines.append(f"- bin `{b['name']}`: feature in ({lo or '-inf'}, {hi or 'inf'}]")
        lower = b["upper"]
    lines += ["", "| budget | " + " | ".join(b["name"] for b in table["bins"]) + " | all (no probe) |",
              "|---:|" + "---|" * (len(table["bins"]) + 1)]
    for budget in table["budgets"]:
        cells = []
        for b in table["bins"]:
            e = table["policy"].get(b["name"], {}).get(str(budget))
            cells.append("-" if e is None else f"{e['label']} ({e['accuracy']:.2f})")
        e = table["all"].get(str(budget))
        cells.append("-" if e is None else f"{e['label']} ({e['accuracy']:.2f})")
        lines.append(f"| {budget:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
