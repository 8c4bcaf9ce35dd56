"""The issue-9 scenario: `testtime run` against loopback servers that misbehave.

    python examples/misbehaving_servers.py

Runs self-consistency (16-token samples, tokens=3000) through the real CLI
and OpenAI backend against a server that reports 50x the completion tokens,
one that sends no usage, and an honest one, and prints what the run
reported next to what the server served.
"""

from __future__ import annotations

import contextlib
import io
import json

from testtime.cli import main
from testtime.testing.loopback import LoopbackOpenAIServer

REPLY = "Let me think about it carefully. " * 5 + "The answer is 42."
CASES = {"over-reporting x50": {"usage_scale": 50}, "no usage": {"omit_usage": True}, "honest": {}}

for label, kw in CASES.items():
    with LoopbackOpenAIServer(reply=REPLY, **kw) as srv:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["run", "What?", "--model", "openai:loopback", "--base-url", srv.base_url,
                       "--strategy", "self_consistency", "--max-tokens", "16", "--budget", "tokens=3000",
                       "--json"])
        r = json.loads(out.getvalue())
        served = srv.served
        print(f"{label:20s} exit={rc} stopped={r['stopped_reason']:17s} spent={r['usage']['tokens']:5d} "
              f"requests={served.requests:3d} served_honestly={served.honest_prompt_tokens + served.honest_completion_tokens:5d} "
              f"overdrawn={r['usage'].get('overdrawn')}")
