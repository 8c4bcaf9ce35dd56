"""USD prices per million tokens, built in and overridable.

Prices change; the table is a default, not a source of truth. Where a price
comes from, first match wins:

1. :func:`set_price` from Python, or ``--price backend:model=IN,OUT[,CACHED[,CACHE_WRITE]]``
   on ``testtime run`` (which calls it);
2. ``TESTTIME_PRICES=/path/prices.yaml``: a mapping ``"backend:model":
   {input: X, output: Y, cached_input: Z, cache_write: W}`` in USD per
   million tokens (``cached_input`` and ``cache_write`` optional);
3. the built-in table below.

A key matches a model **exactly**, unless it is written with ``*``: then it is
an :func:`fnmatch.fnmatchcase` pattern (``"openai:gpt-4o-20*"`` prices the
dated ``gpt-4o`` snapshots and nothing else). Among patterns that match, the
most specific (most literal characters) wins; an exact key always beats a
pattern in the same table. There is no prefix matching: ``openai:o3-pro`` is
not ``openai:o3``.

Local backends (``local``, ``llamacpp``, ``vllm``, ``sim``, ``scripted``,
``function``) cost nothing unless overridden. An API model (``openai``,
``anthropic``) that matches nothing has **no price**: :func:`lookup_price`
returns None, and :func:`require_prices` refuses a ``usd`` limit for it before
any call is sent.

Billing rules the table encodes:

* ``input_tokens`` counts every prompt token; ``cached_tokens`` of them were
  read from the provider's prompt cache (``cached_input`` rate) and
  ``cache_write_tokens`` were written to it (``cache_write`` rate: Anthropic
  bills 1.25x input for the 5-minute TTL, 2x for the 1-hour TTL, which you set
  with an override; OpenAI does not bill cache writes, so ``cache_write`` is
  None = the input rate). The rest are billed at the input rate.
* Reasoning / extended-thinking tokens are billed as output. Both APIs
  already include them in the reported output tokens, so they are priced at
  the output rate and never added a second time.
* Long-context tiers (e.g. Sonnet above 200K prompt tokens) and batch / flex
  discounts are not modelled; override the price if you rely on them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from testtime.errors import UserError


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens.

    Attributes:
        input: fresh (uncached) prompt tokens.
        output: generated tokens, reasoning/thinking tokens included.
        cached_input: prompt tokens read from the cache (None: the input rate).
        cache_write: prompt tokens written to the cache (None: the input rate).
    """

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    cache_write: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input", "cache_write"):
            value = getattr(self, name)
            if value is None and name in ("cached_input", "cache_write"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise UserError(f"price {name} must be a finite number >= 0 (USD per 1M tokens), got {value!r}")

    @property
    def cached_rate(self) -> float:
        return self.input if self.cached_input is None else self.cached_input

    @property
    def cache_write_rate(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0, *,
             cache_write_tokens: int = 0) -> float:
        """USD for a call. ``cached_tokens`` and ``cache_write_tokens`` are parts of ``input_tokens``."""
        fresh = max(input_tokens - cached_tokens - cache_write_tokens, 0)
        return (fresh * self.input + cached_tokens * self.cached_rate
                + cache_write_tokens * self.cache_write_rate + output_tokens * self.output) / 1e6

    def max_cost(self, input_tokens: int, output_tokens: int) -> float:
        """An upper bound of :meth:`cost` whatever part of the prompt is cached or written."""
        rate = max(self.input, self.cached_rate, self.cache_write_rate)
        return (input_tokens * rate + output_tokens * self.output) / 1e6

    def describe(self) -> str:
        """``"$2.50 / $10.00 per 1M, cached $1.25"`` (cached / cache-write rates when set)."""
        text = f"${_money(self.input)} / ${_money(self.output)} per 1M"
        extra = []
        if self.cached_input is not None:
            extra.append(f"cached ${_money(self.cached_input)}")
        if self.cache_write is not None:
            extra.append(f"cache write ${_money(self.cache_write)}")
        return ", ".join([text, *extra])

    def to_dict(self) -> dict[str, float | None]:
        return {"input": self.input, "output": self.output, "cached_input": self.cached_input,
                "cache_write": self.cache_write}


def _money(x: float) -> str:
    text = f"{x:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


FREE = Price()

#: Backends that bill nothing (their compute is yours) unless overridden.
FREE_BACKENDS = frozenset({"local", "llamacpp", "vllm", "scripted", "function", "sim"})
#: Backends whose calls cost money: a ``usd`` limit needs their price.
API_BACKENDS = frozenset({"openai", "anthropic"})
_FREE_BACKENDS = FREE_BACKENDS  # old name


def _openai(table: dict[str, Price], name: str, price: Price, *, dated: bool = True) -> None:
    """``name`` exactly, and its dated snapshots (``name-2025-08-07``) when ``dated``."""
    table[f"openai:{name}"] = price
    if dated:
        table[f"openai:{name}-20*"] = price


def _anthropic(table: dict[str, Price], name: str, inp: float, out: float, *aliases: str) -> None:
    """Anthropic rates: cache reads 0.1x input, 5-minute cache writes 1.25x input."""
    price = Price(inp, out, round(inp * 0.1, 6), round(inp * 1.25, 6))
    for n in (name, *aliases):
        table[f"anthropic:{n}"] = price
    table[f"anthropic:{name}-20*"] = price


def _builtin() -> dict[str, Price]:
    t: dict[str, Price] = {}
    # ---- OpenAI (input, output, cached input); reasoning tokens are output.
    _openai(t, "gpt-5.2", Price(1.75, 14.00, 0.175))
    _openai(t, "gpt-5.2-chat-latest", Price(1.75, 14.00, 0.175), dated=False)
    _openai(t, "gpt-5.2-pro", Price(21.00, 168.00))
    _openai(t, "gpt-5.1", Price(1.25, 10.00, 0.125))
    _openai(t, "gpt-5.1-chat-latest", Price(1.25, 10.00, 0.125), dated=False)
    _openai(t, "gpt-5.1-codex", Price(1.25, 10.00, 0.125))
    _openai(t, "gpt-5.1-codex-max", Price(1.25, 10.00, 0.125))
    _openai(t, "gpt-5.1-codex-mini", Price(0.25, 2.00, 0.025))
    _openai(t, "gpt-5", Price(1.25, 10.00, 0.125))
    _openai(t, "gpt-5-chat-latest", Price(1.25, 10.00, 0.125), dated=False)
    _openai(t, "gpt-5-codex", Price(1.25, 10.00, 0.125))
    _openai(t, "gpt-5-mini", Price(0.25, 2.00, 0.025))
    _openai(t, "gpt-5-nano", Price(0.05, 0.40, 0.005))
    _openai(t, "gpt-5-pro", Price(15.00, 120.00))
    _openai(t, "gpt-4.1", Price(2.00, 8.00, 0.50))
    _openai(t, "gpt-4.1-mini", Price(0.40, 1.60, 0.10))
    _openai(t, "gpt-4.1-nano", Price(0.10, 0.40, 0.025))
    _openai(t, "gpt-4o", Price(2.50, 10.00, 1.25))
    t["openai:gpt-4o-2024-05-13"] = Price(5.00, 15.00)  # the first snapshot kept its launch price
    _openai(t, "chatgpt-4o-latest", Price(5.00, 15.00), dated=False)
    _openai(t, "gpt-4o-mini", Price(0.15, 0.60, 0.075))
    _openai(t, "gpt-4-turbo", Price(10.00, 30.00))
    _openai(t, "gpt-3.5-turbo", Price(0.50, 1.50), dated=False)
    t["openai:gpt-3.5-turbo-0125"] = Price(0.50, 1.50)
    _openai(t, "o1", Price(15.00, 60.00, 7.50))
    _openai(t, "o1-pro", Price(150.00, 600.00))
    _openai(t, "o1-mini", Price(1.10, 4.40, 0.55))
    _openai(t, "o3", Price(2.00, 8.00, 0.50))
    _openai(t, "o3-pro", Price(20.00, 80.00))
    _openai(t, "o3-mini", Price(1.10, 4.40, 0.55))
    _openai(t, "o3-deep-research", Price(10.00, 40.00, 2.50))
    _openai(t, "o4-mini", Price(1.10, 4.40, 0.275))
    _openai(t, "o4-mini-deep-research", Price(2.00, 8.00, 0.50))
    _openai(t, "codex-mini-latest", Price(1.50, 6.00, 0.375), dated=False)
    # ---- Anthropic (input, output); cache read 0.1x, 5-minute cache write 1.25x input.
    _anthropic(t, "claude-opus-4-5", 5.00, 25.00)
    _anthropic(t, "claude-opus-4-1", 15.00, 75.00)
    _anthropic(t, "claude-opus-4", 15.00, 75.00, "claude-opus-4-0")
    _anthropic(t, "claude-sonnet-4-5", 3.00, 15.00)
    _anthropic(t, "claude-sonnet-4", 3.00, 15.00, "claude-sonnet-4-0")
    _anthropic(t, "claude-3-7-sonnet", 3.00, 15.00, "claude-3-7-sonnet-latest")
    _anthropic(t, "claude-3-5-sonnet", 3.00, 15.00, "claude-3-5-sonnet-latest")
    _anthropic(t, "claude-haiku-4-5", 1.00, 5.00)
    _anthropic(t, "claude-3-5-haiku", 0.80, 4.00, "claude-3-5-haiku-latest")
    _anthropic(t, "claude-3-haiku", 0.25, 1.25)
    _anthropic(t, "claude-3-opus", 15.00, 75.00, "claude-3-opus-latest")
    return t


#: Public list prices (USD / 1M tokens) as last checked (late 2025 list prices,
#: the newest the table knows); override when they move.
_BUILTIN: dict[str, Price] = _builtin()
#: set_price() / --price.
_OVERRIDES: dict[str, Price] = {}
#: The TESTTIME_PRICES file, reloaded when the variable changes.
_ENV: dict[str, Price] = {}
_loaded_env: str | None = None


def set_price(spec: str, price: Price) -> None:
    """Price ``"backend:model"`` (exact) or ``"backend:pattern*"`` (an fnmatch glob)."""
    if not isinstance(price, Price):
        raise UserError(f"set_price({spec!r}, ...): expected a Price, got {type(price).__name__}")
    _check_key(spec, "set_price")
    _OVERRIDES[spec] = price


def _check_key(spec: Any, where: str) -> None:
    if not isinstance(spec, str) or ":" not in spec or not spec.partition(":")[2]:
        raise UserError(f"{where}: price key {spec!r} must be 'backend:model' (e.g. 'openai:gpt-4o'), "
                        "optionally with * globs")


def _match(table: Mapping[str, Price], key: str) -> tuple[str, Price] | None:
    """Exact key first, then the most specific ``*`` pattern (later entries win ties)."""
    if key in table:
        return key, table[key]
    best: tuple[str, Price] | None = None
    best_len = -1
    for pattern, price in table.items():
        if "*" not in pattern or not fnmatchcase(key, pattern):
            continue
        literal = len(pattern) - pattern.count("*")
        if literal >= best_len:
            best, best_len = (pattern, price), literal
    return best


def resolve_price(backend: str, model: str) -> tuple[Price | None, str]:
    """``(price, source)``: source is ``override``, ``builtin``, ``free-backend`` or ``none``."""
    _load_env_overrides()
    key = f"{backend}:{model}"
    for table, source in ((_OVERRIDES, "override"), (_ENV, "override"), (_BUILTIN, "builtin")):
        hit = _match(table, key)
        if hit is not None:
            return hit[1], source
    if backend in FREE_BACKENDS:
        return FREE, "free-backend"
    return None, "none"


def lookup_price(backend: str, model: str) -> Price | None:
    """The price of a model, FREE for local backends, None when an API model has none."""
    return resolve_price(backend, model)[0]


def has_price(backend: str, model: str) -> bool:
    return lookup_price(backend, model) is not None


def price_for(backend: str, model: str) -> Price:
    """The price of a model; FREE when it has none (see :func:`lookup_price`)."""
    price = lookup_price(backend, model)
    return FREE if price is None else price


def effective_table() -> list[dict[str, Any]]:
    """Every price key in force: ``{"key", "source", **rates}``, overrides first."""
    _load_env_overrides()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for table, source in ((_OVERRIDES, "override"), (_ENV, f"override ({_loaded_env})"), (_BUILTIN, "builtin")):
        for key, price in table.items():
            if key in seen:
                continue
            seen.add(key)
            rows.append({"key": key, "source": source, "price": price.describe(), **price.to_dict()})
    return rows


def describe_price(backend: str, model: str, explicit: Price | None = None) -> dict[str, Any]:
    """The price a model will use, for listings: ``{"price", "source", "text"}``."""
    if explicit is not None:
        price, source = explicit, "option"
    else:
        price, source = resolve_price(backend, model)
    if price is None:
        text = "none (give one with --price; needed for a usd limit)"
    elif source == "free-backend":
        text = "simulated (set by the sim policy)" if backend == "sim" else "free (local compute)"
    else:
        text = f"{price.describe()} ({source})"
    return {"price": None if price is None else price.to_dict(), "source": source, "text": text}


# ------------------------------------------------------------------ parsing
def parse_price_arg(arg: str, flag: str = "--price") -> tuple[str, Price]:
    """``"openai:gpt-x=1.5,6[,0.15[,1.9]]"`` -> ``("openai:gpt-x", Price(1.5, 6, 0.15, 1.9))``."""
    key, sep, values = (arg or "").rpartition("=")
    usage = f"expected {flag} BACKEND:MODEL=IN,OUT[,CACHED[,CACHE_WRITE]] in USD per 1M tokens"
    if not sep or not key.strip():
        raise UserError(f"bad {flag} {arg!r}: {usage}")
    key = key.strip()
    if ":" not in key or not key.partition(":")[2]:
        raise UserError(f"bad {flag} {arg!r}: MODEL must be 'backend:model' (e.g. openai:gpt-4o); {usage}")
    parts = [p.strip() for p in values.split(",")]
    if not 2 <= len(parts) <= 4:
        raise UserError(f"bad {flag} {arg!r}: {usage}")
    nums: list[float] = []
    for p in parts:
        try:
            x = float(p)
        except ValueError:
            raise UserError(f"bad {flag} {arg!r}: {p!r} is not a number; {usage}") from None
        if not math.isfinite(x) or x < 0:
            raise UserError(f"bad {flag} {arg!r}: prices must be finite numbers >= 0; {usage}")
        nums.append(x)
    return key, Price(*nums)


def apply_price_args(args: Iterable[str], flag: str = "--price") -> None:
    """Parse every ``--price`` value first, then :func:`set_price` them all."""
    parsed = [parse_price_arg(a, flag) for a in args or ()]
    for key, price in parsed:
        set_price(key, price)


def _price_entry(path: str, spec: str, entry: Any) -> Price:
    where = f"TESTTIME_PRICES={path}: entry {spec!r}"
    if not isinstance(entry, dict) or not {"input", "output"} <= set(entry):
        raise UserError(f"{where} needs 'input' and 'output' (USD per 1M tokens)")
    unknown = sorted(set(map(str, entry)) - {"input", "output", "cached_input", "cache_write"})
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                        "known: input, output, cached_input, cache_write")
    values: dict[str, float | None] = {}
    for name in ("input", "output", "cached_input", "cache_write"):
        raw = entry.get(name)
        if raw is None:
            if name in ("input", "output"):
                raise UserError(f"{where}: {name} must be a number")
            values[name] = None
            continue
        try:
            if isinstance(raw, bool):
                raise TypeError
            values[name] = float(raw)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{where}: {name} must be a number, got {raw!r}") from None
    try:
        return Price(values["input"], values["output"], values["cached_input"],  # type: ignore[arg-type]
                     values["cache_write"])
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def _load_env_overrides() -> None:
    global _loaded_env
    path = os.environ.get("TESTTIME_PRICES") or ""
    if path == (_loaded_env or ""):
        return
    _ENV.clear()
    _loaded_env = path or None
    if not path:
        return
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        _loaded_env = None
        raise UserError(f"TESTTIME_PRICES={path}: cannot read price file: {exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        _loaded_env = None
        raise UserError(f"TESTTIME_PRICES={path}: not valid YAML: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        _loaded_env = None
        raise UserError(f"TESTTIME_PRICES={path}: expected a mapping of 'backend:model' to prices")
    loaded: dict[str, Price] = {}
    try:
        for spec, entry in data.items():
            _check_key(spec, f"TESTTIME_PRICES={path}")
            loaded[str(spec)] = _price_entry(path, str(spec), entry)
    except UserError:
        _loaded_env = None
        raise
    _ENV.update(loaded)


# ------------------------------------------------------------------ the check
def _usd_limit(budget: Any) -> float | None:
    if budget is None:
        return None
    limits = getattr(budget, "budget", budget)  # a BudgetLedger or a Budget
    if isinstance(limits, Mapping):
        return limits.get("usd")
    return getattr(limits, "usd", None)


def _model_source(model: Any, options: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(spec, source)`` of a model or spec; None for things that are not models."""
    from testtime.models.base import Model

    if isinstance(model, Mapping) and isinstance(model.get("spec"), str):  # {"spec": ..., **options}
        return _model_source(model["spec"], {**(options or {}), **model})
    if isinstance(model, str):
        from testtime.models.registry import parse_spec

        try:
            backend, name = parse_spec(model)
        except UserError:
            return None  # not a model spec (a key, "policy"...); loading reports it
        if options and options.get("price") is not None:
            return f"{backend}:{name}", "option"
        return f"{backend}:{name}", resolve_price(backend, name)[1]
    if isinstance(model, Model):
        source = getattr(model, "price_source", None)
        if source in (None, "none"):  # a price set after the model was built counts
            price, found = resolve_price(model.backend, model.name)
            if price is not None:
                model.price, model.price_source = price, found  # type: ignore[attr-defined]
                source = found
            elif source is None and getattr(model, "price", None) not in (None, FREE):
                source = "option"  # a subclass that set its own price without Model.__init__
            else:
                source = "none"
        return f"{model.backend}:{model.name}", source
    return None


def require_prices(models: Iterable[Any], budget: Any, *, options: Mapping[str, Any] | None = None) -> None:
    """Refuse a ``usd`` limit when an API model in ``models`` has no price.

    ``models`` holds Models, model specs (``"openai:x"``; ``options`` are the
    backend options they will load with, a ``price`` option counts as a
    price), or objects with a ``.model`` (verifiers, PRMs). ``budget`` is a
    Budget, a BudgetLedger, a mapping or None. Without a ``usd`` limit this
    does nothing: an unpriced model then just shows $0 (``testtime models``
    says so).

    Raises:
        UserError: naming every unpriced API model and the three ways to price it.
    """
    limit = _usd_limit(budget)
    if limit is None:
        return
    missing: list[str] = []
    for item in models:
        if item is None:
            continue
        found = _model_source(item, options)
        if found is None and not isinstance(item, str):
            inner = getattr(item, "model", None)
            found = _model_source(inner, options) if inner is not None and inner is not item else None
        if found is None:
            continue
        spec, source = found
        if source == "none" and spec.partition(":")[0] in API_BACKENDS and spec not in missing:
            missing.append(spec)
    if not missing:
        return
    first = missing[0]
    names = ", ".join(missing)
    have = "has" if len(missing) == 1 else "have"
    raise UserError(
        f"a usd limit (usd={limit:g}) needs a price for {names}, which {have} none (not in the built-in "
        f"table, no override); give one with --price {first}=IN,OUT (USD per 1M tokens) on the CLI, "
        f"a prices.yaml named by TESTTIME_PRICES, or testtime.set_price(\"{first}\", Price(IN, OUT))"
    )
