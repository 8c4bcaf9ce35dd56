"""Entropic PF: annealing on constructed weights, look-ahead modulation, end to end."""

from __future__ import annotations

import pytest

from tests.support.step_fakes import PROBLEM, make_ctx, within_budget
from testtime.errors import UserError
from testtime.models.scripted import ScriptedModel
from testtime.search.base import SearchTree
from testtime.search.entropic_pf import (
    EntropicParticleFilter,
    anneal_temperature,
    annealed_weights,
    entropy_threshold,
    modulate,
)
from testtime.search.particle_filter import ParticleFilter
from testtime.search.particles import normalized_entropy, softmax
from testtime.verifiers.scripted import ScriptedPRM


def test_threshold_schedule_is_strongest_early() -> None:
    ts = [entropy_threshold(t) for t in range(6)]
    assert ts[0] == pytest.approx(0.8) and ts[1] == pytest.approx(0.65) and ts[2] == pytest.approx(0.575)
    assert ts == sorted(ts, reverse=True) and ts[-1] > 0.5
    assert entropy_threshold(50) == pytest.approx(0.5)
    assert entropy_threshold(0, base=0.3, early_boost=0.0) == pytest.approx(0.3)
    with pytest.raises(UserError):
        entropy_threshold(0, base=1.5)


def test_annealing_kicks_in_below_the_threshold() -> None:
    peaked = [5.0, 0.0, 0.0, 0.0]  # one particle takes ~98% of the weight
    assert normalized_entropy(softmax(peaked)) < 0.2
    weights, temp, annealed = annealed_weights(peaked, 1.0, 0.6)
    assert annealed and temp > 1.0
    assert normalized_entropy(weights) == pytest.approx(0.6, abs=1e-6)  # smallest T restoring it
    assert weights[0] == max(weights)  # flattened, order kept
    # Exactly the temperature the pure search returns.
    assert temp == pytest.approx(anneal_temperature(peaked, 1.0, 0.6))
    assert normalized_entropy(softmax(peaked, temp * 0.95)) < 0.6


def test_annealing_leaves_diverse_weights_alone() -> None:
    flat = [0.3, 0.2, 0.25, 0.1]
    assert normalized_entropy(softmax(flat)) > 0.95
    weights, temp, annealed = annealed_weights(flat, 1.0, 0.8)
    assert not annealed and temp == 1.0 and weights == softmax(flat)


def test_annealing_is_bounded_by_max_temperature() -> None:
    assert anneal_temperature([100.0, 0.0, 0.0], 1.0, 0.99, max_temperature=4.0) == 4.0


def test_modulate_blends_scores() -> None:
    assert modulate(0.5, 0.9, 0.5) == pytest.approx(0.7)
    assert modulate(0.5, 0.1, 0.25) == pytest.approx(0.4)
    assert modulate(0.5, None, 0.5) == 0.5


async def test_probe_lookahead_changes_weights_as_expected() -> None:
    model = ScriptedModel({"P-state": ["great next\n\n"], "Q-state": ["awful next\n\n"]})
    prm = ScriptedPRM({"great": 0.9, "awful": 0.1}, default=0.5)
    ctx = make_ctx(model, prm=prm)
    tree = SearchTree(ctx)
    p, q = tree.add(0, "P-state", score=0.5), tree.add(0, "Q-state", score=0.5)
    epf = EntropicParticleFilter(alpha=0.5, lookahead_mode="probe", lookahead_tokens=7, anneal=False)
    stats: dict = {}
    slots = [p, q, p]
    scores = await epf._modulate(PROBLEM, ctx, tree, slots, [0.5, 0.5, 0.5], stats)
    assert scores == pytest.approx([0.7, 0.3, 0.7])
    assert tree[p]["lookahead_score"] == 0.9 and tree[q]["lookahead_score"] == 0.1
    assert stats["lookaheads"] == 2 and stats["prm_calls"] == 2  # one probe per distinct state
    assert [r.max_tokens for r in model.requests] == [7, 7]
    assert list(tree.graph.nodes) == [0, p, q]  # probes are not kept as steps
    w_plain = epf._weights([0.5, 0.5, 0.5], 0, stats)
    w_mod = epf._weights(scores, 0, stats)
    assert w_plain == pytest.approx([1 / 3] * 3)
    assert w_mod[0] > w_plain[0] > w_mod[1]
    # Off switch, and a lone particle is never probed.
    assert await EntropicParticleFilter(lookahead=False)._modulate(
        PROBLEM, ctx, tree, slots, [0.5] * 3, {}) == [0.5] * 3
    assert await epf._modulate(PROBLEM, ctx, tree, [p], [0.5], {}) == [0.5]


