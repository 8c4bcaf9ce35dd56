"""``auto``: compute-optimal strategy choice per question difficulty.

From "Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters" (Snell et al.): the best test-time strategy depends
on how hard the question is and on the budget (beam search helps hard
questions at low budgets, parallel sampling easy ones), so estimate the
difficulty first and choose per difficulty bin. Here:

1. **probe** -- draw ``probe_n`` full solutions (default: the table's, 4)
   inside a share ``probe_share`` of the budget and score them with the
   verifier, else the PRM, when the context has one;
2. **estimate difficulty** -- the probe feature of :mod:`testtime.search.tune`
   (answer agreement of the probes, averaged with their mean score when
   scored) places the question in one of the table's difficulty bins;
3. **choose** -- the policy table gives, for that bin and the table budget
   nearest (log scale) to the run's token budget, a strategy and its
   options. Entries are fitted for what remains after the probe: a strategy
   that cannot pool the probes was judged at the budget minus the probe's
   cost (:mod:`testtime.search.tune`);
4. **run** it on what remains of the same ledger. Probe samples are reused
   as candidates where the chosen strategy can use them: ``probe`` (answer
   from the probes alone and stop), ``best_of_n``, ``self_consistency`` and
   ``weighted_self_consistency`` continue sampling and pool the probes with
   the new samples. Other strategies start fresh (the probes were the price
   of the estimate); if they end without an answer, the probes' answer is
   returned. A chosen strategy that needs a PRM the run does not have is
   replaced by self-consistency (pooling the probes); without a scorer the
   probe feature is agreement alone.

Where probing did not pay when the table was fitted (``probe.use`` false
for the budget), ``auto`` skips it and runs the table's unbinned choice. Every call
goes through ``ctx.generate`` and the one ledger, so ``auto`` never spends
more than the budget. The default table ships with the package (fitted on the
simulator's ``mixed`` suite); fit one for your own model and data with
``testtime bench ... --out DIR`` then ``testtime tune DIR/results.jsonl --out
table.json`` and pass ``-o table=table.json``.
"""

from __future__ import annotations

from typing import Any

from testtime.context import RunContext
from testtime.errors import UserError
from testtime.search.base import (
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    draw_solutions,
    normalize_answer,
    vote,
)
from testtime.search.tune import (
    POOLING,
    PROBE,
    bin_of,
    choose,
    load_table,
    probe_answer,
    probe_feature,
    probe_pays,
    probe_stats,
)

#: Chosen strategies that pool the probe samples with their own.
REUSES_PROBES: tuple[str, ...] = POOLING


