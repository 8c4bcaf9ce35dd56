"""openai:MODEL over real HTTP against llama-cpp-python's server running the embedded model."""

from __future__ import annotations

import pytest

from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model

pytestmark = pytest.mark.slow


async def test_single_reply_with_usage(llama_server: str) -> None:
    model = load_model("openai:smollm2", base_url=llama_server)
    assert model.server_kind == "llama-cpp-python" and model.prefix_mode == "completions"
    req = GenerationRequest(prompt="Name a fruit.", max_tokens=8, temperature=0.0)
    gens = await model.generate(req)
    g = gens[0]
    assert g.text.strip() and g.finish_reason in ("eos", "length")
    assert 0 < g.usage.output_tokens <= 8 and g.usage.input_tokens > 0
    assert g.usage.input_tokens <= model.worst_case(req).input_tokens  # reservation was an upper bound


async def test_n_samples_with_logprobs(llama_server: str) -> None:
    model = load_model("openai:smollm2", base_url=llama_server)
    gens = await model.generate(GenerationRequest(prompt="Say a word.", n=2, max_tokens=4, seed=1,
                                                  logprobs=True, top_logprobs=2))
    assert len(gens) == 2
    for g in gens:
        assert g.logprobs and all(t.logprob <= 0.0 for t in g.logprobs)
        assert len(g.logprobs) == g.usage.output_tokens
        assert 1 <= len(g.logprobs[0].top) <= 3 and g.logprobs[0].top[0][1] >= g.logprobs[0].top[-1][1]
        assert "".join(t.token for t in g.logprobs) == g.text


async def test_prefix_continuation(llama_server: str) -> None:
    model = load_model("openai:smollm2", base_url=llama_server)
    gens = await model.generate(GenerationRequest(prompt="Count from 1 to 10.", prefix="1, 2, 3,",
                                                  max_tokens=6, temperature=0.0, stop=(" 6",)))
    # the reply continues the count rather than starting over
    assert gens[0].text.lstrip().startswith("4")
    assert gens[0].finish_reason in ("stop", "length")