def trap_model() -> ScriptedModel:
    # The PRM loves the first step of a route that ends wrong (overconfident early).
    return ScriptedModel({"Trap-route": ["The answer is 7."], "Sound-route": ["The answer is 5."],
                          "*": ["Trap-route first\n\n", "Sound-route first\n\n"]})


TRAP_PRM = {"answer is 5": 0.95, "answer is 7": 0.05, "Trap-route": 0.99, "Sound-route": 0.6}


async def test_entropic_pf_escapes_the_early_trap_that_pf_falls_into() -> None:
    ctx = make_ctx(trap_model(), prm=ScriptedPRM(TRAP_PRM), seed=0)
    plain = await ParticleFilter(n_particles=4).search(PROBLEM, ctx)
    assert plain.answer == "7"  # all particles resampled onto the trap

    ctx = make_ctx(trap_model(), prm=ScriptedPRM(TRAP_PRM), seed=0)
    result = await EntropicParticleFilter(n_particles=4).search(PROBLEM, ctx)
    assert result.answer == "5"
    # Round 0 does not resample (every particle still judges the root); in
    # round 1 each step-1 state is judged by the step its particle drew next,
    # and the trap's successor gives it away.
    assert result.stats["lookaheads"] == 4
    assert within_budget(ctx)
    assert "lookahead" not in ctx.ledger.usage_by_role()  # reused: no extra generation

    ctx = make_ctx(trap_model(), prm=ScriptedPRM(TRAP_PRM), seed=0)
    probe = await EntropicParticleFilter(n_particles=4, lookahead_mode="probe").search(PROBLEM, ctx)
    assert probe.answer == "5" and probe.stats["lookaheads"] == 4
    assert ctx.ledger.usage_by_role()["lookahead"].calls == 4  # probe-and-discard pays per state

    # Annealing alone: round 0's weights (entropy 0.56 < 0.8) are flattened so
    # sound particles survive the first resampling.
    ctx = make_ctx(trap_model(), prm=ScriptedPRM(TRAP_PRM), seed=0)
    annealed = await EntropicParticleFilter(n_particles=4, lookahead=False).search(PROBLEM, ctx)
    assert annealed.answer == "5"
    first = annealed.stats["annealed"][0]
    assert first["round"] == 0 and first["entropy_before"] < first["threshold"] == pytest.approx(0.8)
    assert first["entropy_after"] == pytest.approx(0.8, abs=1e-3) and first["temperature"] > 1


async def test_stops_within_budget() -> None:
    ctx = make_ctx(trap_model(), prm=ScriptedPRM(TRAP_PRM, tokens_per_step=4), budget="tokens=900")
    result = await EntropicParticleFilter().search(PROBLEM, ctx)
    assert within_budget(ctx)
    assert result.answer in {"5", "7"}


def test_bad_options_are_user_errors() -> None:
    for kw in ({"alpha": 1.5}, {"entropy_base": -0.1}, {"lookahead_tokens": 0}, {"temperature": -1}):
        with pytest.raises(UserError):
            EntropicParticleFilter(**kw)


