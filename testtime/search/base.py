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
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import networkx as nx

from testtime.budget import Usage
from testtime.context import RunContext
from testtime.models.base import Generation, GenerationRequest
from testtime.trace.events import redact, redact_text
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
        graph = self.graph
        nodes = graph.nodes
        step = nodes[parent]["step"] + 1
        # add_edge adds the new node (empty data) before the edge, as add_node then
        # add_edge would; filling its data dict after is the same node, cheaper.
        graph.add_edge(parent, node)
        nodes[node].update(text=text, step=step, score=score, tokens=tokens, visits=0,
                           value=0.0, terminal=terminal, parent=parent, **attrs)
        tracer = self.ctx.tracer
        if tracer.sinks:
            # What emit("node_added", node=..., ...) makes, built redacted (fixed keys).
            tracer.emit_redacted("node_added", {
                "node": node, "parent": parent, "step": step, "score": redact(score), "tokens": tokens,
                "terminal": terminal,
                "text": redact_text(text[:4000]) if type(text) is str else redact(text[:4000]),
            })
        return node

    def set(self, node: int, **attrs: Any) -> None:
        self.graph.nodes[node].update(attrs)

    def scored(self, node: int, **fields: Any) -> None:
        """Update ``node``'s numbers (score, visits, q, prior, f, g, h, weight...)
        and trace them as one ``node_scored`` event, so a trace reader sees the
        numbers the strategy used, not only those known when the node was added."""
        self.graph.nodes[node].update(fields)
        self.ctx.tracer.emit("node_scored", node=node, **fields)

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
    logprobs = logprobs or prm_wants_logprobs(ctx, verifier_first=False)
    return solution_request(problem, ctx, n=n, prefix=prefix,
                            max_tokens=max_tokens or ctx.step_max_tokens,
                            stop=(ctx.step_delimiter,), temperature=temperature,
                            logprobs=logprobs)


def prm_wants_logprobs(ctx: RunContext, *, verifier_first: bool = True) -> bool:
    """Whether sampling calls should ask for token logprobs for the PRM.

    True when ``ctx.prm`` scores from the policy's own logprobs
    (``wants_logprobs``, e.g. ``prm:confidence``) and the backend returns
    them: asking in the sampling call lets the PRM score what was generated
    instead of sending a probe request per step. With ``verifier_first``
    (full-solution samplers, which score with the verifier when there is
    one) a verifier makes the PRM unused and the answer False.
    """
    if ctx.prm is None or not getattr(ctx.prm, "wants_logprobs", False):
        return False
    if verifier_first and ctx.verifier is not None:
        return False
    return bool(ctx.model.capabilities.logprobs)


def is_terminal_step(gen: Generation, step_text: str) -> bool:
    """A step ends the solution when it states a final answer or the model
    stopped on its own (not at the step delimiter, not at the length limit)."""
    if has_final_answer(step_text):
        return True
    return gen.finish_reason == "eos"


def vote(candidates: Sequence[Candidate], *, weighted: bool = False,
         keys: Sequence[str | None] | None = None) -> tuple[str | None, dict[str, float]]:
    """Majority (or score-weighted) vote over extracted answers.

    Returns the winning normalised answer and the tally. Ties go to the
    answer seen first, so results are deterministic for a given order. In a
    weighted vote an unscored candidate (its scoring was refused) casts no
    vote at all: counting it as a score of 0 would still shape the tally's
    share and hide that the vote is short of what was sampled.

    ``keys``: :func:`normalized_answers` of ``candidates``, when the caller
    has them already.
    """
    tally: dict[str, float] = defaultdict(float)
    first_seen: dict[str, int] = {}
    if keys is None:
        keys = normalized_answers(candidates)
    for i, c in enumerate(candidates):
        key = keys[i]
        if key is None or (weighted and c.score is None):
            continue
        w = float(c.score) if weighted else 1.0  # type: ignore[arg-type]
        tally[key] += w
        first_seen.setdefault(key, i)
    if not tally:
        return None, {}
    best = max(tally, key=lambda k: (tally[k], -first_seen[k]))
    return best, dict(tally)


def normalized_answers(candidates: Sequence[Candidate]) -> list[str | None]:
    """``normalize_answer(c.answer)`` for each candidate, each distinct answer normalised once."""
    seen: dict[str | None, str | None] = {}
    out: list[str | None] = []
    for c in candidates:
        a = c.answer
        key = seen.get(a, seen)
        if key is seen:
            key = seen[a] = normalize_answer(a)
        out.append(key)  # type: ignore[arg-type]
    return out


