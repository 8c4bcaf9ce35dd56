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
    epf = EntropicParticleFilter(alpha=0.5, lookahead_tokens=7, anneal=False)
    assert epf.lookahead_mode == "successor"  # the paper's Look-ahead Modulation is the default
    stats: dict = {}
    slots = [p, q, p]
    scores = await epf._modulate(PROBLEM, ctx, tree, slots, [0.5, 0.5, 0.5], stats)
    assert scores == pytest.approx([0.7, 0.3, 0.7])
    assert tree[p]["lookahead_score"] == 0.9 and tree[q]["lookahead_score"] == 0.1
    # One successor per particle (3), asked for as one n=k request per node
    # (2); the PRM scores each distinct successor once (2).
    assert stats["lookaheads"] == 3 and stats["lookahead_requests"] == 2 and stats["prm_calls"] == 2
    assert [r.max_tokens for r in model.requests] == [7, 7, 7]  # the fake fans n=2 out
    assert ctx.ledger.usage_by_role()["lookahead"].calls == 3  # billed, under its own role
    assert list(tree.graph.nodes) == [0, p, q]  # successors are not kept as steps
    w_plain = epf._weights([0.5, 0.5, 0.5], 0, stats)
    w_mod = epf._weights(scores, 0, stats)
    assert w_plain == pytest.approx([1 / 3] * 3)
    assert w_mod[0] > w_plain[0] > w_mod[1]
    # Off switch, and a lone particle is never probed.
    assert await EntropicParticleFilter(lookahead=False)._modulate(
        PROBLEM, ctx, tree, slots, [0.5] * 3, {}) == [0.5] * 3
    assert await epf._modulate(PROBLEM, ctx, tree, [p], [0.5], {}) == [0.5]


def trap_model() -> ScriptedModel:
    # Every particle shares step 1 ("Setup"); step 2 splits into a route the
    # PRM loves (Trap, 0.99) and one it doubts (Sound, 0.2). Only step 3
    # tells them apart (trap-3: 0.01, sound-3: 0.95) -- one step *beyond*
    # the step-2 states that the first real resampling chooses between.
    return ScriptedModel({"sound-3": ["The answer is 5."], "trap-3": ["The answer is 7."],
                          "Sound-route": ["sound-3 check\n\n"], "Trap-route": ["trap-3 check\n\n"],
                          "Setup": ["Trap-route step\n\n", "Sound-route step\n\n"],
                          "*": ["Setup step\n\n"]})


TRAP_PRM = {"answer is 5": 0.95, "answer is 7": 0.05, "sound-3": 0.95, "trap-3": 0.01,
            "Trap-route": 0.99, "Sound-route": 0.2, "Setup": 0.5}


def _weights_at_the_split(events: list) -> dict[str, float]:
    """Total resampling weight on the Trap and Sound step-2 states (node_scored)."""
    nodes: dict[int, str] = {}
    out = {"Trap": 0.0, "Sound": 0.0}
    for e in events:
        if e.kind == "node_added":
            nodes[e.data["node"]] = e.data["text"]
        elif e.kind == "node_scored" and "weight" in e.data:
            text = nodes.get(e.data["node"], "")
            for key in out:
                if text.startswith(key + "-route"):
                    out[key] += e.data["weight"]
    return out


async def _run(strategy, seed: int) -> tuple[object, dict[str, float], object]:
    from testtime.trace.events import Tracer

    events: list = []
    ctx = make_ctx(trap_model(), prm=ScriptedPRM(TRAP_PRM, aggregation="last"), seed=seed,
                   tracer=Tracer("t", [events.append]))
    result = await strategy.search(PROBLEM, ctx)
    return result, _weights_at_the_split(events), ctx


async def test_lookahead_changes_which_particles_survive_and_two_step_average_does_not() -> None:
    # Annealing off: this is about look-ahead alone.
    # Look-ahead judges Trap by its successor (0.5*0.99 + 0.5*0.01 = 0.50) and
    # Sound by its own (0.5*0.2 + 0.5*0.95 = 0.575): Sound takes the larger
    # share of the weight at the split, and its particles survive.
    result, w, ctx = await _run(EntropicParticleFilter(n_particles=4, anneal=False), seed=0)
    assert w["Sound"] > w["Trap"] and w["Sound"] > 0.5
    assert result.stats["lookaheads"] >= 4
    assert ctx.ledger.usage_by_role()["lookahead"].calls >= 4  # successors are paid for
    assert within_budget(ctx)
    # Two-step averaging sees nothing beyond the step-2 states: it weights
    # (0.5 + 0.99) / 2 against (0.5 + 0.2) / 2 and gives Trap the lion's share.
    cheap, w_cheap, ctx = await _run(
        EntropicParticleFilter(n_particles=4, anneal=False, lookahead_mode="two_step_average"), seed=0)
    assert w_cheap["Trap"] > 0.75 > w_cheap["Sound"]
    assert "lookahead" not in ctx.ledger.usage_by_role()  # it generates nothing extra
    # Plain PF puts ~99% on Trap.
    plain, w_plain, _ = await _run(ParticleFilter(n_particles=4), seed=0)
    assert w_plain["Trap"] > 0.95
    # Over seeds, what survives decides the answer.
    wins = {"successor": 0, "two_step_average": 0, "pf": 0}
    for seed in range(12):
        wins["successor"] += (await _run(EntropicParticleFilter(n_particles=4, anneal=False), seed))[0].answer == "5"
        wins["two_step_average"] += (await _run(EntropicParticleFilter(
            n_particles=4, anneal=False, lookahead_mode="two_step_average"), seed))[0].answer == "5"
        wins["pf"] += (await _run(ParticleFilter(n_particles=4), seed))[0].answer == "5"
    # Measured: 12 / 7 / 0 of 12.
    assert wins["successor"] >= 11 and wins["two_step_average"] <= 9 and wins["pf"] <= 2, wins


