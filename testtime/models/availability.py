"""``testtime models``: which backends can run here, and why not.

Checks are cheap and offline except one: with a base URL (``--base-url`` or
``OPENAI_BASE_URL``) the OpenAI-compatible server is probed with a short
``GET /models``. API keys are only checked for presence, never sent anywhere
but the server the user named, and never printed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from typing import Any

from testtime.errors import UserError
from testtime.models.registry import BACKENDS


def _installed(module: str, dist: str) -> str | None:
    """Version of ``dist`` if ``module`` can be imported, else None."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def _local() -> tuple[bool, str]:
    version = _installed("llama_cpp", "llama-cpp-python")
    if version is None:
        return False, "llama-cpp-python not installed (pip install 'testtime[local]')"
    from testtime.models.llamacpp import embedded_gguf_path

    try:
        path = embedded_gguf_path()
    except UserError as exc:
        return False, str(exc)
    return True, f"llama-cpp-python {version}; GGUF at {path}"


def _llamacpp() -> tuple[bool, str]:
    version = _installed("llama_cpp", "llama-cpp-python")
    if version is None:
        return False, "llama-cpp-python not installed (pip install 'testtime[local]')"
    return True, f"llama-cpp-python {version}; give the path of a .gguf file"


def _openai(base_url: str | None) -> tuple[bool, str]:
    version = _installed("openai", "openai")
    if version is None:
        return False, "openai SDK not installed"
    url = base_url or os.environ.get("OPENAI_BASE_URL")
    if url:
        from testtime.models.openai import probe_server

        try:
            owner = probe_server(url, os.environ.get("OPENAI_API_KEY"), timeout=2.0)
        except UserError:
            return False, f"server at {url} not reachable"
        return True, f"server at {url} reachable" + (f" (owned_by {owner})" if owner else "")
    if os.environ.get("OPENAI_API_KEY"):
        return True, "OPENAI_API_KEY set (not validated)"
    return False, "set OPENAI_API_KEY, or pass --base-url / OPENAI_BASE_URL for a compatible server"


def _anthropic() -> tuple[bool, str]:
    if _installed("anthropic", "anthropic") is None:
        return False, "anthropic SDK not installed"
    if os.environ.get("ANTHROPIC_API_KEY"):
        where = os.environ.get("ANTHROPIC_BASE_URL")
        return True, "ANTHROPIC_API_KEY set (not validated)" + (f"; base URL {where}" if where else "")
    return False, "set ANTHROPIC_API_KEY"


def _vllm() -> tuple[bool, str]:
    version = _installed("vllm", "vllm")
    if version is None:
        return False, "vllm not installed (pip install 'testtime[vllm]'; needs a CUDA GPU)"
    return True, f"vllm {version} installed (needs a CUDA GPU)"


def _module(target: str) -> tuple[bool, str]:
    module = target.partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return (True, "built in") if found else (False, f"{module} not available in this build")


def check_all(base_url: str | None = None) -> list[dict[str, Any]]:
    """One row per backend in :data:`BACKENDS`: backend, example, usable, why, description."""
    checks = {
        "local": _local,
        "llamacpp": _llamacpp,
        "openai": lambda: _openai(base_url),
        "anthropic": _anthropic,
        "vllm": _vllm,
    }
    rows = []
    for prefix, info in BACKENDS.items():
        check = checks.get(prefix, lambda info=info: _module(info.target))
        try:
            usable, why = check()
        except Exception as exc:  # a broken optional install must not break the listing
            usable, why = False, f"check failed: {type(exc).__name__}: {exc}"
        rows.append({"backend": prefix, "example": info.example, "usable": usable, "why": why,
                     "description": info.description})
    return rows


def render_table(rows: list[dict[str, Any]], console: Any = None) -> None:
    """Print the rows as a rich table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="testtime model backends")
    table.add_column("backend", style="bold")
    table.add_column("spec")
    table.add_column("usable")
    table.add_column("why")
    for r in rows:
        usable = "[green]yes[/green]" if r["usable"] else "[red]no[/red]"
        # escape: "[local]" in an install hint is text, not rich markup
        table.add_row(escape(r["backend"]), escape(r["example"]), usable, escape(r["why"]))
    (console or Console()).print(table)