def candidate_from(gen: Generation, *, prefix: str = "", score: float | None = None) -> Candidate:
    text = (prefix + gen.text) if prefix else gen.text
    return Candidate(text=text, answer=extract_answer(text), score=score,
                     tokens=gen.usage.output_tokens)


def answer_counts(candidates: Sequence[Candidate]) -> Counter[str]:
    return Counter(k for c in candidates if (k := normalize_answer(c.answer)) is not None)


#: Samples a budget-derived n draws when the budget limits nothing a sample
#: spends (no token, USD or call limit -- say, only a time limit).
UNBOUNDED_N = 32
#: A ceiling on any budget-derived n: a runaway guard, far above what the
#: bench budgets afford (a user-given n or max_n is not limited by it).
MAX_DERIVED_N = 4096
#: The shortest output the last, shortened samples are given when a
#: full-length one no longer fits (budget forcing); below it a sample could
#: hardly state an answer.
MIN_SAMPLE_TOKENS = 32

#: The dimensions a call spends on (every budget dimension but wall time).
SPEND_DIMENSIONS = ("tokens", "input_tokens", "output_tokens", "calls", "usd")


def affordable_n(ctx: RunContext, request: GenerationRequest, *, cap: int = 64,
                 plus: Usage | None = None) -> int:
    """The largest n (<= cap) whose worst case fits in the remaining budget.

    Strategies use it to derive sample counts from the budget instead of a
    fixed default. ``plus`` is held on top (calls planned but not yet
    reserved). Returns 0 when not even one sample fits.
    """
    model = ctx.model
    held = plus if plus is not None else Usage()
    # Integers only: a float cap (n=2.5) would make the bisection below stall.
    lo, hi = 0, max(int(cap), 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ctx.ledger.can_afford(held + model.worst_case(request.with_(n=mid))):
            lo = mid
        else:
            hi = mid - 1
    return lo


def derived_n_cap(ctx: RunContext, request: GenerationRequest, max_n: int | None = None) -> int:
    """How many samples a budget-derived n may draw at most.

    ``max_n`` when given (a cap the user chose); else :data:`MAX_DERIVED_N`
    when the budget limits something a sample spends -- the budget, not a
    count, then ends sampling -- and :data:`UNBOUNDED_N` when it does not.
    """
    if max_n is not None:
        return max(int(max_n), 0)
    worst = ctx.model.worst_case(request.with_(n=1))
    for dim in SPEND_DIMENSIONS:
        if worst.amount(dim) > 0 and ctx.ledger.remaining(dim) != float("inf"):
            return MAX_DERIVED_N
    return UNBOUNDED_N


def plan_batches(ctx: RunContext, request: GenerationRequest, want: int, *, batch: int = 8) -> list[int]:
    """Sizes of the calls (``n`` each, at most ``batch``) the budget pays for now.

    Up to ``want`` samples in all; each call's worst case (its own prompt
    included) is counted on top of the calls planned before it, so all of
    them fit together.
    """
    batch = max(int(batch), 1)
    want = max(int(want), 0)
    if want == 0:
        return []
    # Full batches first, all at one worst case: how many fit is one pass over
    # the ledger (not a search per call), summed as the reservations will be.
    full = want // batch
    w_full = ctx.model.worst_case(request.with_(n=batch)) if full else None
    m = ctx.ledger.affordable_repeats(w_full, full) if w_full is not None else 0
    sizes = [batch] * m
    if m == full and want % batch:
        cap = want % batch
    elif m < full:
        cap = batch  # the next full batch does not fit: as many samples as do
    else:
        return sizes
    held = w_full.times(m) if m else None
    k = affordable_n(ctx, request, cap=cap, plus=held)
    if k:
        sizes.append(k)
    return sizes


def sample_candidate(gen: Generation) -> Candidate:
    """A full-solution sample as a candidate.

    A sample cut at its length limit before stating a final answer gets
    ``answer=None`` (``data["truncated"]``): the last number in it is a
    running total, not its answer, and must not vote.
    """
    text = gen.text
    cand = Candidate(text=text, answer=extract_answer(text), tokens=gen.usage.output_tokens)  # candidate_from(gen)
    if gen.finish_reason == "length" and not has_final_answer(text):
        cand.answer = None
        cand.data["truncated"] = True
    return cand


async def draw_solutions(problem: Problem, ctx: RunContext, *, n: int | None = None,
                         max_n: int | None = None, batch: int = 8, logprobs: bool = False,
                         role: str = "solve", min_tokens: int = MIN_SAMPLE_TOKENS,
                         ) -> tuple[list[Candidate], str]:
    """Draw ``n`` full solutions, or as many as the budget pays for (``n=None``), anytime.

    Calls (of up to ``batch`` samples each) are sent concurrently, as many as
    the remaining budget covers at their worst case; whenever one settles,
    the slack it returns pays for more. When not even one full-length sample
    fits and nothing is in flight, the last samples are shortened
    (:func:`fit_request`, down to ``min_tokens`` of output) until not even
    that fits. ``n`` (a user's choice) and ``max_n`` cap the number of
    samples requested; with neither, :func:`derived_n_cap` does.

    Returns the candidates in the order their calls were sent and
    ``"done"`` (the count was reached) or ``"budget_exhausted"`` (the budget
    ended sampling, or a call was refused or failed; the others still count).
    """
    import asyncio
    import itertools

    from testtime.errors import SearchStop

    template = solution_request(problem, ctx, n=1, logprobs=logprobs)
    target = max(int(n), 0) if n is not None else derived_n_cap(ctx, template, max_n)
    min_tokens = max(int(min_tokens), 1)
    order = itertools.count()
    results: dict[int, list[Candidate]] = {}
    pending: dict[asyncio.Future[Any], int] = {}
    # Calls report here when they end, so waiting costs O(1) per call (asyncio.wait
    # would add and remove a callback on every call in flight at every wake-up).
    finished: deque[asyncio.Future[Any]] = deque()
    wake: list[asyncio.Future[None] | None] = [None]
    loop = asyncio.get_running_loop()
    # Unseeded, every request of one size is the same (frozen) request: build it once.
    same: dict[tuple[int, int | None], GenerationRequest] | None = {} if ctx.seed is None else None
    launched = 0
    stopped = "done"
    halt = False  # a refusal or a failed call: send nothing more

    def on_done(task: asyncio.Future[Any]) -> None:
        finished.append(task)
        waiter = wake[0]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def request_of(size: int, max_tokens: int | None = None) -> GenerationRequest:
        if same is None:
            return solution_request(problem, ctx, n=size, max_tokens=max_tokens, logprobs=logprobs)
        req = same.get((size, max_tokens))
        if req is None:
            req = same[(size, max_tokens)] = solution_request(problem, ctx, n=size, max_tokens=max_tokens,
                                                              logprobs=logprobs)
        return req

    def launch(request: GenerationRequest) -> None:
        nonlocal launched
        # The call itself is the task (no wrapper coroutine per call); its
        # generations become candidates when it is collected below.
        task = loop.create_task(ctx.generate(request, role=role))
        task.add_done_callback(on_done)
        pending[task] = next(order)
        launched += request.n

    try:
        while True:
            if not halt and launched < target:
                sizes = plan_batches(ctx, template, target - launched, batch=batch)
                for size in sizes:
                    launch(request_of(size))
                if not sizes and not pending:
                    # Nothing in flight will return slack: shorten the next sample.
                    short = fit_request(ctx, template, min_tokens=min_tokens)
                    if short is None:
                        stopped = "budget_exhausted"
                        break
                    launch(request_of(1, short.max_tokens))
            if not pending:
                break
            if not finished:
                wake[0] = loop.create_future()
                try:
                    await wake[0]
                finally:
                    wake[0] = None
            while finished:
                task = finished.popleft()
                idx = pending.pop(task)
                try:
                    gens = task.result()
                except SearchStop:
                    stopped = "budget_exhausted"
                    halt = True
                else:
                    results[idx] = [sample_candidate(g) for g in gens]
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    return [c for i in sorted(results) for c in results[i]], stopped


def fit_request(ctx: RunContext, request: GenerationRequest, *, min_tokens: int = 16) -> GenerationRequest | None:
    """``request`` shrunk until its worst case fits the budget.

    When the budget cannot pay for a full-length sample, a shorter one
    (budget forcing) still beats returning nothing. What shrinks is the
    model's :meth:`~testtime.models.base.Model.fit_size` knob: ``max_tokens``,
    or a thinking model's thinking budget (its answer keeps its own). Returns
    None when not even ``min_tokens`` of it fit.
    """
    model = ctx.model
    size = model.fit_size(request)
    fits = ctx.ledger.largest_fit(lambda k: model.worst_case(model.resized(request, k)), size)
    if fits == size:
        return request
    if fits < min(min_tokens, size):
        return None
    return model.resized(request, fits)
