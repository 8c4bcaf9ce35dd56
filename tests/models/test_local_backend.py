"""local / llamacpp: the embedded SmolLM2 GGUF in-process (real inference), and load errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from testtime.errors import MissingDependency, UserError
from testtime.models import llamacpp
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model


def test_free_cores_is_within_bounds() -> None:
    import os

    n = llamacpp.free_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_missing_and_non_gguf_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_model(f"llamacpp:{tmp_path / 'nope.gguf'}")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOTAGGUF")
    with pytest.raises(UserError, match="not a GGUF"):
        load_model(f"llamacpp:{fake}")


def test_missing_llama_cpp_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import now fails as if uninstalled
    with pytest.raises(MissingDependency) as info:
        load_model("local")
    assert info.value.package == "llama-cpp-python" and "testtime[local]" in str(info.value)


def test_base_url_is_refused_for_local() -> None:
    with pytest.raises(UserError, match="base-url"):
        load_model("local", base_url="http://127.0.0.1:1/v1")


@pytest.fixture(scope="module")
def local():
    pytest.importorskip("llama_cpp")
    return load_model("local", n_threads=min(2, llamacpp.free_cores()))


@pytest.mark.slow
def test_loaded_once_per_process(local) -> None:
    again = load_model("local", n_threads=local.engine.n_threads)
    assert again.engine is local.engine and local.spec == "local"


@pytest.mark.slow
def test_exact_token_counting(local) -> None:
    assert local.capabilities.exact_token_count
    import llama_cpp

    vocab = llama_cpp.Llama(str(local.engine.path), vocab_only=True, verbose=False)  # an independent tokenizer
    assert local.count_tokens("Hello world") == len(vocab.tokenize(b"Hello world", add_bos=False))
    assert local.count_tokens("") == 0


@pytest.mark.slow
async def test_generation_usage_within_worst_case(local) -> None:
    req = GenerationRequest(prompt="What is the capital of France?", max_tokens=8, n=2, seed=7)
    worst = local.worst_case(req)
    gens = await local.generate(req)
    assert len(gens) == 2 and all(g.text for g in gens)
    total_in = sum(g.usage.input_tokens for g in gens)
    total_out = sum(g.usage.output_tokens for g in gens)
    assert total_in == worst.input_tokens  # the reservation is exact for the prompt
    assert total_out <= worst.output_tokens
    assert all(g.finish_reason in ("eos", "length") for g in gens)


@pytest.mark.slow
async def test_finish_reasons_length_stop_eos_and_logprobs(local) -> None:
    long = await local.generate(GenerationRequest(prompt="Write a long story about a dragon.", max_tokens=3,
                                                  temperature=0.0, logprobs=True, top_logprobs=2))
    g = long[0]
    assert g.finish_reason == "length" and g.usage.output_tokens == 3
    assert g.logprobs is not None and len(g.logprobs) == 3
    assert "".join(t.token for t in g.logprobs) == g.text
    assert all(t.logprob <= 0 and len(t.top) == 2 and t.top[0][1] >= t.logprob for t in g.logprobs)

    counted = await local.generate(GenerationRequest(prompt="Count from 1 to 10.", prefix="1, 2, 3,",
                                                     max_tokens=12, temperature=0.0, stop=(" 6",)))
    assert counted[0].finish_reason == "stop"
    assert counted[0].text.lstrip().startswith("4") and " 6" not in counted[0].text

    hello = await local.generate(GenerationRequest(prompt="Reply with just the word: hello", max_tokens=40,
                                                   temperature=0.0))
    assert hello[0].finish_reason == "eos" and hello[0].usage.output_tokens < 40
