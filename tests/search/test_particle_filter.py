"""Particle filtering (Puri et al.) on scripted models and PRMs."""

from __future__ import annotations

import random

import pytest

from tests.support.step_fakes import PROBLEM, make_ctx, within_budget
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.particle_filter import ParticleFilter
from testtime.search.particles import normalized_entropy, resample, softmax, transform_score
from testtime.verifiers.scripted import ScriptedPRM


def model() -> ScriptedModel:
    return ScriptedModel({
        "Good-route": ["The answer is 5."],
        "Bad-route": ["The answer is 7."],
        "*": ["Bad-route one\n\n", "Good-route one\n\n", "Bad-route two\n\n"],
    })


PRM = {"answer is 5": 0.95, "answer is 7": 0.3, "Good-route": 0.9, "Bad-route": 0.1}


@pytest.mark.parametrize("final", ["best", "vote"])
@pytest.mark.parametrize("resampling", ["multinomial", "systematic"])
async def test_follows_the_prm_to_the_right_answer(final: str, resampling: str) -> None:
    ctx = make_ctx(model(), prm=ScriptedPRM(PRM), budget="tokens=4000")
    result = await ParticleFilter(final=final, resampling=resampling).search(PROBLEM, ctx)
    assert result.answer == "5"
    assert within_budget(ctx)
    assert result.stats["finished"] >= 1
    tree = result.tree
    # Finished particles are never extended.
    assert all(not tree.nodes[tree.nodes[n]["parent"]]["terminal"] for n in tree.nodes if n != 0)


async def test_seeded_runs_are_reproducible() -> None:
    runs = []
    for _ in range(2):
        ctx = make_ctx(model(), prm=ScriptedPRM(PRM), seed=7)
        r = await ParticleFilter(n_particles=5).search(PROBLEM, ctx)
        runs.append((r.answer, sorted(r.tree.nodes(data="visits")), ctx.ledger.spent("tokens")))
    assert runs[0] == runs[1]


async def test_resampling_concentrates_on_high_scores() -> None:
    ctx = make_ctx(model(), prm=ScriptedPRM(PRM), seed=3)
    result = await ParticleFilter(n_particles=6, max_populations=1).search(PROBLEM, ctx)
    tree = result.tree
    first = [n for n in tree.successors(0)]
    good = [n for n in first if "Good" in tree.nodes[n]["text"]]
    bad = [n for n in first if "Bad" in tree.nodes[n]["text"]]
    # The six root particles went out as one n=6 request; identical steps
    # share a node: 2 distinct bad states (4 particles), 1 good (2 particles).
    assert len(good) == 1 and len(bad) == 2
    # logit weights: 9 for 0.9 vs 1/9 for 0.1 -> good survivors take ~98% of the draws.
    assert sum(tree.nodes[n]["visits"] for n in good) >= 5
    assert sum(bool(tree.nodes[n].get("pruned")) for n in bad) >= 1


async def test_stops_within_budget() -> None:
    never_done = ScriptedModel({"*": ["still going\n\n"]})
    ctx = make_ctx(never_done, prm=ScriptedPRM({}), budget="tokens=1500")
    result = await ParticleFilter().search(PROBLEM, ctx)
    assert result.stopped_reason == "budget_exhausted"
    assert within_budget(ctx)
    assert result.text.startswith("still going")


def test_particle_count_is_derived_from_the_budget() -> None:
    pf = ParticleFilter(max_particles=16)
    counts = []
    for tokens in (1000, 5000, 20000, 10**7):
        ctx = make_ctx(model(), prm=ScriptedPRM(PRM), budget=f"tokens={tokens}")
        counts.append(pf.particle_count(PROBLEM, ctx))
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] == 16
    assert counts[1] > counts[0]
    assert pf.particle_count(PROBLEM, make_ctx(model())) == 8  # unlimited: default
    assert ParticleFilter(3).particle_count(PROBLEM, make_ctx(model(), budget="tokens=10")) == 3


def test_weight_helpers() -> None:
    assert softmax([0.0, 0.0]) == [0.5, 0.5]
    w = softmax([transform_score(0.9), transform_score(0.1)])
    assert w[0] == pytest.approx(81 / 82)  # (0.9/0.1) / (0.1/0.9) = 81
    assert softmax([1.0, 0.0], temperature=1e-3)[0] == pytest.approx(1.0)
    assert normalized_entropy([0.25] * 4) == pytest.approx(1.0)
    assert normalized_entropy([1.0, 0.0, 0.0]) == 0.0
    assert normalized_entropy([1.0]) == 1.0
    rng = random.Random(0)
    assert resample([0.0, 1.0, 0.0], 5, rng, "systematic") == [1] * 5
    assert resample([0.0, 1.0, 0.0], 5, rng, "multinomial") == [1] * 5
    # Systematic resampling gives each index floor/ceil of N * w.
    picks = resample([0.5, 0.25, 0.25], 4, rng, "systematic")
    assert picks.count(0) == 2 and picks.count(1) == 1 and picks.count(2) == 1
    with pytest.raises(UserError):
        resample([1.0], 1, rng, "stratified-ish")


def test_bad_options_are_user_errors() -> None:
    for kw in ({"temperature": 0}, {"final": "first"}, {"transform": "exp"}, {"n_particles": 0}):
        with pytest.raises(UserError):
            ParticleFilter(**kw)
