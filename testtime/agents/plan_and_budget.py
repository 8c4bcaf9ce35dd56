"""``plan_and_budget``: decompose, estimate complexity, budget, answer in order.

Plan-and-Budget ("Plan and Budget: Effective and Efficient Test-Time Scaling
on Large Language Model Reasoning"): the model first breaks the question into
sub-questions and rates each one's complexity; the token budget left for
answering is then split across them by a schedule, the sub-questions are
answered in order (each within its share, enforced by a child ledger), and a
final call composes the answer from the sub-answers.

Schedules (weights over the sub-questions still to answer):

* ``uniform``: equal shares;
* ``proportional``: share proportional to complexity (harder gets more);
* ``decaying``: complexity x ``decay`` ** position -- early sub-questions,
  which later ones build on, get more.

Shares are recomputed before every sub-question from what is actually left,
so budget a sub-answer did not use rolls over to the ones after it. When the
budget limits no token dimension, the pool is ``max_tokens`` per sub-question.
Efficiency is reported with :func:`e3` (accuracy^2 / mean tokens).
"""

from __future__ import annotations

import re
from typing import Any

from testtime.budget import Budget
from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.models.base import GenerationRequest
from testtime.search.base import Candidate, Problem, SearchResult, SearchStrategy, SearchTree, fit_request
from testtime.verifiers.answer import extract_answer

SCHEDULES = ("uniform", "proportional", "decaying")

PLAN_SYSTEM = (
    "You plan how to solve problems. Break the question into short sub-questions that, "
    "answered in order, solve it. Do not answer them."
)
PLAN_PROMPT = (
    "Question: {question}\n\n"
    "Write at most {k} sub-questions, one per line, each as:\n"
    "<number>. [<complexity 1-5>] <sub-question>\n"
    "where complexity 1 is trivial and 5 is hardest."
)
SOLVE_SYSTEM = "Answer the sub-question concisely, building on the earlier answers. End with 'The answer is X.'"
COMPOSE_SYSTEM = (
    "Combine the partial answers into the answer to the original question. "
    "Finish with a line of the form 'The answer is X.'"
)

_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022]|step\s*\d+\s*[.:)]?)\s*(.+?)\s*$", re.I)
_COMPLEXITY = re.compile(r"\[\s*(\d)(?:\s*/\s*5)?\s*\]|\(\s*(?:complexity|difficulty)?\s*[:=]?\s*(\d)(?:\s*/\s*5)?\s*\)"
                         r"|(?:complexity|difficulty)\s*[:=]?\s*(\d)", re.I)


def _brief(answer: str, max_words: int = 40) -> str:
    """What later calls see of a sub-answer: its stated answer, else its last words.

    Re-sending whole sub-answers would spend the later shares on input tokens.
    """
    stated = extract_answer(answer) if answer else None
    if stated and re.search(r"answer|boxed|####", answer, re.I):
        return f"The answer is {stated}."
    words = answer.split()
    return " ".join(words[-max_words:]) if words else "(no answer)"


def e3(accuracy: float, mean_tokens: float) -> float:
    """The E3 efficiency metric: accuracy^2 / mean tokens (0 when no tokens)."""
    return accuracy**2 / mean_tokens if mean_tokens > 0 else 0.0


