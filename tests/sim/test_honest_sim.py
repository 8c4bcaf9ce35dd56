"""The simulator's honesty knobs: logprob AUROC, systematic PRM errors,
hesitation markers, mid-step continuation, hidden difficulty."""

from __future__ import annotations

import random
import re

import pytest

from testtime.budget import Budget, BudgetLedger
from testtime.context import RunContext
from testtime.models.base import GenerationRequest
from testtime.search.base import split_steps
from testtime.search.solve_detect_verify import DEFAULT_MARKERS, completion_point
from testtime.sim import prm as sim_prm
from testtime.sim.policy import load as load_policy
from testtime.sim.prm import favoured_answer, step_correctness
from testtime.sim.suites import SUITES
from testtime.sim.tasks import generate_tasks, task_from_question
from testtime.verifiers.answer import extract_answer, normalize_answer

MARKER = re.compile(r"(?<![A-Za-z])(?:" + "|".join(re.escape(m) for m in DEFAULT_MARKERS) + r")(?![a-z])")


def auroc(pos: list[float], neg: list[float]) -> float:
    """P(a positive scores above a negative), ties half (Mann-Whitney)."""
    ranked = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += mid * sum(lab for _, lab in ranked[i:j])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


async def _step_logprobs(auroc_knob: float) -> tuple[list[float], list[float]]:
    """Mean token logprob per step, split into (correct steps, slipped steps)."""
    model = load_policy("default", logprob_auroc=auroc_knob)
    ok, slipped = [], []
    for task in generate_tasks(12, seed=4, difficulty=(0.55, 0.75), steps=(4, 6)):
        gens = await model.generate(GenerationRequest(prompt=task.question, n=60, seed=9, max_tokens=2000,
                                                      logprobs=True))
        for g in gens:
            steps = split_steps(g.text)
            right = step_correctness(task, steps)
            lps = [t.logprob for t in g.logprobs]
            at = 0
            for i, step in enumerate(steps):
                n = len(step.split())
                mean = sum(lps[at:at + n]) / n
                at += n
                if right[i]:
                    ok.append(mean)
                elif i == 0 or right[i - 1]:
                    slipped.append(mean)  # the step where the trajectory went wrong
    return ok, slipped


@pytest.mark.parametrize("knob", [0.55, 0.65, 0.85])
async def test_logprob_auroc_knob_is_what_a_step_confidence_measures(knob: float) -> None:
    ok, slipped = await _step_logprobs(knob)
    assert len(slipped) > 300 and len(ok) > 1000
    # Higher mean logprob = more confident = "correct" is the positive class.
    assert auroc(ok, slipped) == pytest.approx(knob, abs=0.035)


async def test_default_logprobs_are_a_weak_signal_not_an_oracle() -> None:
    assert load_policy("default").config.logprob_auroc == 0.65
    ok, slipped = await _step_logprobs(0.65)
    assert auroc(ok, slipped) < 0.72
    # The old simulator separated them almost perfectly; the oracle suite keeps that regime.
    assert SUITES["logprob_oracle"].make_policy().config.logprob_auroc >= 0.99


async def _classified_scores(prm: sim_prm.SimPRM, favoured_by: sim_prm.PRMConfig,
                             n_tasks: int = 25) -> dict[str, list[float]]:
    """PRM min-aggregated scores of sampled solutions, by final-answer class
    (``favoured``: the answer a PRM with config ``favoured_by`` favours)."""
    model = load_policy("default")
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=10**9)), rng=random.Random(0), seed=0)
    out: dict[str, list[float]] = {"right": [], "favoured": [], "other": []}
    for task in generate_tasks(n_tasks, seed=6, difficulty=(0.5, 0.8), steps=(3, 5)):
        fav = favoured_answer(favoured_by, task)
        gens = await model.generate(GenerationRequest(prompt=task.question, n=40, seed=2, max_tokens=2000))
        problem = task.problem()
        for g in gens:
            ans = normalize_answer(extract_answer(g.text))
            cls = "right" if ans == str(task.answer) else "favoured" if ans == fav else "other"
            out[cls].append(min(await prm.score_steps(problem, split_steps(g.text), ctx)))
    return out


async def test_favoured_wrong_answer_prm_prefers_that_answer_to_the_right_one() -> None:
    prm = sim_prm.load("biased", favoured_rate=1.0, length_bias=0.0)
    scores = await _classified_scores(prm, prm.config)
    assert len(scores["favoured"]) > 30 and len(scores["right"]) > 100
    mean = {k: sum(v) / len(v) for k, v in scores.items()}
    assert mean["favoured"] > mean["right"] > mean["other"] + 0.3
    # The favoured answer is a rare one: less frequent than the right answer and the other wrong ones.
    assert len(scores["favoured"]) < len(scores["other"])
    # Without the favoured error, that same answer is scored like any wrong one.
    plain = await _classified_scores(sim_prm.load("biased", favoured_rate=0.0, length_bias=0.0), prm.config)
    assert sum(plain["favoured"]) / len(plain["favoured"]) < sum(plain["right"]) / len(plain["right"]) - 0.3


