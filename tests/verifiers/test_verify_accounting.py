"""Verifier and PRM calls are billed to role "verify", separately from solving."""

from __future__ import annotations

import testtime
from testtime.models.scripted import ScriptedModel


async def test_weighted_vote_with_a_genrm_spec_splits_usage_by_role() -> None:
    policy = ScriptedModel(["2 + 2 = 4. The answer is 4.", "2 + 2 = 5. The answer is 5."], name="policy")
    result = await testtime.arun("What is 2 + 2?", model=policy, strategy="weighted_self_consistency", n=4,
                                 verifier="genrm:scripted:Checked.\nVerdict: Yes?m=3&max_tokens=32",
                                 budget="tokens=20000")
    by_role = result.usage["by_role"]
    assert set(by_role) == {"solve", "verify"}
    # One GenRM judgement (m=3 samples) per candidate; the scripted judge has no
    # native n, so each judgement is 3 requests and calls counts requests.
    assert by_role["verify"]["calls"] == 4 * 3
    assert by_role["verify"]["output_tokens"] == 4 * 3 * 3  # "Checked. Verdict: Yes" = 3 words
    for key in ("input_tokens", "output_tokens", "calls"):
        assert by_role["solve"][key] + by_role["verify"][key] == result.usage[key]


async def test_prm_calls_are_verify_spend() -> None:
    policy = ScriptedModel(["2 + 2 = 4.\n\nThe answer is 4."], name="policy")
    result = await testtime.arun("What is 2 + 2?", model=policy, strategy="weighted_self_consistency", n=2,
                                 prm="prm:llm:scripted:Step 1: 0.9 Step 2: 0.8", budget="tokens=20000")
    assert result.usage["by_role"]["verify"]["calls"] == 2
    assert [c.score for c in result.candidates] == [0.8, 0.8]  # min of the two step scores