def heuristic_complexity(text: str) -> int:
    """A 1-5 guess from length and the amount of arithmetic/notation in a sub-question."""
    words = len(text.split())
    symbols = len(re.findall(r"[\d+\-*/^=()]", text))
    return max(1, min(5, 1 + words // 12 + symbols // 6))


def parse_plan(text: str, question: str, *, max_items: int = 5) -> list[tuple[str, int]]:
    """``[(sub_question, complexity 1-5)]`` from a plan; ``[(question, guess)]`` if none parse."""
    items: list[tuple[str, int]] = []
    for line in (text or "").splitlines():
        m = _ITEM.match(line)
        if not m:
            continue
        body = m.group(1)
        c = _COMPLEXITY.search(body)
        complexity = next((int(g) for g in c.groups() if g), 0) if c else 0
        body = _COMPLEXITY.sub("", body).strip(" :-")
        if len(body.split()) < 2:
            continue
        complexity = min(5, max(1, complexity)) if complexity else heuristic_complexity(body)
        items.append((body, complexity))
        if len(items) >= max_items:
            break
    return items or [(question, heuristic_complexity(question))]


def schedule_weights(complexities: list[int], schedule: str, decay: float, start: int = 0) -> list[float]:
    """Weights of the sub-questions ``start..`` under ``schedule``."""
    out = []
    for i, c in enumerate(complexities[start:], start=start):
        if schedule == "uniform":
            out.append(1.0)
        elif schedule == "proportional":
            out.append(float(c))
        else:
            out.append(float(c) * decay**i)
    return out


class PlanAndBudget(SearchStrategy):
    """Decompose, budget sub-questions by complexity, answer in order, compose.

    Args:
        schedule: ``uniform``, ``proportional`` (default) or ``decaying``.
        decay: per-position factor of the decaying schedule, in (0, 1].
        max_subquestions: cap on the plan's length.
        plan_tokens: max tokens of the plan.
        compose_tokens: tokens held back for the final composition.
        min_tokens: smallest answer worth asking for; smaller shares skip.
    """

    name = "plan_and_budget"

    def __init__(self, schedule: str = "proportional", *, decay: float = 0.7, max_subquestions: int = 5,
                 plan_tokens: int = 160, compose_tokens: int = 96, min_tokens: int = 8) -> None:
        if schedule not in SCHEDULES:
            raise UserError(f"unknown plan_and_budget schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 < decay <= 1:
            raise UserError(f"decay must be in (0, 1], got {decay}")
        if max_subquestions < 1:
            raise UserError(f"max_subquestions must be >= 1, got {max_subquestions}")
        self.schedule = schedule
        self.decay = decay
        self.max_subquestions = max_subquestions
        self.plan_tokens = plan_tokens
        self.compose_tokens = compose_tokens
        self.min_tokens = min_tokens

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        ctx.tracer.emit("strategy_start", strategy=self.name, params=self.params())
        stopped = "done"
        plan_text = ""
        plan_req = GenerationRequest(prompt=PLAN_PROMPT.format(question=problem.question, k=self.max_subquestions),
                                     system=PLAN_SYSTEM, max_tokens=self.plan_tokens, temperature=0.0,
                                     seed=ctx.next_seed())
        fitted = fit_request(ctx, plan_req, min_tokens=self.min_tokens)
        if fitted is not None:
            try:
                plan_text = (await ctx.generate(fitted, role="plan"))[0].text
            except SearchStop:
                stopped = "budget_exhausted"
        subs = parse_plan(plan_text, problem.question, max_items=self.max_subquestions)
        complexities = [c for _, c in subs]
        ctx.tracer.emit("note", message="plan", subquestions=[q for q, _ in subs], complexities=complexities)

        tree = SearchTree(ctx)
        parent = 0
        answers: list[str] = []
        allocations: list[int] = []
        used: list[int] = []
        no_token_limit = ctx.ledger.remaining("tokens") == float("inf")
        pool_left = ctx.max_tokens * len(subs)  # only used when tokens are unlimited
        for i, (sub, _) in enumerate(subs):
            weights = schedule_weights(complexities, self.schedule, self.decay, start=i)
            if no_token_limit:
                pool = pool_left
            else:
                pool = max(0.0, ctx.ledger.remaining("tokens") - self.compose_tokens)
            share = int(pool * weights[0] / sum(weights))
            allocations.append(share)
            text, spent = await self._answer(problem, ctx, i, sub, subs, answers, share)
            used.append(spent)
            pool_left = max(0, pool_left - spent)
            if text is None:
                stopped = "budget_exhausted"
                text = ""
            answers.append(text)
            # One node per sub-question, chained in answer order; its score is
            # the schedule's fraction of the pool it was given (what this
            # strategy decides by), with complexity and tokens alongside.
            parent = tree.add(parent, f"Q{i + 1}: {sub}\n{text}", score=weights[0] / sum(weights),
                              tokens=spent, terminal=i == len(subs) - 1, complexity=subs[i][1],
                              allocated=share, score_source="schedule_share")

        final_text, final_answer = await self._compose(problem, ctx, subs, answers)
        if final_text is None:
            stopped = "budget_exhausted"
            final_text = answers[-1] if answers else ""
            final_answer = extract_answer(final_text)
        cand = Candidate(text=final_text, answer=final_answer, tokens=ctx.ledger.usage.output_tokens)
        result = SearchResult(
            answer=final_answer, text=final_text, candidates=[cand], tree=tree.graph, stopped_reason=stopped,
            stats={"schedule": self.schedule, "subquestions": [q for q, _ in subs],
                   "complexities": complexities, "allocated_tokens": allocations,
                   "used_tokens": used, "sub_answers": [extract_answer(a) for a in answers]},
        )
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=final_answer, stopped_reason=stopped)
        return result

    async def _answer(self, problem: Problem, ctx: RunContext, i: int, sub: str,
                      subs: list[tuple[str, int]], answers: list[str], share: int) -> tuple[str | None, int]:
        """Answer sub-question ``i`` inside a child ledger of ``share`` tokens."""
        if share < self.min_tokens:
            return None, 0
        child = ctx.ledger.child(Budget(tokens=share), name=f"sub{i + 1}")
        sub_ctx = ctx.derive(ledger=child)
        earlier = "".join(f"Q{j + 1}: {q}\nA{j + 1}: {_brief(a)}\n"
                          for j, ((q, _), a) in enumerate(zip(subs, answers, strict=False)))
        prompt = f"Original question: {problem.question}\n\n{earlier}Q{i + 1}: {sub}"
        request = GenerationRequest(prompt=prompt, system=SOLVE_SYSTEM, max_tokens=max(share, 1),
                                    temperature=ctx.temperature, seed=ctx.next_seed())
        fitted = fit_request(sub_ctx, request, min_tokens=self.min_tokens)
        if fitted is None:
            return None, 0
        try:
            gens = await sub_ctx.generate(fitted, role="solve")
        except SearchStop:
            return None, int(child.usage.tokens)
        return gens[0].text.strip(), int(child.usage.tokens)

    async def _compose(self, problem: Problem, ctx: RunContext, subs: list[tuple[str, int]],
                       answers: list[str]) -> tuple[str | None, str | None]:
        steps = "".join(f"Q{j + 1}: {q}\nA{j + 1}: {_brief(a)}\n"
                        for j, ((q, _), a) in enumerate(zip(subs, answers, strict=True)))
        request = GenerationRequest(prompt=f"Original question: {problem.question}\n\n{steps}\nFinal answer?",
                                    system=COMPOSE_SYSTEM, max_tokens=self.compose_tokens, temperature=0.0,
                                    seed=ctx.next_seed())
        fitted = fit_request(ctx, request, min_tokens=self.min_tokens)
        if fitted is None:
            return None, None
        try:
            text = (await ctx.generate(fitted, role="compose"))[0].text.strip()
        except SearchStop:
            return None, None
        answer = extract_answer(text)
        if answer is None:
            # The composition stated nothing usable: fall back to the last sub-answer.
            answer = next((a for a in (extract_answer(x) for x in reversed(answers)) if a), None)
        return text, answer

    def params(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "decay": self.decay, "max_subquestions": self.max_subquestions,
                "plan_tokens": self.plan_tokens, "compose_tokens": self.compose_tokens}
