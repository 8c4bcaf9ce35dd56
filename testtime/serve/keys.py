"""API keys for ``testtime serve``: stored hashed, looked up in constant time.

The config never holds a key, only its SHA-256 (``testtime serve hash-key``
prints one): ``{"name": "alice", "hash": "sha256:<hex>", "total":
"tokens=1M,usd=5", "per_day": "tokens=100k"}``. API keys are long random
strings, so an unsalted hash is enough to make a leaked config useless (a
salted slow hash protects guessable passwords, not random keys), and it lets a
lookup hash the presented key once and compare it with every entry.

A key is identified everywhere else -- ledger scopes, logs, traces, metrics,
429 bodies -- by its ``key_id``: the first 12 hex digits of its hash, which
cannot be turned back into the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from testtime.budget import Budget
from testtime.errors import UserError
from testtime.serve.ledgers import ScopeLimits

_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_ENTRY_FIELDS = {"name", "hash", "key_hash", "total", "per_day"}
_LIMIT_FIELDS = {"total", "per_day"}
#: Length of a key id (hex digits of the hash).
KEY_ID_LEN = 12


def hash_key(key: str) -> str:
    """The stored form of an API key: ``"sha256:<64 hex digits>"``.

    Raises:
        UserError: the key is empty or not a string (the message never shows it).
    """
    if not isinstance(key, str) or not key.strip():
        raise UserError("an API key must be a non-empty string")
    if key != key.strip():
        raise UserError("an API key must not start or end with whitespace (check the copy-paste)")
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(hashed: str) -> str:
    """The short public id of a stored hash (the first 12 hex digits)."""
    m = _HASH.match(hashed)
    if not m:
        raise UserError("a key hash must look like sha256:<64 lowercase hex digits>; "
                        "make one with `testtime serve hash-key`")
    return m.group(1)[:KEY_ID_LEN]


def bearer_key(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header (None when absent or not Bearer)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def _budget(value: Any, where: str) -> Budget | None:
    if value is None:
        return None
    if isinstance(value, Budget):
        return value
    if isinstance(value, str):
        try:
            return Budget.parse(value)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    if isinstance(value, Mapping):
        spec = ",".join(f"{k}={v}" for k, v in value.items())
        try:
            return Budget.parse(spec)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    raise UserError(f"{where}: expected a budget like 'tokens=100k,usd=5' or a mapping, "
                    f"got {type(value).__name__}")


def _limits(scope: str, config: Mapping[str, Any], where: str) -> ScopeLimits:
    budgets = {}
    for period in ("total", "per_day"):
        b = _budget(config.get(period), f"{where} {period}")
        if b is not None and b.seconds is not None:
            raise UserError(f"{where} {period}: seconds is a per-request limit, not a shared one; "
                            "remove it (set request time limits in the request budget)")
        budgets[period] = b
    return ScopeLimits(scope, total=budgets["total"], per_day=budgets["per_day"])


def global_limits(config: Mapping[str, Any] | None, *, where: str = "global") -> ScopeLimits:
    """The ``global`` scope from ``{"total": ..., "per_day": ...}`` (None: unlimited)."""
    if config is None:
        return ScopeLimits("global")
    if not isinstance(config, Mapping):
        raise UserError(f"{where}: expected a mapping with total and/or per_day, got {type(config).__name__}")
    unknown = set(config) - _LIMIT_FIELDS
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                        "known: total, per_day")
    return _limits("global", config, where)


@dataclass(frozen=True)
class KeyEntry:
    """A configured API key, without the key (and without its full hash).

    Attributes:
        key_id: the first 12 hex digits of the key's hash (safe to log).
        name: the operator's label for the key.
        limits: its ledger limits; scope ``"key:<key_id>"``.
    """

    key_id: str
    name: str
    limits: ScopeLimits

    @property
    def scope(self) -> str:
        return self.limits.scope


class KeyRing:
    """The configured keys; :meth:`lookup` finds the entry a presented key belongs to."""

    def __init__(self, entries: Iterable[tuple[bytes, KeyEntry]] = ()) -> None:
        self._entries: list[tuple[bytes, KeyEntry]] = list(entries)

    @classmethod
    def from_config(cls, entries: Iterable[Mapping[str, Any]] | None, *, where: str = "keys") -> KeyRing:
        """Build from config entries ``{name, hash, total?, per_day?}`` (see the module doc).

        Raises:
            UserError: a malformed entry, a plaintext ``key`` field, a repeated
                hash or name (the message names the entry, never a key).
        """
        if entries is None:
            return cls()
        if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Iterable):
            raise UserError(f"{where}: expected a list of key entries")
        out: list[tuple[bytes, KeyEntry]] = []
        seen_hash: set[bytes] = set()
        seen_name: set[str] = set()
        for i, raw in enumerate(entries):
            at = f"{where}[{i}]"
            if not isinstance(raw, Mapping):
                raise UserError(f"{at}: expected a mapping with name and hash")
            if "key" in raw or "api_key" in raw:
                # Do not echo the value: it is a secret in a config file.
                raise UserError(f"{at}: holds a plaintext key; store its hash instead "
                                "(`testtime serve hash-key` prints it) under 'hash' and delete the key")
            unknown = set(raw) - _ENTRY_FIELDS
            if unknown:
                raise UserError(f"{at}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                                f"known: {', '.join(sorted(_ENTRY_FIELDS - {'key_hash'}))}")
            name = raw.get("name")
            if not isinstance(name, str) or not name.strip():
                raise UserError(f"{at}: needs a non-empty 'name'")
            hashed = raw.get("hash", raw.get("key_hash"))
            if not isinstance(hashed, str) or not _HASH.match(hashed.strip().lower()):
                raise UserError(f"{at} ({name}): 'hash' must be sha256:<64 hex digits>; "
                                "make it with `testtime serve hash-key`")
            hashed = hashed.strip().lower()
            digest = bytes.fromhex(hashed[len("sha256:"):])
            if digest in seen_hash:
                raise UserError(f"{at} ({name}): the same key hash is listed twice")
            if name in seen_name:
                raise UserError(f"{at}: the name {name!r} is used twice")
            seen_hash.add(digest)
            seen_name.add(name)
            kid = key_id(hashed)
            out.append((digest, KeyEntry(kid, name, _limits(f"key:{kid}", raw, f"{at} ({name})"))))
        return cls(out)

    def lookup(self, presented: str | None) -> KeyEntry | None:
        """The entry of ``presented`` (None when unknown or empty).

        The presented key is hashed once and compared with every entry by
        :func:`hmac.compare_digest`, never stopping early, so the time taken
        does not tell which entry (or how much of one) matched.
        """
        if not isinstance(presented, str) or not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: KeyEntry | None = None
        for stored, entry in self._entries:
            if hmac.compare_digest(stored, digest):
                found = entry
        return found

    def entries(self) -> list[KeyEntry]:
        """Every configured entry (no hashes)."""
        return [e for _d, e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"KeyRing({len(self._entries)} keys)"
