"""Batched local decoding: n samples as parallel llama.cpp sequences sharing the prompt (real inference)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from testtime.errors import UserError
from testtime.models.base import GenerationRequest, StreamDelta, StreamEnd
from testtime.models.registry import load_model, split_options

pytest.importorskip("llama_cpp")

COUNT = GenerationRequest(prompt="Count from 1 to 20, separated by commas.", prefix="1, 2, 3,", max_tokens=12,
                          temperature=0.0)


@pytest.fixture(scope="module")
def local():
    # One thread: no OpenMP barriers to stall when other work crowds the cores.
    return load_model("local", n_threads=1)


async def test_greedy_batch_of_4_gives_4_identical_texts_equal_to_n1(local) -> None:
    one = await local.generate(COUNT)
    four = await local.generate(COUNT.with_(n=4))
    assert len(four) == 4
    assert {g.text for g in four} == {one[0].text}
    assert one[0].text.lstrip().startswith("4, 5")


async def test_different_seeds_give_different_texts_and_each_sample_its_own_seed(local) -> None:
    req = GenerationRequest(prompt="Write one sentence about a cat.", n=4, max_tokens=16, temperature=1.0, seed=11)
    gens = await local.generate(req)
    assert len({g.text for g in gens}) >= 3  # seeds 11..14
    other = await local.generate(req.with_(seed=1234))
    assert [g.text for g in other] != [g.text for g in gens]


async def test_stops_end_each_sequence_on_its_own(local) -> None:
    req = GenerationRequest(prompt="List three fruits, one per line.", n=6, max_tokens=40, temperature=1.0,
                            seed=5, stop=("\n",))
    gens = await local.generate(req)
    assert len(gens) == 6
    assert all("\n" not in g.text for g in gens)
    assert all(g.finish_reason in ("stop", "eos", "length") for g in gens)
    stopped = [g for g in gens if g.finish_reason == "stop"]
    assert stopped  # some stopped at the newline while others went on or ended otherwise
    assert len({g.usage.output_tokens for g in gens}) > 1


async def test_every_sample_has_its_own_logprobs(local) -> None:
    gens = await local.generate(COUNT.with_(n=3, temperature=0.9, seed=3, logprobs=True, top_logprobs=2))
    for g in gens:
        assert g.logprobs is not None and len(g.logprobs) == g.usage.output_tokens
        assert "".join(t.token for t in g.logprobs) == g.text
        assert all(t.logprob <= 0 and len(t.top) == 2 for t in g.logprobs)


async def test_usage_bills_the_prompt_once_and_reports_cached_prompt_tokens(local) -> None:
    req = GenerationRequest(prompt="Name a color.", n=4, max_tokens=6, temperature=0.8, seed=2)
    prompt = local.input_upper_bound(req)
    worst = local.worst_case(req)
    await local.generate(req.with_(n=1))  # the prompt is now in the prefix cache
    gens = await local.generate(req)
    assert worst.calls == 1 and worst.input_tokens == prompt
    assert [g.usage.input_tokens for g in gens] == [prompt, 0, 0, 0]
    assert [g.usage.calls for g in gens] == [1, 0, 0, 0]
    assert gens[0].usage.cached_tokens == prompt - 1  # all but the last token, decoded for its logits
    assert sum(g.usage.output_tokens for g in gens) <= worst.output_tokens


async def test_stream_deltas_carry_each_samples_index_and_add_up_to_its_text(local) -> None:
    texts: dict[int, str] = {}
    tokens: dict[int, int] = {}
    end = None
    async with aclosing(local.stream(COUNT.with_(n=3, temperature=0.9, seed=8))) as items:
        async for item in items:
            if isinstance(item, StreamDelta):
                texts[item.index] = texts.get(item.index, "") + item.text
                tokens[item.index] = tokens.get(item.index, 0) + item.tokens
            elif isinstance(item, StreamEnd):
                end = item
    assert end is not None and len(end.generations) == 3
    for i, g in enumerate(end.generations):
        assert texts[i].startswith(g.text) and tokens[i] == g.usage.output_tokens
    assert end.usage is not None and end.usage.calls == 1


async def test_concurrent_requests_and_more_samples_than_sequences_all_complete(local) -> None:
    many = COUNT.with_(n=20)  # more than the engine's 16 sequences: decoded in waves
    both = await asyncio.gather(local.generate(many), local.generate(COUNT.with_(prefix="10, 11,")))
    assert len(both[0]) == 20 and len({g.text for g in both[0]}) == 1
    assert both[1][0].text.lstrip().startswith("12")


async def test_closing_a_stream_cancels_its_job_and_the_engine_serves_the_next(local) -> None:
    long = GenerationRequest(prompt="Write a long story about a dragon.", n=2, max_tokens=200, temperature=0.8)
    async with aclosing(local.stream(long)) as items:
        async for item in items:
            assert isinstance(item, StreamDelta)
            break  # close after the first delta
    after = await local.generate(COUNT)
    assert after[0].text.lstrip().startswith("4, 5")


def test_threads_option_in_the_spec_and_bad_values_are_user_errors() -> None:
    assert split_options("local?threads=1") == ("local", {"threads": "1"})
    model = load_model("local?threads=1")
    assert model.engine.n_threads == 1 and model.spec == "local"
    for bad in ("local?threads=0", "local?threads=1.5", "local?n_seq=1", "local?bogus=1"):
        with pytest.raises(UserError):
            load_model(bad)
    with pytest.raises(UserError, match="given twice"):
        split_options("local?threads=1&threads=2")


def test_default_threads_are_the_cores_not_the_load_unless_the_environment_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from testtime.models.llamacpp import THREADS_ENV, default_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(THREADS_ENV, "1")
    assert default_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(UserError, match=THREADS_ENV):
        default_threads()