async def test_favoured_answer_is_only_on_the_configured_share_of_problems() -> None:
    cfg = sim_prm.load("biased").config
    tasks = generate_tasks(400, seed=1)
    share = sum(favoured_answer(cfg, t) is not None for t in tasks) / len(tasks)
    assert share == pytest.approx(cfg.favoured_rate, abs=0.06)
    assert all(int(favoured_answer(cfg, t)) != t.answer for t in tasks if favoured_answer(cfg, t))


async def test_length_bias_rewards_longer_steps_regardless_of_correctness() -> None:
    task = generate_tasks(1, seed=3, difficulty=(0.2, 0.2), steps=(1, 1))[0]
    core = f"Step 1: {'add' if task.ops[0] >= 0 else 'subtract'} {abs(task.ops[0])} to {task.start} to get {task.answer}."
    filler = " This follows directly from the previous line."
    problem = task.problem()
    ctx = RunContext(model=load_policy(), ledger=BudgetLedger(Budget(tokens=10**9)), rng=random.Random(0), seed=0)

    async def mean_score(prm: sim_prm.SimPRM, reps: int) -> float:
        # Different trailing text = a different noise draw; average them out.
        vals = [(await prm.score_steps(problem, [core + filler * reps + f" ({k})"], ctx))[0] for k in range(150)]
        return sum(vals) / len(vals)

    biased = sim_prm.load("calibrated", length_bias=1.0)
    fair = sim_prm.load("calibrated")
    assert await mean_score(biased, 12) > await mean_score(biased, 1) + 0.04
    assert abs(await mean_score(fair, 12) - await mean_score(fair, 1)) < 0.04


@pytest.mark.parametrize("rate", [0.0, 0.15, 0.5])
async def test_hesitation_markers_appear_at_the_configured_rate(rate: float) -> None:
    model = load_policy("default", hesitation_rate=rate)
    steps = marked = final_marked = finals = 0
    for task in generate_tasks(10, seed=8, steps=(3, 6)):
        for g in await model.generate(GenerationRequest(prompt=task.question, n=40, seed=1, max_tokens=3000)):
            blocks = split_steps(g.text)
            steps += len(blocks)
            marked += sum(bool(MARKER.search(b)) for b in blocks)
            finals += 1
            if MARKER.search(blocks[-1]):
                final_marked += 1
                # On the final step the marker follows the stated answer: the
                # detector of solve_detect_verify finds a completion point before it.
                cut = completion_point(g.text, DEFAULT_MARKERS, ended=True)
                assert cut < len(g.text) and extract_answer(g.text[:cut]) == extract_answer(g.text)
    assert marked / steps == pytest.approx(rate, abs=0.035)
    assert final_marked / finals == pytest.approx(rate, abs=0.06)


def test_question_text_does_not_reveal_the_difficulty() -> None:
    tasks = generate_tasks(300, seed=2, difficulty=(0.0, 1.0))
    for t in tasks:
        assert "d=" not in t.question and f"{t.difficulty:.2f}" not in t.question
        assert task_from_question(t.question).difficulty == t.difficulty  # the simulator still knows
    # The opaque code in the tag carries no usable information about difficulty.
    codes = [int(re.match(r"\[sim \S+ #([0-9a-z]+)\]", t.question).group(1), 36) for t in tasks]
    diffs = [t.difficulty for t in tasks]

    def ranks(xs: list[float]) -> list[int]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0] * len(xs)
        for r, i in enumerate(order):
            out[i] = r
        return out

    rc, rd = ranks(codes), ranks(diffs)
    n = len(tasks)
    rho = 1 - 6 * sum((a - b) ** 2 for a, b in zip(rc, rd, strict=True)) / (n * (n * n - 1))
    assert abs(rho) < 0.15


async def test_mid_step_prefixes_are_continued_word_for_word_with_separators() -> None:
    model = load_policy("default", hesitation_rate=0.5)
    for task in generate_tasks(8, seed=11, steps=(3, 5)):
        full = (await model.generate(GenerationRequest(prompt=task.question, seed=3, max_tokens=3000)))[0].text
        words = list(re.finditer(r"\S+", full))
        for cut in range(1, len(words), 7):
            prefix = full[:words[cut].end()]
            cont = (await model.generate(GenerationRequest(prompt=task.question, prefix=prefix, seed=5,
                                                           max_tokens=3000)))[0].text
            text = prefix + cont
            steps = split_steps(text)
            assert [s.split(":")[0] for s in steps] == [f"Step {j}" for j in range(1, task.n_steps + 1)], text
            assert all(re.match(r"Step \d+: (add|subtract) \d+ (to|from) -?\d+ to get -?\d+\.", s) for s in steps)
            # The steps the prefix had finished are kept as they were.
            done = prefix.count("\n\n")
            assert steps[:done] == split_steps(full)[:done]
            assert extract_answer(text) is not None
    # A prefix that ends at a finished step without its separator gets one.
    task = generate_tasks(1, seed=12, steps=(3, 3))[0]
    first = (await model.generate(GenerationRequest(prompt=task.question, seed=1, max_tokens=3000,
                                                    stop=("\n\n",))))[0].text
    nxt = (await model.generate(GenerationRequest(prompt=task.question, prefix=first + " The end of step one.",
                                                  seed=1, max_tokens=3000)))[0].text
    assert re.search(r"\n\nStep 2: ", nxt) and "Step 1:" not in nxt
