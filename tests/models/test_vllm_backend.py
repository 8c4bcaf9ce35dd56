"""vllm:MODEL without a GPU: the missing-dependency error, and request/response mapping
against a fake ``vllm`` module injected into sys.modules. Real vLLM is not exercised here."""

from __future__ import annotations

import asyncio
import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest

from testtime.errors import MissingDependency, UserError
from testtime.models.base import GenerationRequest
from testtime.models.registry import load_model


class FakeTokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]  # one token per character

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


# Keyword names of vLLM's SamplingParams and (a subset of) AsyncEngineArgs, as in
# vLLM 0.8-0.11: the fake refuses any other, so a misspelt or invented one fails here.
VLLM_SAMPLING_FIELDS = {
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p",
    "top_k", "min_p", "seed", "stop", "stop_token_ids", "bad_words", "ignore_eos", "max_tokens", "min_tokens",
    "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
    "logits_processors", "include_stop_str_in_output", "truncate_prompt_tokens", "output_kind",
    "guided_decoding", "logit_bias", "allowed_token_ids", "extra_args",
}
VLLM_ENGINE_FIELDS = {
    "model", "tokenizer", "enable_prefix_caching", "max_model_len", "gpu_memory_utilization", "dtype",
    "tensor_parallel_size", "seed", "quantization", "enforce_eager", "max_num_seqs", "trust_remote_code",
    "download_dir", "kv_cache_dtype", "swap_space", "disable_log_stats",
}


def fake_vllm(outputs: list[Any], seen: dict[str, Any]) -> types.ModuleType:
    mod = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw: Any) -> None:
            # As vLLM's own class does, a keyword it does not know is a TypeError.
            unknown = set(kw) - VLLM_SAMPLING_FIELDS
            if unknown:
                raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
            seen["sampling"] = kw

    class AsyncEngineArgs:
        def __init__(self, **kw: Any) -> None:
            unknown = set(kw) - VLLM_ENGINE_FIELDS
            if unknown:
                raise TypeError(f"AsyncEngineArgs got unexpected keyword arguments {sorted(unknown)}")
            seen["engine_args"] = kw

    class AsyncLLMEngine:
        @classmethod
        def from_engine_args(cls, args: Any) -> AsyncLLMEngine:
            seen["engines"] = seen.get("engines", 0) + 1
            return cls()

        async def get_tokenizer(self) -> FakeTokenizer:
            return FakeTokenizer()

        async def generate(self, prompt: dict[str, Any], params: Any, request_id: str):
            seen["prompt"] = prompt
            yield SimpleNamespace(outputs=[], num_cached_tokens=0)  # a partial result first
            yield SimpleNamespace(outputs=outputs, num_cached_tokens=5)

    mod.SamplingParams = SamplingParams
    mod.AsyncEngineArgs = AsyncEngineArgs
    mod.AsyncLLMEngine = AsyncLLMEngine
    return mod


def lp(value: float, text: str) -> SimpleNamespace:
    return SimpleNamespace(logprob=value, decoded_token=text)


def test_missing_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingDependency) as info:
        load_model("vllm:Qwen/Qwen2.5-0.5B-Instruct")
    assert info.value.extra == "vllm" and "testtime[vllm]" in str(info.value)


def test_base_url_points_to_the_openai_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm([], {}))
    with pytest.raises(UserError, match="openai:MODEL --base-url"):
        load_model("vllm:m", base_url="http://127.0.0.1:8000/v1")


async def test_request_and_response_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = [
        SimpleNamespace(text="ab", token_ids=[97, 98], finish_reason="stop", stop_reason=None,
                        logprobs=[{97: lp(-0.1, "a"), 120: lp(-2.5, "x")}, {98: lp(-0.2, "b"), 121: lp(-1.9, "y")}]),
        SimpleNamespace(text="c", token_ids=[99], finish_reason="stop", stop_reason="\n",
                        logprobs=[{99: lp(-0.3, "c"), 122: lp(-1.0, "z")}]),
        SimpleNamespace(text="ddd", token_ids=[100, 100, 100], finish_reason="length", stop_reason=None,
                        logprobs=[{100: lp(-0.5, "d")}] * 3),
    ]
    seen: dict[str, Any] = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(outputs, seen))
    model = load_model("vllm:tiny", max_model_len=4096, engine_args={"dtype": "half"})
    req = GenerationRequest(prompt="hi", system="s", prefix="P", n=3, max_tokens=3, temperature=0.5,
                            top_p=0.9, stop=("\n",), seed=4, logprobs=True, top_logprobs=1)
    assert model.capabilities.native_n and not model.capabilities.exact_token_count  # no tokenizer yet
    rough = model.worst_case(req)
    gens = await model.generate(req)

    assert seen["engine_args"] == {"model": "tiny", "enable_prefix_caching": True, "max_model_len": 4096,
                                   "dtype": "half"}
    assert seen["sampling"] == {"n": 3, "max_tokens": 3, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"],
                                "seed": 4, "logprobs": 1}
    prompt_text = "<system>s<user>hi<assistant>P"  # the prefix continues the assistant turn
    assert seen["prompt"] == {"prompt_token_ids": [ord(c) for c in prompt_text]}
    assert [g.text for g in gens] == ["ab", "c", "ddd"]
    assert [g.finish_reason for g in gens] == ["eos", "stop", "length"]
    assert gens[0].usage.input_tokens == len(prompt_text) and gens[0].usage.cached_tokens == 5
    assert [g.usage.output_tokens for g in gens] == [2, 1, 3] and gens[1].usage.input_tokens == 0
    assert [t.token for t in gens[0].logprobs] == ["a", "b"] and gens[0].logprobs[0].top == (("a", -0.1),)

    # once the tokenizer is loaded the reservation is exact, and was an upper bound before
    assert model.capabilities.exact_token_count
    assert model.input_upper_bound(req) == len(prompt_text) <= rough.input_tokens

    await model.generate(req.with_(logprobs=False))
    assert seen["engines"] == 1  # the engine is built once


def test_an_engine_argument_vllm_does_not_know_fails_at_the_engine_not_silently(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm([], seen))
    model = load_model("vllm:tiny", engine_args={"max_modle_len": 4096})  # misspelt
    with pytest.raises(Exception, match="max_modle_len"):
        asyncio.run(model.generate(GenerationRequest(prompt="hi", max_tokens=2)))
    assert "engine_args" not in seen
