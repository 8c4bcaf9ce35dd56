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
from collections.abc import Sequence
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


def _price_cells(spec: str) -> dict[str, Any]:
    """The ``price`` columns of a row naming ``spec`` (what a run would use)."""
    from testtime.models.prices import describe_price
    from testtime.models.registry import parse_spec

    try:
        backend, name = parse_spec(spec)
    except UserError:
        return {"price": "", "price_source": None, "price_usd_per_1m": None}
    found = describe_price(backend, name)
    return {"price": found["text"], "price_source": found["source"], "price_usd_per_1m": found["price"]}


def check_all(base_url: str | None = None, models: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per backend in :data:`BACKENDS` (then one per spec in ``models``).

    Each row: backend, example, usable, why, description, and the price the
    example (or the named model) would be billed at: ``price`` (text),
    ``price_source`` (builtin, override, free-backend or none) and
    ``price_usd_per_1m`` (the rates, None when there is no price).
    """
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
                     "description": info.description, **_price_cells(info.example)})
    by_backend = {r["backend"]: r for r in rows}
    from testtime.models.registry import parse_spec

    for spec in models:
        backend = parse_spec(spec)[0]  # a bad spec is a UserError: exit 2, one line
        base = by_backend[backend]
        rows.append({"backend": backend, "example": spec, "usable": base["usable"], "why": base["why"],
                     "description": base["description"], **_price_cells(spec)})
    return rows


def price_rows(models: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The effective price table (overrides first), then a row per spec in ``models``."""
    from testtime.models.prices import effective_table

    rows = effective_table()
    for spec in models:
        cells = _price_cells(spec)
        rates = cells["price_usd_per_1m"] or {"input": None, "output": None, "cached_input": None,
                                               "cache_write": None}
        rows.append({"key": spec, "source": f"{cells['price_source']} (as used for this model)",
                     "price": cells["price"], **rates})
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
    table.add_column("price (USD per 1M tokens)")
    for r in rows:
        usable = "[green]yes[/green]" if r["usable"] else "[red]no[/red]"
        # escape: "[local]" in an install hint is text, not rich markup
        table.add_row(escape(r["backend"]), escape(r["example"]), usable, escape(r["why"]),
                      escape(r.get("price") or ""))
    console = console or Console()
    console.print(table)
    console.print(escape(isolation_line()))


def isolation_line() -> str:
    """One line: the isolation layer the ``code`` verifier uses here (and why)."""
    try:
        from testtime.verifiers.isolation import isolation_report

        rep = isolation_report()
    except Exception as exc:  # the listing must not break on a sandbox probe
        return f"code verifier isolation: unknown ({type(exc).__name__}: {exc})"
    line = f"code verifier isolation: {rep['isolation']} ({rep['backend']}) -- {rep['describe']}"
    if not rep["namespaces_available"]:
        line += "; namespaces unavailable: " + "; ".join(rep["unavailable_because"])
    return line


def render_prices(rows: list[dict[str, Any]], console: Any = None) -> None:
    """Print :func:`price_rows` as a rich table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def cell(x: Any) -> str:
        return "-" if x is None else f"${x:g}"

    table = Table(title="testtime prices (USD per 1M tokens; * = glob)")
    for name in ("model", "input", "output", "cached input", "cache write", "source"):
        table.add_column(name, style="bold" if name == "model" else None)
    for r in rows:
        table.add_row(escape(r["key"]), cell(r["input"]), cell(r["output"]), cell(r["cached_input"]),
                      cell(r["cache_write"]), escape(str(r["source"])))
    (console or Console()).print(table)