class Auto(SearchStrategy):
    """Probe, estimate difficulty, pick a strategy from a policy table, run it.

    Args:
        table: path of a policy table (JSON from ``testtime tune``); None
            uses the packaged default.
        probe_n: probe samples (None: the table's).
        probe_share: the largest share of the budget the probe may use.
        probe: False skips probing (always the table's unbinned choice).
    """

    name = "auto"

    def __init__(self, *, table: str | None = None, probe_n: int | None = None, probe_share: float = 0.5,
                 probe: bool = True) -> None:
        if probe_n is not None and probe_n < 1:
            raise UserError(f"auto probe_n must be >= 1, got {probe_n}")
        if not 0.0 < probe_share <= 1.0:
            raise UserError(f"auto probe_share must be in (0, 1], got {probe_share}")
        self.table = table
        self.probe_n = probe_n
        self.probe_share = probe_share
        self.probe = probe
        self._table: dict[str, Any] | None = None

    def policy_table(self) -> dict[str, Any]:
        """The table in use (loaded once)."""
        if self._table is None:
            self._table = load_table(self.table)
        return self._table

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        table = self.policy_table()
        total = ctx.ledger.remaining("tokens")
        spent_before = ctx.ledger.spent("tokens")
        n = self.probe_n or int(table["probe"]["n"])
        probing = self.probe and probe_pays(table, total)
        ctx.tracer.emit("strategy_start", strategy=self.name,
                        params={"probe_n": n, "probing": probing, "table": self.table or "default"})
        probes: list[Candidate] = []
        info: dict[str, Any] = {"probed": probing, "bin": None}
        if probing:
            sub = ctx.derive(ledger=ctx.ledger.share(self.probe_share, name="auto.probe"))
            probes, _ = await draw_solutions(problem, sub, n=n, batch=n)
            if probes and (ctx.verifier is not None or ctx.prm is not None):
                from testtime.search.best_of_n import score_candidates, unscored_answers

                await score_candidates(problem, ctx, unscored_answers(probes))
            stats = probe_stats([c.answer for c in probes], [c.score for c in probes])
            feature = probe_feature(stats, str(table["probe"]["feature"]))
            info.update(bin=bin_of(table, feature), feature=round(feature, 4),
                        agreement=round(stats["agreement"], 4), probes=len(probes),
                        mean_score=None if stats["mean_score"] is None else round(stats["mean_score"], 4))
        info["probe_tokens"] = ctx.ledger.spent("tokens") - spent_before
        # Entries are fitted per *total* budget, already charging the probe
        # to the strategies that run after it (see testtime.search.tune).
        entry = choose(table, info["bin"], total)
        name, options = str(entry["strategy"]), dict(entry.get("options") or {})
        info.update(strategy=entry.get("label", name), table_budget=_entry_budget(table, total))
        ctx.tracer.emit("note", message=f"auto: bin {info['bin']} -> {info['strategy']}", **{
            k: v for k, v in info.items() if k in ("bin", "feature", "strategy", "probe_tokens")})
        from testtime.search.registry import get_strategy_class, make_strategy

        if name not in REUSES_PROBES and get_strategy_class(name).needs_prm and ctx.prm is None:
            # The table was fitted with a PRM this run does not have: vote instead.
            info["fallback"] = f"{name} needs a PRM; self_consistency instead"
            name, options = "self_consistency", {}
        if name in REUSES_PROBES and not options.get("n"):
            result = await self._pooled(name, problem, ctx, probes)
        else:
            result = await make_strategy(name, **options).search(problem, ctx)
            if result.answer is None and probes:
                answer = probe_answer([c.answer for c in probes], [c.score for c in probes])
                best = _first_with(probes, answer)
                result.answer, result.text = (best.answer, best.text) if best else (None, "")
                result.stats["fallback"] = "probes"
            result.candidates = [*probes, *result.candidates]
        result.stats["auto"] = info
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer,
                        stopped_reason=result.stopped_reason)
        return result

    async def _pooled(self, name: str, problem: Problem, ctx: RunContext,
                      probes: list[Candidate]) -> SearchResult:
        """Run a sampling strategy that keeps the probe samples as candidates."""
        from testtime.search.best_of_n import record_candidates, sample_and_score

        scorer = ctx.verifier is not None or ctx.prm is not None
        stopped = "done"
        new: list[Candidate] = []
        if name == PROBE:
            pass
        elif name == "self_consistency" or not scorer:
            new, stopped = await draw_solutions(problem, ctx, n=None)
        else:
            new, stopped, _ = await sample_and_score(problem, ctx, max_n=None, batch=8, ratio=0.5,
                                                     max_rounds=None, name="auto.samples")
        cands = [*probes, *new]
        tree = SearchTree(ctx)
        record_candidates(tree, cands)
        if not cands:
            return SearchResult(answer=None, text="", stopped_reason="budget_exhausted", tree=tree.graph)
        scored = [c for c in cands if c.score is not None]
        if name == PROBE:
            answer = probe_answer([c.answer for c in cands], [c.score for c in cands])
        elif name == "best_of_n" and scored:
            # Highest score wins; ties go to the more frequent answer, then the earlier sample.
            counts = {k: sum(normalize_answer(c.answer) == k for c in cands)
                      for k in {normalize_answer(c.answer) for c in scored}}
            best = max(scored, key=lambda c: (c.score, counts.get(normalize_answer(c.answer), 0)))
            answer = normalize_answer(best.answer)
        elif name == "weighted_self_consistency" and scored:
            answer, _ = vote(scored, weighted=True)
        else:
            answer, _ = vote(cands)
        best = _first_with(sorted(cands, key=lambda c: -(c.score if c.score is not None else -1.0)), answer)
        if best is None:
            best = cands[0]
        return SearchResult(answer=best.answer, text=best.text, score=best.score, candidates=cands,
                            stopped_reason=stopped, tree=tree.graph,
                            stats={"n_sampled": len(cands), "n_probes": len(probes)})


def _first_with(cands: list[Candidate], answer: str | None) -> Candidate | None:
    if answer is None:
        return None
    return next((c for c in cands if normalize_answer(c.answer) == answer), None)


def _entry_budget(table: dict[str, Any], tokens: float) -> int:
    from testtime.search.tune import nearest_budget

    return nearest_budget(table, tokens)
