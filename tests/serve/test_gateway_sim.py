"""Step-level search through the gateway on the seeded simulator: an alias with a PRM, and one per request."""

from __future__ import annotations

import openai

from tests.serve.gateway_support import gateway

CONFIG = {"models": {"deep": {"strategy": "mcts", "prm": "sim", "budget": "tokens=6000",
                              "options": {"iterations": 4}}}}
QUESTION = [{"role": "user", "content": "Start at 3, add 4, then subtract 2. What is the result?"}]


def test_mcts_alias_and_beam_by_request_run_their_search_on_sim():
    with gateway(model="sim", config=CONFIG) as g:
        c = openai.OpenAI(base_url=g.v1, api_key="unused", max_retries=0)
        r = c.chat.completions.create(model="deep", messages=QUESTION, seed=1)
        tt = r.model_extra["testtime"]
        assert tt["strategy"] == "mcts" and tt["alias"] == "deep" and tt["budget"] == {"tokens": 6000}
        assert r.choices[0].message.content and 0 < r.usage.total_tokens <= 6000
        assert tt["usage"]["calls"] > 1  # a search, not one sample
        b = c.chat.completions.create(model="sim", messages=QUESTION, seed=1, extra_body={
            "testtime": {"strategy": "beam", "prm": "sim", "budget": "tokens=5000", "options": {"beam_width": 2}}})
        bt = b.model_extra["testtime"]
        assert bt["strategy"] == "beam" and bt["settings_from"]["prm"] == "body"
        assert 0 < b.usage.total_tokens <= 5000
