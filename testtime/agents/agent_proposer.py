"""``agent``: an LLM proposes allocations from the trial history (AgentTTS-style).

Each round the proposer model (any testtime model spec; calls go through
``ctx.generate`` with role ``"allocate"``, so they are budgeted and traced)
sees the stages, the candidate models with their per-sample costs, the
budget, the regularities of multi-stage test-time scaling, the saturation
points observed so far, and the best and latest trials. It answers with JSON
proposals, which are parsed leniently and validated with pydantic: unknown
stages are dropped, missing stages are filled from the best allocation so
far, unknown models are matched to the nearest known name (or replaced),
sample counts are snapped to the ladder, and over-budget proposals are cut
back (saturated stages first). Nothing the model writes can crash the search:
when a reply yields no new valid allocation, or the model errs, or its own
budget runs out, a regularity-guided fallback proposes instead.

The fallback (:class:`RegularityFallback`) is a local search around the best
allocation so far that uses the same three regularities: it seeds with one
model family per run (stages prefer different models), swaps a stage's model
at matched cost (a small model with more samples vs. a large one with fewer),
adds samples only to stages that have not saturated, and takes samples back
from stages that have, to spend them where they still help.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from testtime.agents.allocation import (
    Allocation,
    AllocationSpace,
    Allocator,
    Proposal,
    StageChoice,
    Trial,
)
from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import ModelAPIError, SearchStop, UserError
from testtime.models.base import GenerationRequest, Model

SYSTEM = (
    "You are an expert at compute-optimal test-time scaling of multi-stage LLM tasks. "
    "You choose, for every stage, which model serves it and how many samples it draws, "
    "so that end-to-end accuracy is highest while the total cost stays within the budget. "
    "Reply with JSON only."
)

REGULARITIES = """Known regularities of multi-stage test-time scaling:
1. Different stages prefer different models: a small model with more samples can beat a large model with few samples on some stages, not on others.
2. Accuracy rises with more samples and then saturates (or even falls) at a stage- and model-specific point; do not add samples past it, move that budget to another stage.
3. Stage allocations interact: a better early stage makes later stages more effective."""


class ChoiceIn(BaseModel):
    """One stage's choice as the proposer wrote it (validated leniently)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    samples: int = 1

    @field_validator("model", mode="before")
    @classmethod
    def _model_text(cls, v: Any) -> str:
        if not isinstance(v, (str, int, float)):
            raise ValueError("model must be a name")
        return str(v).strip()

    @field_validator("samples", mode="before")
    @classmethod
    def _samples_number(cls, v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("samples must be a number")
        if isinstance(v, (int, float)):
            return max(1, round(v))
        if isinstance(v, str):
            m = re.search(r"\d+(?:\.\d+)?", v)
            if m:
                return max(1, round(float(m.group())))
        raise ValueError("samples must be a number")


# ------------------------------------------------------------------ parsing
def extract_json(text: str) -> Any | None:
    """The first decodable JSON object or array in ``text`` (fences, prose and
    trailing commas tolerated), or None."""
    if not text:
        return None
    cleaned = re.sub(r",\s*([}\]])", r"\1", text)
    decoder = json.JSONDecoder()
    for i, ch in enumerate(cleaned):
        if ch in "{[":
            try:
                value, _ = decoder.raw_decode(cleaned, i)
            except json.JSONDecodeError:
                continue
            if isinstance(value, (dict, list)) and value:
                return value
    return None


def _as_allocation_dicts(value: Any) -> list[Any]:
    """Unwrap the container shapes a model might use around allocations."""
    if isinstance(value, dict):
        for key in ("allocations", "proposals", "candidates", "allocation"):
            if key in value and isinstance(value[key], (list, dict)):
                inner = value[key]
                return inner if isinstance(inner, list) else [inner]
        return [value]
    if isinstance(value, list):
        # A list of {"stage": ..., "model": ..., "samples": ...} rows is ONE allocation.
        if value and all(isinstance(v, dict) and "stage" in v for v in value):
            return [value]
        return value
    return []


def _match(name: str, known: Sequence[str]) -> str | None:
    """Exact, case-insensitive, containment, then fuzzy match of a name."""
    if name in known:
        return name
    low = name.lower()
    for k in known:
        if k.lower() == low:
            return k
    contained = [k for k in known if k.lower() in low or low in k.lower()]
    if len(contained) == 1:
        return contained[0]
    close = difflib.get_close_matches(low, [k.lower() for k in known], n=1, cutoff=0.6)
    if close:
        return next(k for k in known if k.lower() == close[0])
    return None


def _stage_entries(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list):
        out = {}
        for row in raw:
            if isinstance(row, dict) and "stage" in row:
                out[str(row["stage"])] = row
        return out or None
    return None


def _choice_from(entry: Any) -> ChoiceIn:
    if isinstance(entry, dict):
        return ChoiceIn.model_validate(entry)
    if isinstance(entry, (list, tuple)) and entry:
        return ChoiceIn.model_validate({"model": entry[0], "samples": entry[1] if len(entry) > 1 else 1})
    if isinstance(entry, str):
        # "small x4", "small*4", "4 x small", "small"
        num = re.search(r"\d+", entry)
        name = re.sub(r"[x*×]?\s*\d+\s*[x*×]?", " ", entry).strip() or entry
        return ChoiceIn.model_validate({"model": name, "samples": int(num.group()) if num else 1})
    raise ValueError(f"cannot read a stage choice from {entry!r}")


def parse_proposals(text: str, space: AllocationSpace, anchor: Allocation, *,
                    cut_first: Sequence[int] = ()) -> tuple[list[Allocation], dict[str, int]]:
    """Turn a proposer reply into valid allocations.

    Returns the allocations (all valid: known models, ladder sample counts,
    within budget) and counters ``parsed`` (allocations read), ``repaired``
    (needed a fix), ``rejected`` (unusable).
    """
    counts = {"parsed": 0, "repaired": 0, "rejected": 0}
    value = extract_json(text)
    if value is None:
        counts["rejected"] += 1
        return [], counts
    stage_names = [s.name for s in space.stages]
    out: list[Allocation] = []
    for raw in _as_allocation_dicts(value):
        entries = _stage_entries(raw)
        if not entries:
            counts["rejected"] += 1
            continue
        choices = list(anchor.choices)
        repaired = False
        matched = 0
        for key, entry in entries.items():
            idx_name = _match(str(key), stage_names)
            if idx_name is None:
                repaired = True
                continue
            idx = stage_names.index(idx_name)
            try:
                ch = _choice_from(entry)
            except (ValidationError, ValueError):
                repaired = True
                continue
            model = _match(ch.model, space.stages[idx].model_names())
            if model is None:
                model, repaired = anchor.choices[idx].model, True
            elif model != ch.model:
                repaired = True
            samples = space.snap(ch.samples)
            repaired = repaired or samples != ch.samples
            choices[idx] = StageChoice(model=model, samples=samples)
            matched += 1
        if matched == 0:
            counts["rejected"] += 1
            continue
        repaired = repaired or matched < len(stage_names)
        alloc = Allocation(choices=tuple(choices))
        if not space.fits(alloc):
            alloc, repaired = space.repair(alloc, cut_first=cut_first), True
        counts["parsed"] += 1
        counts["repaired"] += int(repaired)
        out.append(alloc)
    return out, counts


# ---------------------------------------------------------- regularities
def saturated_levels(space: AllocationSpace, history: Sequence[Trial], eps: float = 0.0) -> dict[tuple[int, str], int]:
    """(stage, model) -> the smallest sample level beyond which more samples
    did not help, from pairs of trials that differ only in that stage's samples."""
    out: dict[tuple[int, str], int] = {}
    by_key = {t.allocation.key(): t for t in history}
    for t in history:
        key = t.allocation.key()
        for i, (model, k) in enumerate(key):
            for other_k in space.levels:
                if other_k <= k:
                    continue
                other = key[:i] + ((model, other_k),) + key[i + 1:]
                o = by_key.get(other)
                if o is not None and o.accuracy <= t.accuracy + eps:
                    cur = out.get((i, model))
                    out[(i, model)] = k if cur is None else min(cur, k)
    return out


def best_trial(space: AllocationSpace, history: Sequence[Trial]) -> Trial:
    return max(history, key=lambda t: (t.accuracy, -space.used_fraction(t.allocation), -t.index))


class RegularityFallback:
    """Local search around the best allocation, guided by the regularities."""

    def __init__(self) -> None:
        self._turn = 0

    def candidates(self, space: AllocationSpace, history: Sequence[Trial]) -> list[Allocation]:
        n_models = max(len(s.options) for s in space.stages)
        seeds = [space.largest_uniform(r) for r in range(n_models)]
        if len(history) < n_models:
            # Regularity 1: first try each model family across the stages.
            return seeds
        best = best_trial(space, history).allocation
        sat = saturated_levels(space, history)
        saturated = [i for i, c in enumerate(best.choices)
                     if (i, c.model) in sat and c.samples >= sat[(i, c.model)]]
        n = len(space.stages)
        order = [(self._turn + j) % n for j in range(n)]
        self._turn += 1
        out: list[Allocation] = []
        for i in order:
            ch = best.choices[i]
            idx = space.levels.index(ch.samples)
            st = space.stages[i]
            if i not in saturated and idx + 1 < len(space.levels):
                # Regularity 2: more samples where returns have not saturated.
                out.append(best.with_choice(i, StageChoice(model=ch.model, samples=space.levels[idx + 1])))
            cur_cost = st.option(ch.model).tokens_per_sample * ch.samples
            for m in st.model_names():
                if m == ch.model:
                    continue
                # Regularity 1: same spend, different model (more cheap samples or fewer big ones).
                k = space.snap(max(1, round(cur_cost / max(st.option(m).tokens_per_sample, 1e-9))))
                out.append(best.with_choice(i, StageChoice(model=m, samples=k)))
            if i in saturated and idx > 0:
                # Past saturation: give budget back, and (regularity 3) spend it on another stage.
                down = best.with_choice(i, StageChoice(model=ch.model, samples=space.levels[idx - 1]))
                out.append(down)
                for j in order:
                    cj = down.choices[j]
                    jdx = space.levels.index(cj.samples)
                    if j != i and j not in saturated and jdx + 1 < len(space.levels):
                        out.append(down.with_choice(j, StageChoice(model=cj.model, samples=space.levels[jdx + 1])))
        return [space.repair(a, cut_first=saturated) for a in out] + seeds

    def propose(self, space: AllocationSpace, history: Sequence[Trial]) -> Allocation | None:
        seen = {t.allocation.key() for t in history}
        for alloc in self.candidates(space, history):
            if alloc.key() not in seen:
                return alloc
        return None


# ---------------------------------------------------------------- the agent
class AgentAllocator(Allocator):
    """An LLM proposes allocations; a regularity-guided fallback keeps it honest.

    Args:
        model: the proposer (a spec such as ``local`` or ``openai:gpt-4o-mini``,
            or a Model); ignored when ``ctx`` is given.
        ctx: the run context whose ledger pays for proposer calls.
        budget: the proposer's own budget when no ``ctx`` is given.
        per_call: proposals requested per model call.
        max_tokens: max tokens of one proposer reply.
        history_rows: trials shown in the prompt (best ones plus the latest).
        max_errors: consecutive model errors after which only the fallback runs.
    """

    name = "agent"

    def __init__(self, model: str | Model = "local", *, ctx: RunContext | None = None,
                 budget: str | Budget = "tokens=200k", per_call: int = 3, max_tokens: int = 400,
                 temperature: float = 0.7, history_rows: int = 10, max_errors: int = 3) -> None:
        if per_call < 1:
            raise UserError(f"per_call must be >= 1, got {per_call}")
        self._model_spec = model
        self._budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
        self.ctx = ctx
        self.per_call = per_call
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.history_rows = history_rows
        self.max_errors = max_errors
        self.fallback = RegularityFallback()
        self._queue: list[Allocation] = []
        self._errors = 0
        self._llm_enabled = True
        self.counts = {"llm_calls": 0, "llm_parsed": 0, "llm_repaired": 0, "llm_rejected": 0,
                       "llm_errors": 0, "llm_used": 0, "fallback_used": 0}

    def _context(self) -> RunContext:
        if self.ctx is None:
            from testtime.models.registry import load_model

            self.ctx = RunContext(model=load_model(self._model_spec), ledger=BudgetLedger(self._budget, name="allocate"),
                                  rng=random.Random(0), seed=0)
        return self.ctx

    async def propose(self, space: AllocationSpace, history: Sequence[Trial],
                      rng: random.Random) -> Proposal | None:
        seen = {t.allocation.key() for t in history}
        self._queue = [a for a in self._queue if a.key() not in seen]
        if not self._queue and self._llm_enabled:
            await self._ask(space, history)
            self._queue = [a for a in self._queue if a.key() not in seen]
        if self._queue:
            self.counts["llm_used"] += 1
            return Proposal(allocation=self._queue.pop(0), source="llm")
        alloc = self.fallback.propose(space, history)
        if alloc is None:
            return None
        self.counts["fallback_used"] += 1
        return Proposal(allocation=alloc, source="fallback")

    async def _ask(self, space: AllocationSpace, history: Sequence[Trial]) -> None:
        ctx = self._context()
        prompt = render_prompt(space, history, per_call=self.per_call, rows=self.history_rows)
        request = GenerationRequest(prompt=prompt, system=SYSTEM, max_tokens=self.max_tokens,
                                    temperature=self.temperature, seed=ctx.next_seed(),
                                    metadata={"purpose": "allocate"})
        try:
            gens = await ctx.generate(request, role="allocate")
        except ModelAPIError:  # CallFailed included: a failed call, not a spent budget
            self.counts["llm_errors"] += 1
            self._errors += 1
            if self._errors >= self.max_errors:
                self._llm_enabled = False
            return
        except SearchStop:
            self._llm_enabled = False  # the proposer's budget is spent: fallback from here on
            return
        self._errors = 0
        self.counts["llm_calls"] += 1
        anchor = best_trial(space, history).allocation if history else space.largest_uniform()
        sat = saturated_levels(space, history)
        cut = [i for i, c in enumerate(anchor.choices) if (i, c.model) in sat]
        allocs, counts = parse_proposals(gens[0].text, space, anchor, cut_first=cut)
        self.counts["llm_parsed"] += counts["parsed"]
        self.counts["llm_repaired"] += counts["repaired"]
        self.counts["llm_rejected"] += counts["rejected"]
        self._queue.extend(allocs[: self.per_call])

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        if self.ctx is not None:
            out["proposer_model"] = self.ctx.model.spec
            out["proposer_usage"] = self.ctx.ledger.usage.to_dict()
        return out


def render_prompt(space: AllocationSpace, history: Sequence[Trial], *, per_call: int = 3, rows: int = 10) -> str:
    """The proposer prompt: problem, regularities, observations, trials, format."""
    parts = ["Multi-stage task. For each stage choose one model and a number of samples.",
             space.describe_problem(), "", REGULARITIES, ""]
    sat = saturated_levels(space, history)
    if sat:
        notes = [f"stage {space.stages[i].name} on {m} stops improving beyond {k} samples"
                 for (i, m), k in sorted(sat.items())]
        parts.append("Observed saturation: " + "; ".join(notes) + ".")
    if history:
        top = sorted(history, key=lambda t: -t.accuracy)[: max(1, rows - 3)]
        latest = [t for t in history[-3:] if t not in top]
        shown = sorted(top + latest, key=lambda t: -t.accuracy)
        parts.append(f"Trials so far ({len(history)} total; best first):")
        for t in shown:
            cost = ", ".join(f"{d}={t.cost[d]:g}" for d in space.limits)
            parts.append(f"- {t.allocation.describe(space.stages)} -> accuracy {t.accuracy:.3f} (cost {cost})")
    else:
        parts.append("No trials yet.")
    example = json.dumps({"allocations": [space.largest_uniform().to_dict(space.stages)]})
    parts += ["", f"Propose {per_call} NEW allocations that are likely to beat the best so far and fit the budget. "
              f"Answer with JSON only, in this form: {example}"]
    return "\n".join(parts)
