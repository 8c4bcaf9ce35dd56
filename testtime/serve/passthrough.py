"""Requests with ``tools``: one upstream call, unscaled, under the request's budget.

A tool-calling turn is an action, not an answer to vote on, so the gateway
forwards it as it came (every field, ``tool_choice`` included) to the
OpenAI-compatible upstream in one HTTP request and returns the upstream's
choice -- ``tool_calls`` exactly as the model gave them. It is still
budgeted: the worst case is reserved on the request's ledger first (the
request's ``max_tokens``, or what the budget leaves, is sent upstream so
that the reservation bounds the call) and settled to the usage the upstream
reports.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from testtime.budget import BudgetLedger, Usage
from testtime.errors import BudgetExhausted
from testtime.models.base import Model
from testtime.serve.wire import ApiError, bad_request

#: max_tokens sent upstream when neither the request nor the budget bounds it.
DEFAULT_PASSTHROUGH_MAX_TOKENS = 4096
#: Prompt tokens a server's chat template may add (system preamble, tool schema framing).
TEMPLATE_SLACK = 64


def upstream_of(model: Model) -> tuple[str, str | None]:
    """(base_url, api key) of an OpenAI-compatible backend, or a 400 saying tools cannot pass."""
    from testtime.models.openai import OpenAIModel

    if not isinstance(model, OpenAIModel) or not model.base_url:
        raise bad_request(f"this request has `tools`, which testtime serve passes through unscaled to an "
                          f"OpenAI-compatible upstream; the model {model.spec!r} is not one. Serve an "
                          "`openai:MODEL` with --base-url to use tools", param="tools")
    return model.base_url.rstrip("/"), os.environ.get("OPENAI_API_KEY") or None


def input_bound(body: dict[str, Any]) -> int:
    """An upper bound on the prompt tokens: UTF-8 bytes of the messages and tools as JSON, plus framing."""
    sent = {k: body.get(k) for k in ("messages", "tools", "tool_choice", "functions") if k in body}
    return len(json.dumps(sent, ensure_ascii=False).encode()) + TEMPLATE_SLACK + 8 * len(body.get("messages") or [])


async def forward(client: Any, model: Model, body: dict[str, Any], ledger: BudgetLedger) -> tuple[dict[str, Any], float]:
    """Send ``body`` upstream once, reserved and settled on ``ledger``.

    Returns:
        (the upstream's ChatCompletion JSON, latency in seconds).

    Raises:
        ApiError: 429 when the budget cannot hold even the prompt; the
            upstream's own status when it refused.
    """
    base_url, key = upstream_of(model)
    out = {k: v for k, v in body.items() if k not in ("testtime", "stream", "stream_options")}
    out["model"] = model.name
    n = int(body.get("n") or 1)
    inp = input_bound(body)
    given = body.get("max_completion_tokens") or body.get("max_tokens")
    room = ledger.remaining("tokens")
    if given is None:
        fit = (room - inp * n) / n if room != float("inf") else DEFAULT_PASSTHROUGH_MAX_TOKENS
        given = int(min(DEFAULT_PASSTHROUGH_MAX_TOKENS, max(fit, 0)))
        if given < 1:
            raise ApiError(429, f"the request's budget ({ledger.budget}) cannot hold this prompt "
                           f"(up to {inp} tokens) and any reply", type="budget_exceeded",
                           code="request_budget", headers={"x-should-retry": "false"})
        out.pop("max_completion_tokens", None)
        out["max_tokens"] = given
    worst = Usage(input_tokens=inp * n if n > 1 else inp, output_tokens=int(given) * n, calls=1,
                  usd=model.price.max_cost(inp * n, int(given) * n))
    try:
        res = ledger.reserve(worst, role="passthrough")
    except BudgetExhausted as exc:
        raise ApiError(429, f"the request's budget ({ledger.budget}) cannot hold this call: {exc}",
                       type="budget_exceeded", code="request_budget",
                       headers={"x-should-retry": "false"}) from None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.monotonic()
    try:
        resp = await client.post(f"{base_url}/chat/completions", json=out, headers=headers)
    except BaseException:
        # Sent (or cancelled) with no answer: it may have been billed in full.
        res.settle(worst)
        raise
    latency = time.monotonic() - t0
    if resp.status_code != 200:
        res.settle(Usage(calls=1))
        try:
            err = resp.json()
        except ValueError:
            err = {"error": {"message": resp.text[:500]}}
        e = err.get("error") if isinstance(err, dict) else None
        msg = e.get("message") if isinstance(e, dict) else str(err)[:500]
        raise ApiError(resp.status_code, f"upstream: {msg}", type="upstream_error")
    data = resp.json()
    u = data.get("usage") or {}
    if u.get("prompt_tokens") is None and u.get("completion_tokens") is None:
        actual = worst  # nothing reported: count the worst case, never less
    else:
        cached = ((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
        actual = model.usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0),
                             int(cached), calls=1)
    res.settle(actual)
    return data, latency
