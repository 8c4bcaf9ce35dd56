"""Tree search sends the k children / particles of one node as one n=k request,
asks for logprobs in the sampling call when the PRM scores from them, and
reports the cached-prompt ratio a backend reports."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.step_fakes import PROBLEM, make_ctx, within_budget
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, TokenLogprob
from testtime.models.scripted import word_tokens
from testtime.search.beam import BeamSearch
from testtime.search.best_of_n import BestOfN
from testtime.search.entropic_pf import EntropicParticleFilter
from testtime.search.mcts import MCTS
from testtime.search.particle_filter import ParticleFilter
from testtime.verifiers.prm import ConfidencePRM
from testtime.verifiers.scripted import ScriptedPRM, ScriptedVerifier


class RecordingModel(Model):
    """A native-n backend that records every request and, like a prefix
    cache, reports as cached the longest prompt prefix (in words) it has
    already seen (``cache=True``)."""

    backend = "recording"

    def __init__(self, reply: Callable[[GenerationRequest, int], str], *, cache: bool = False,
                 logprobs: bool = True) -> None:
        super().__init__("rec")
        self.reply = reply
        self.cache = cache
        self._logprobs = logprobs
        self.requests: list[GenerationRequest] = []
        self._seen: list[list[str]] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(native_n=True, logprobs=self._logprobs, prefix=True, exact_token_count=True,
                            prefix_cache=self.cache)

    def count_tokens(self, text: str) -> int:
        return word_tokens(text)

    def _words(self, request: GenerationRequest) -> list[str]:
        return (" ".join(m["content"] for m in request.chat_messages()) + " " + request.prefix).split()

    def input_upper_bound(self, request: GenerationRequest) -> int:
        return len(self._words(request)) + 8

    async def generate(self, request: GenerationRequest) -> list[Generation]:
        self.requests.append(request)
        words = self._words(request)
        cached = 0
        if self.cache:
            for old in self._seen:
                k = 0
                while k < min(len(old), len(words)) and old[k] == words[k]:
                    k += 1
                cached = max(cached, k)
            self._seen.append(words)
        gens = []
        for i in range(request.n):
            text = self.reply(request, i)
            finish = "eos"
            for stop in request.stop:
                if stop in text:
                    text, finish = text[: text.index(stop)], "stop"
            if word_tokens(text) > request.max_tokens:
                text, finish = " ".join(text.split()[: request.max_tokens]), "length"
            lps = tuple(TokenLogprob(w, -0.2) for w in text.split()) if request.logprobs else None
            first = i == 0
            gens.append(Generation(text=text, finish_reason=finish, logprobs=lps, model=self.name,
                                   usage=self.usage(len(words) if first else 0, word_tokens(text),
                                                    cached if first else 0, calls=1 if first else 0)))
        return gens


def step_reply(request: GenerationRequest, i: int) -> str:
    """Two routes from the root (by choice index), two steps each, then an answer."""
    depth = request.prefix.count("\n\n")
    if not request.stop:  # a completion
        return "finish\n\nThe answer is 5."
    if depth >= 2:
        return "The answer is 5." if "Good" in request.prefix else "The answer is 7."
    route = ("Good" if i % 2 == 0 else "Bad") if depth == 0 else request.prefix.split()[0]
    return f"{route} step {depth + 1} choice {i}\n\n"


PRM = ScriptedPRM({"answer is 5": 0.95, "answer is 7": 0.1, "Good": 0.8, "Bad": 0.3}, aggregation="last")


def step_requests(model: RecordingModel, role_filter: Callable[[GenerationRequest], bool] | None = None):
    return [r for r in model.requests if r.stop and (role_filter is None or role_filter(r))]


async def test_pf_sends_all_root_particles_as_one_request_and_one_per_distinct_node() -> None:
    model = RecordingModel(step_reply)
    ctx = make_ctx(model, prm=PRM, seed=1)
    result = await ParticleFilter(n_particles=6, max_populations=1).search(PROBLEM, ctx)
    reqs = step_requests(model)
    # Round one: the six particles share the root -> one request with n=6.
    assert reqs[0].n == 6 and reqs[0].prefix == ""
    assert sum(1 for r in reqs if r.prefix == "") == 1
    # Later rounds: one request per distinct prefix, never two for the same one.
    prefixes = [r.prefix for r in reqs]
    for p in set(prefixes):
        # (a prefix may come back in a later round only if its particle was not advanced)
        assert prefixes.count(p) == 1, p
    assert sum(r.n for r in reqs) > len(reqs)  # some requests carried several particles
    assert result.stats["step_requests"] == len(reqs)
    assert result.answer == "5"


async def test_pf_without_grouping_sends_one_request_per_particle() -> None:
    # The ablation (what PF did before): six n=1 requests for the six root particles.
    model = RecordingModel(step_reply)
    ctx = make_ctx(model, prm=PRM, seed=1)
    await ParticleFilter(n_particles=6, max_populations=1, group_requests=False).search(PROBLEM, ctx)
    reqs = step_requests(model)
    assert all(r.n == 1 for r in reqs) and sum(1 for r in reqs if r.prefix == "") == 6


async def test_pf_over_http_loopback_sends_n_k() -> None:
    from testtime.api import build_context
    from testtime.testing.loopback import LoopbackOpenAIServer

    def reply(body: dict) -> str:
        return "The answer is 5." if "next" in str(body.get("messages")) else "next step\n\n"

    with LoopbackOpenAIServer(reply=reply, owned_by="vllm") as srv:  # vllm: native n
        ctx = build_context(model="openai:loopback", base_url=srv.base_url, budget="tokens=20000")
        ctx.prm = ScriptedPRM({"answer": 0.9}, default=0.5)
        try:
            await ParticleFilter(n_particles=4, max_populations=1, max_steps=3).search(PROBLEM, ctx)
        finally:
            await ctx.model.aclose()
        ns = [int(b.get("n") or 1) for b in srv.requests]
    # All four particles hold the root, then the same (deduplicated) node:
    # every step request carried n=4; none was sent once per particle.
    assert ns and all(n == 4 for n in ns[:2]), ns
    assert len(ns) < 4 * 2


async def test_epf_lookahead_asks_one_n_k_request_per_node() -> None:
    def reply(request: GenerationRequest, i: int) -> str:
        # Identical steps per route: the 6 root particles become 2 nodes x 3.
        return step_reply(request, i).replace(f" choice {i}", "")

    model = RecordingModel(reply)
    ctx = make_ctx(model, prm=PRM, seed=1)
    result = await EntropicParticleFilter(n_particles=6, max_populations=1, lookahead_tokens=5,
                                          anneal=False).search(PROBLEM, ctx)
    probes = [r for r in model.requests if r.max_tokens == 5]
    first = [r for r in probes if r.prefix.count("\n\n") == 1]
    # After round one: the Good node's and the Bad node's particles (3 each)
    # get their successors from one n=3 request per node.
    assert sorted(r.n for r in first) == [3, 3] and len({r.prefix for r in first}) == 2
    assert result.stats["lookaheads"] >= 6
    assert within_budget(ctx)


@pytest.mark.parametrize("strategy", [MCTS(expand_k=3, iterations=4), BeamSearch(2, expansions=3)])
async def test_children_of_a_node_go_out_in_one_request(strategy) -> None:
    model = RecordingModel(step_reply)
    ctx = make_ctx(model, prm=PRM, seed=1)
    result = await strategy.search(PROBLEM, ctx)
    reqs = step_requests(model)
    assert reqs and all(r.n == 3 or (r.prefix == "" and r.n == 6) for r in reqs), [r.n for r in reqs]
    # One request per expanded node: no prefix was sent twice.
    assert len({r.prefix for r in reqs}) == len(reqs)
    assert result.answer is not None


@pytest.mark.parametrize("strategy", [BestOfN(n=4), BeamSearch(2, expansions=2), ParticleFilter(n_particles=3)])
async def test_sampling_asks_for_logprobs_so_the_confidence_prm_sends_no_probes(strategy) -> None:
    model = RecordingModel(step_reply)
    ctx = make_ctx(model, prm=ConfidencePRM(), seed=1)
    result = await strategy.search(PROBLEM, ctx)
    sampling = [r for r in model.requests if r.metadata.get("purpose") != "prm"]
    probes = [r for r in model.requests if r.metadata.get("purpose") == "prm"]
    assert sampling and all(r.logprobs for r in sampling)
    assert probes == [] and "verify" not in ctx.ledger.usage_by_role()
    assert result.answer is not None


def test_logprobs_are_asked_for_only_when_the_prm_will_use_them() -> None:
    from testtime.search.base import prm_wants_logprobs

    model = RecordingModel(step_reply)
    assert prm_wants_logprobs(make_ctx(model, prm=ConfidencePRM())) is True
    assert prm_wants_logprobs(make_ctx(model, prm=PRM)) is False  # scores text, not logprobs
    with_verifier = make_ctx(model, prm=ConfidencePRM(), verifier=ScriptedVerifier(reference=True))
    assert prm_wants_logprobs(with_verifier) is False  # full solutions are scored by the verifier
    assert prm_wants_logprobs(with_verifier, verifier_first=False) is True  # steps still use the PRM
    no_lp = RecordingModel(step_reply, logprobs=False)
    assert prm_wants_logprobs(make_ctx(no_lp, prm=ConfidencePRM())) is False


async def test_cached_prompt_ratio_is_reported_when_the_backend_reports_it() -> None:
    for strategy in (BeamSearch(2, expansions=2), MCTS(expand_k=2, iterations=4),
                     ParticleFilter(n_particles=4, max_populations=1)):
        cached = RecordingModel(step_reply, cache=True)
        ctx = make_ctx(cached, prm=PRM, seed=1)
        result = await strategy.search(PROBLEM, ctx)
        report = result.stats["prefix_cache"]
        assert report["prompt_tokens"] == ctx.ledger.usage.input_tokens
        assert 0 < report["cached_ratio"] < 1, (strategy.name, report)
        assert report["computed_tokens"] == (report["prompt_tokens"] - report["cached_prompt_tokens"]
                                             + ctx.ledger.usage.output_tokens)
        plain = RecordingModel(step_reply)
        ctx = make_ctx(plain, prm=PRM, seed=1)
        result = await strategy.search(PROBLEM, ctx)
        assert result.stats["prefix_cache"]["cached_ratio"] is None  # not reported: not claimed as 0


async def test_mcts_traces_visits_q_and_prior_of_every_node() -> None:
    from testtime.trace.events import Tracer

    events: list = []
    model = RecordingModel(step_reply)
    ctx = make_ctx(model, prm=PRM, seed=1, tracer=Tracer("t", [events.append]))
    result = await MCTS(expand_k=2, iterations=5).search(PROBLEM, ctx)
    last: dict[int, dict] = {}
    for e in events:
        if e.kind in ("node_added", "node_scored"):
            last.setdefault(e.data["node"], {}).update({k: v for k, v in e.data.items() if v is not None})
    for n, attrs in result.tree.nodes(data=True):
        if n == 0:
            continue
        traced = last[n]
        assert traced["score"] == pytest.approx(attrs["score"]) and traced["prior"] == attrs["prior"]
        if attrs["visits"]:
            assert traced["visits"] == attrs["visits"]
            assert traced["q"] == attrs["value"] / attrs["visits"]