async def test_annealing_alone_keeps_sound_particles_alive() -> None:
    # No look-ahead: at the split the weights (Trap ~ 99%) have entropy far
    # below the step's threshold; annealing flattens them to it.
    result, w, _ = await _run(EntropicParticleFilter(n_particles=4, lookahead=False), seed=0)
    first = result.stats["annealed"][0]
    assert first["entropy_before"] < first["threshold"]
    assert first["entropy_after"] == pytest.approx(first["threshold"], abs=1e-3) and first["temperature"] > 1
    _, w_off, _ = await _run(EntropicParticleFilter(n_particles=4, lookahead=False, anneal=False), seed=0)
    assert w["Sound"] > 10 * w_off["Sound"]  # measured 0.053 vs 0.0025


async def test_stops_within_budget() -> None:
    ctx = make_ctx(trap_model(), prm=ScriptedPRM(TRAP_PRM, tokens_per_step=4), budget="tokens=900")
    result = await EntropicParticleFilter().search(PROBLEM, ctx)
    assert within_budget(ctx)
    assert result.answer in {"5", "7"}


def test_bad_options_are_user_errors() -> None:
    for kw in ({"alpha": 1.5}, {"entropy_base": -0.1}, {"lookahead_tokens": 0}, {"temperature": -1}):
        with pytest.raises(UserError):
            EntropicParticleFilter(**kw)


async def test_two_step_average_weights_the_state_by_the_step_it_drew() -> None:
    model = ScriptedModel({})
    prm = ScriptedPRM({"great": 0.9, "awful": 0.1}, default=0.5)
    ctx = make_ctx(model, prm=prm)
    tree = SearchTree(ctx)
    p, q = tree.add(0, "P-state", score=0.5), tree.add(0, "Q-state", score=0.2)
    gp, aq = tree.add(p, "great next", score=0.9), tree.add(q, "awful next", score=0.1)
    epf = EntropicParticleFilter(alpha=0.5, anneal=False, lookahead_mode="two_step_average")
    assert EntropicParticleFilter(lookahead_mode="reuse").lookahead_mode == "two_step_average"  # old name
    stats: dict = {}
    slots = [gp, aq]
    scores = await epf._modulate(PROBLEM, ctx, tree, slots, [0.9, 0.1], stats)
    # The average of each particle's parent and its own score: nothing
    # beyond the current node is looked at...
    assert scores == pytest.approx([0.5 * 0.5 + 0.5 * 0.9, 0.5 * 0.2 + 0.5 * 0.1])
    # ...and nothing is generated or scored for it.
    assert model.requests == [] and stats.get("prm_calls", 0) == 0
    assert list(tree.graph.nodes) == [0, p, q, gp, aq]
    assert tree[gp]["lookahead_of"] == p and tree[gp]["modulated_score"] == pytest.approx(0.7)
    # The first round (every particle on a root child) does not resample.
    assert not epf._resample_now(tree, [p, q], 0) and epf._resample_now(tree, slots, 1)
    assert EntropicParticleFilter()._resample_now(tree, [p, q], 0)


async def test_two_step_average_costs_what_plain_pf_costs_and_lookahead_is_billed() -> None:
    from testtime.budget import Budget
    from testtime.sim.suites import get_suite

    suite = get_suite("overconfident_strong")
    for problem in suite.problems(4, seed=3):
        spent = {}
        for name, strat in (("pf", ParticleFilter(n_particles=6, max_populations=1)),
                            ("cheap", EntropicParticleFilter(n_particles=6, max_populations=1, anneal=False,
                                                             lookahead_mode="two_step_average")),
                            ("epf", EntropicParticleFilter(n_particles=6, max_populations=1, anneal=False))):
            ctx = suite.context(Budget(), seed=7)
            result = await strat.search(problem, ctx)
            roles = ctx.ledger.usage_by_role()
            spent[name] = roles
            if name != "epf":
                # Every generated solve token is a step kept in the tree:
                # nothing was generated and thrown away.
                steps = [n for n in result.tree.nodes if n != 0]
                assert roles["solve"].output_tokens == sum(result.tree.nodes[n]["tokens"] for n in steps)
                # One PRM call per kept step, as in PF; one request per distinct node and round.
                assert roles["verify"].calls == len(steps)
                assert roles["solve"].calls == result.stats["step_requests"]
                assert "lookahead" not in roles
        # Look-ahead generates successors (role "lookahead") and has them scored.
        assert spent["epf"]["lookahead"].calls > 0 and spent["epf"]["lookahead"].output_tokens > 0
        assert spent["epf"]["verify"].calls > spent["cheap"]["verify"].calls or \
            spent["epf"]["verify"].tokens > spent["cheap"]["verify"].tokens


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
            assert rec["step"] == rec["round"]  # look-ahead resamples the states of its own round
        assert within_budget(ctx)
    # The extreme early weights of this PRM do trip the threshold, but not every round.
    assert 0 < triggers < checks
