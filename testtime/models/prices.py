"""USD prices per million tokens, built in and overridable.

Prices change; the table is a default, not a source of truth. Override with
:func:`set_price` from Python, or ``TESTTIME_PRICES=/path/prices.yaml`` (a
mapping ``"backend:model": {input: X, output: Y, cached_input: Z}`` in USD per
million tokens). Local backends cost nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from testtime.errors import UserError


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        fresh = max(input_tokens - cached_tokens, 0)
        return (fresh * self.input + cached_tokens * cached_rate + output_tokens * self.output) / 1e6


FREE = Price()

# Public list prices (USD / 1M tokens) as of late 2026; override when they move.
_BUILTIN: dict[str, Price] = {
    "openai:gpt-4o": Price(2.50, 10.00, 1.25),
    "openai:gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "openai:gpt-4.1": Price(2.00, 8.00, 0.50),
    "openai:gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "openai:gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "openai:o3": Price(2.00, 8.00, 0.50),
    "openai:o4-mini": Price(1.10, 4.40, 0.275),
    "openai:gpt-5": Price(1.25, 10.00, 0.125),
    "openai:gpt-5-mini": Price(0.25, 2.00, 0.025),
    "anthropic:claude-opus-4": Price(15.00, 75.00, 1.50),
    "anthropic:claude-sonnet-4": Price(3.00, 15.00, 0.30),
    "anthropic:claude-3-5-haiku": Price(0.80, 4.00, 0.08),
    "anthropic:claude-haiku-4-5": Price(1.00, 5.00, 0.10),
}
_OVERRIDES: dict[str, Price] = {}
_FREE_BACKENDS = {"local", "llamacpp", "vllm", "scripted", "function", "sim"}
_loaded_env = False


def set_price(spec: str, price: Price) -> None:
    """Override the price of ``"backend:model"`` (or a ``"backend:prefix*"``)."""
    _OVERRIDES[spec] = price


def price_for(backend: str, model: str) -> Price:
    """The price of a model: overrides, then built-ins (longest prefix), else free."""
    _load_env_overrides()
    key = f"{backend}:{model}"
    for table in (_OVERRIDES, _BUILTIN):
        if key in table:
            return table[key]
        best = ""
        for k in table:
            stem = k.rstrip("*")
            if key.startswith(stem) and len(stem) > len(best):
                best = k
        if best:
            return table[best]
    if backend in _FREE_BACKENDS:
        return FREE
    # Unknown API model (e.g. a self-hosted OpenAI-compatible server): free
    # unless the user says otherwise; USD limits then bind nothing.
    return FREE


def _load_env_overrides() -> None:
    global _loaded_env
    if _loaded_env:
        return
    _loaded_env = True
    path = os.environ.get("TESTTIME_PRICES")
    if not path:
        return
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise UserError(f"TESTTIME_PRICES={path}: cannot read price file: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"TESTTIME_PRICES={path}: expected a mapping of 'backend:model' to prices")
    for spec, entry in data.items():
        if not isinstance(entry, dict) or not {"input", "output"} <= set(entry):
            raise UserError(
                f"TESTTIME_PRICES={path}: entry {spec!r} needs 'input' and 'output' (USD per 1M tokens)"
            )
        _OVERRIDES[str(spec)] = Price(
            float(entry["input"]), float(entry["output"]),
            None if entry.get("cached_input") is None else float(entry["cached_input"]),
        )