async def test_reused_lookahead_is_the_particles_next_step() -> None:
    model = ScriptedModel({})
    prm = ScriptedPRM({"great": 0.9, "awful": 0.1}, default=0.5)
    ctx = make_ctx(model, prm=prm)
    tree = SearchTree(ctx)
    p, q = tree.add(0, "P-state", score=0.5), tree.add(0, "Q-state", score=0.2)
    gp, aq = tree.add(p, "great next", score=0.9), tree.add(q, "awful next", score=0.1)
    epf = EntropicParticleFilter(alpha=0.5, anneal=False)
    stats: dict = {}
    slots = [gp, aq]
    scores = await epf._modulate(PROBLEM, ctx, tree, slots, [0.9, 0.1], stats)
    # The *states* P and Q are weighted, modulated by their successors...
    assert scores == pytest.approx([0.5 * 0.5 + 0.5 * 0.9, 0.5 * 0.2 + 0.5 * 0.1])
    # ...and the successors are the nodes the particles hold: no probe was
    # generated or scored, no node was added.
    assert model.requests == [] and stats.get("prm_calls", 0) == 0
    assert list(tree.graph.nodes) == [0, p, q, gp, aq]
    assert tree[gp]["lookahead_of"] == p and tree[gp]["modulated_score"] == pytest.approx(0.7)
    assert stats["lookaheads"] == 2
    # Nothing to choose between while every particle judges the root.
    assert not epf._resample_now(tree, [p, q], 0) and epf._resample_now(tree, slots, 1)
    assert EntropicParticleFilter(lookahead_mode="probe")._resample_now(tree, [p, q], 0)


async def test_reuse_costs_exactly_what_plain_pf_costs() -> None:
    from testtime.budget import Budget
    from testtime.sim.suites import get_suite

    suite = get_suite("overconfident_strong")
    for problem in suite.problems(4, seed=3):
        spent = {}
        for name, strat in (("pf", ParticleFilter(n_particles=6, max_populations=1)),
                            ("epf", EntropicParticleFilter(n_particles=6, max_populations=1, anneal=False)),
                            ("probe", EntropicParticleFilter(n_particles=6, max_populations=1, anneal=False,
                                                             lookahead_mode="probe"))):
            ctx = suite.context(Budget(), seed=7)
            result = await strat.search(problem, ctx)
            roles = ctx.ledger.usage_by_role()
            spent[name] = roles
            if name != "probe":
                # Every generated solve token is a step kept in the tree:
                # nothing was generated and thrown away.
                steps = [n for n in result.tree.nodes if n != 0]
                assert roles["solve"].output_tokens == sum(result.tree.nodes[n]["tokens"] for n in steps)
                # One generation call and one PRM call per kept step, as in PF.
                assert roles["solve"].calls == len(steps) == roles["verify"].calls
                assert "lookahead" not in roles
        # The probe variant pays an extra call per state and step.
        assert spent["probe"]["lookahead"].calls > 0
        assert (spent["probe"]["solve"].calls + spent["probe"]["lookahead"].calls
                > spent["epf"]["solve"].calls)


async def test_annealing_triggers_on_the_simulator_and_is_counted() -> None:
    from testtime.budget import Budget
    from testtime.sim.suites import get_suite

    suite = get_suite("overconfident_strong")
    triggers = checks = 0
    for i, problem in enumerate(suite.problems(6, seed=1)):
        ctx = suite.context(Budget(), seed=i)
        result = await EntropicParticleFilter(n_particles=8, max_populations=1).search(problem, ctx)
        triggers += result.stats.get("anneal_triggers", 0)
        checks += result.stats.get("anneal_checks", 0)
        for rec in result.stats.get("annealed", []):
            assert rec["entropy_before"] < rec["threshold"] <= rec["entropy_after"] + 1e-3
            assert rec["step"] == rec["round"] - 1  # reuse: round r judges step-r states
        assert within_budget(ctx)
    # The extreme early weights of this PRM do trip the threshold, but not every round.
    assert 0 < triggers < checks
