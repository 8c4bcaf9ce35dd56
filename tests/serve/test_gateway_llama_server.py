"""The gateway in front of a real llama_cpp.server running the embedded SmolLM2 (slow: a real model)."""

from __future__ import annotations

import openai
import pytest

from tests.serve.gateway_support import gateway

pytestmark = pytest.mark.slow


def test_openai_sdk_through_gateway_to_llama_server_plain_and_streamed(llama_server: str) -> None:
    with gateway(model="openai:smollm2", base_url=llama_server,
                 config={"models": {"two": {"strategy": "self_consistency", "budget": "tokens=3000",
                                            "options": {"n": 2}}}}) as g:
        c = openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0)
        r = c.chat.completions.create(model="two", max_tokens=8, temperature=0.0,
                                      messages=[{"role": "system", "content": "Answer in one word."},
                                                {"role": "user", "content": "Name a fruit."}])
        tt = r.model_extra["testtime"]
        assert r.choices[0].message.content.strip() and tt["candidates"] == 2
        assert tt["usage"]["calls"] == 2 and r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 0
        chunks = list(c.chat.completions.create(model="smollm2", max_tokens=8, stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "Say hello."}],
                                                extra_body={"testtime": {"strategy": "single"}}))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text.strip() and chunks[-1].usage.completion_tokens <= 8
