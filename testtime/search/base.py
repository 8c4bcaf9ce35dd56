"""The search interface shared by every strategy.

A strategy takes a :class:`Problem` and a :class:`RunContext` and returns a
:class:`SearchResult`. It spends only through ``ctx.generate`` (and verifiers
/ PRMs, which spend through the same ledger), and it is *anytime*: when the
ledger refuses a reservation (:class:`BudgetExhausted`) it returns the best
answer found so far with ``stopped_reason="budget_exhausted"``.

The search tree is a :class:`SearchTree`, a thin wrapper over a networkx
DiGraph whose nodes carry ``text`` (this step), ``step`` (depth), ``score``,
``tokens``, ``visits``, ``value``, ``terminal`` and ``parent``.
"""

from __future__ import annotations

import abc
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import networkx as nx

from testtime.context import RunContext
from testtime.models.base import Generation, GenerationRequest
from testtime.verifiers.answer import extract_answer, has_final_answer, normalize_answer

DEFAULT_SYSTEM = (
    "You are a careful problem solver. Think step by step. Separate the steps of "
    "your reasoning with a blank line. Finish with a line of the form "
    "'The answer is X.' where X is the final answer."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A question to solve.

    Attributes:
        question: the text shown to the model.
        answer: the reference answer when known (evaluation, simulator).
        id: a stable identifier.
        meta: anything else (tests for code problems, difficulty...).
    """

    question: str
    answer: str | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Candidate:
    """A complete (or best partial) solution the strategy considered."""

    text: str
    answer: str | None = None
    score: float | None = None
    tokens: int = 0
    node: int | None = None
    votes: float = 1.0
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "answer": self.answer, "score": self.score,
                "tokens": self.tokens, "votes": self.votes}


@dataclass(slots=True, kw_only=True)
class SearchResult:
    """What a strategy found.

    ``stopped_reason`` is ``"done"``, ``"budget_exhausted"``, ``"verified"``
    (stopped early on a passing candidate) or ``"error"``.
    """

    answer: str | None
    text: str
    score: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    tree: nx.DiGraph = field(default_factory=nx.DiGraph)
    stopped_reason: str = "done"
    stats: dict[str, Any] = field(default_factory=dict)


class SearchTree:
    """A search tree over reasoning steps, traced as it grows.

    Node 0 is the root (the empty solution). ``path_text(node)`` joins the
    steps from the root with the step delimiter.
    """

    def __init__(self, ctx: RunContext, *, delimiter: str | None = None) -> None:
        self.ctx = ctx
        self.delimiter = ctx.step_delimiter if delimiter is None else delimiter
        self.graph = nx.DiGraph()
        self.graph.add_node(0, text="", step=0, score=None, tokens=0, visits=0,
                            value=0.0, terminal=False, parent=None)
        self._next = 1

    def add(self, parent: int, text: str, *, score: float | None = None, tokens: int = 0,
            terminal: bool = False, **attrs: Any) -> int:
        node = self._next
        self._next += 1
        step = self.graph.nodes[parent]["step"] + 1
        self.graph.add_node(node, text=text, step=step, score=score, tokens=tokens, visits=0,
                            value=0.0, terminal=terminal, parent=parent, **attrs)
        self.graph.add_edge(parent, node)
        self.ctx.tracer.emit("node_added", node=node, parent=parent, step=step, score=score,
                             tokens=tokens, terminal=terminal, text=text[:200])
        return node

    def set(self, node: int, **attrs: Any) -> None:
        self.graph.nodes[node].update(attrs)

    def __getitem__(self, node: int) -> dict[str, Any]:
        return self.graph.nodes[node]

    def prune(self, node: int, reason: str = "") -> None:
        self.graph.nodes[node]["pruned"] = True
        self.ctx.tracer.emit("node_pruned", node=node, reason=reason)

    def select(self, node: int, reason: str = "") -> None:
        self.ctx.tracer.emit("node_selected", node=node, reason=reason)

    def path(self, node: int) -> list[int]:
        """Node ids from the root's first child down to ``node``."""
        out = []
        while node is not None and node != 0:
            out.append(node)
            node = self.graph.nodes[node]["parent"]
        return out[::-1]

    def steps(self, node: int) -> list[str]:
        return [self.graph.nodes[n]["text"] for n in self.path(node)]

    def path_text(self, node: int) -> str:
        return join_steps(self.steps(node), self.delimiter)

    def children(self, node: int) -> list[int]:
        return list(self.graph.successors(node))


class SearchStrategy(abc.ABC):
    """A budget-aware, anytime search over candidate solutions."""

    #: The name used by ``--strategy``.
    name: ClassVar[str] = "strategy"
    #: True if the strategy cannot run without a PRM (step scores).
    needs_prm: ClassVar[bool] = False

    @abc.abstractmethod
    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        """Search for the best answer within ``ctx.ledger``'s budget."""

    def params(self) -> dict[str, Any]:
        """The strategy's parameters, for traces and reports."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


# ---------------------------------------------------------------- prompting
def join_steps(steps: Sequence[str], delimiter: str = "\n\n") -> str:
    return delimiter.join(s.strip("\n") for s in steps if s.strip())


def split_steps(text: str, delimiter: str = "\n\n") -> list[str]:
    return [s.strip("\n") for s in text.split(delimiter) if s.strip()]


def solution_request(problem: Problem, ctx: RunContext, *, n: int = 1, prefix: str = "",
                     max_tokens: int | None = None, stop: Sequence[str] = (),
                     temperature: float | None = None, logprobs: bool = False) -> GenerationRequest:
    """A request for (the rest of) a full solution."""
    return GenerationRequest(
        prompt=problem.question,
        system=ctx.system_prompt or DEFAULT_SYSTEM,
        prefix=prefix,
        n=n,
        max_tokens=max_tokens or ctx.max_tokens,
        temperature=ctx.temperature if temperature is None else temperature,
        stop=tuple(stop),
        seed=ctx.next_seed(),
        logprobs=logprobs,
        metadata={"problem_id": problem.id},
    )


def step_request(problem: Problem, ctx: RunContext, steps: Sequence[str], *, n: int = 1,
                 max_tokens: int | None = None, temperature: float | None = None,
                 logprobs: bool = False) -> GenerationRequest:
    """A request for the next single reasoning step after ``steps``."""
    prefix = join_steps(steps, ctx.step_delimiter)
    if prefix:
        prefix += ctx.step_delimiter
    # A confidence PRM scores steps from the logprobs they were generated
    # with; ask for them when the backend can give them.
    if not logprobs and getattr(ctx.prm, "wants_logprobs", False) and ctx.model.capabilities.logprobs:
        logprobs = True
    return solution_request(problem, ctx, n=n, prefix=prefix,
                            max_tokens=max_tokens or ctx.step_max_tokens,
                            stop=(ctx.step_delimiter,), temperature=temperature,
                            logprobs=logprobs)


def is_terminal_step(gen: Generation, step_text: str) -> bool:
    """A step ends the solution when it states a final answer or the model
    stopped on its own (not at the step delimiter, not at the length limit)."""
    if has_final_answer(step_text):
        return True
    return gen.finish_reason == "eos"


def vote(candidates: Sequence[Candidate], *, weighted: bool = False) -> tuple[str | None, dict[str, float]]:
    """Majority (or score-weighted) vote over extracted answers.

    Returns the winning normalised answer and the tally. Ties go to the
    answer seen first, so results are deterministic for a given order.
    """
    tally: dict[str, float] = defaultdict(float)
    first_seen: dict[str, int] = {}
    for i, c in enumerate(candidates):
        key = normalize_answer(c.answer)
        if key is None:
            continue
        w = (c.score if c.score is not None else 0.0) if weighted else 1.0
        tally[key] += w
        first_seen.setdefault(key, i)
    if not tally:
        return None, {}
    best = max(tally, key=lambda k: (tally[k], -first_seen[k]))
    return best, dict(tally)


def candidate_from(gen: Generation, *, prefix: str = "", score: float | None = None) -> Candidate:
    text = (prefix + gen.text) if prefix else gen.text
    return Candidate(text=text, answer=extract_answer(text), score=score,
                     tokens=gen.usage.output_tokens)


def answer_counts(candidates: Sequence[Candidate]) -> Counter[str]:
    return Counter(k for c in candidates if (k := normalize_answer(c.answer)) is not None)


def affordable_n(ctx: RunContext, request: GenerationRequest, *, cap: int = 64) -> int:
    """The largest n (<= cap) whose worst case fits in the remaining budget.

    Strategies use it to derive sample counts from the budget instead of a
    fixed default. Returns 0 when not even one sample fits.
    """
    model = ctx.model
    lo, hi = 0, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ctx.ledger.can_afford(model.worst_case(request.with_(n=mid))):
            lo = mid
        else:
            hi = mid - 1
    return lo


async def sample_solutions(problem: Problem, ctx: RunContext, n: int, *, batch: int = 8,
                           logprobs: bool = False, role: str = "solve") -> tuple[list[Candidate], str]:
    """Draw up to ``n`` full solutions in concurrent batches, anytime.

    Returns the candidates obtained and ``"done"`` or ``"budget_exhausted"``
    (some batch was refused; the others still count).
    """
    import asyncio

    from testtime.errors import BudgetExhausted

    sizes = [min(batch, n - i) for i in range(0, n, batch)]

    async def one(size: int) -> list[Candidate] | BudgetExhausted:
        try:
            gens = await ctx.generate(solution_request(problem, ctx, n=size, logprobs=logprobs), role=role)
        except BudgetExhausted as exc:
            return exc
        return [candidate_from(g) for g in gens]

    results = await asyncio.gather(*(one(s) for s in sizes))
    cands: list[Candidate] = []
    stopped = "done"
    for r in results:
        if isinstance(r, BudgetExhausted):
            stopped = "budget_exhausted"
        else:
            cands.extend(r)
    return cands, stopped


def fit_request(ctx: RunContext, request: GenerationRequest, *, min_tokens: int = 16) -> GenerationRequest | None:
    """``request`` with max_tokens shrunk until its worst case fits the budget.

    When the budget cannot pay for a full-length sample, a shorter one
    (budget forcing) still beats returning nothing. Returns None when not even
    ``min_tokens`` of output fit.
    """
    model = ctx.model
    if ctx.ledger.can_afford(model.worst_case(request)):
        return request
    lo, hi = 0, request.max_tokens - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ctx.ledger.can_afford(model.worst_case(request.with_(max_tokens=mid))):
            lo = mid
        else:
            hi = mid - 1
    if lo < min(min_tokens, request.max_tokens):
        return None
    return request.with_(max_tokens=lo)
