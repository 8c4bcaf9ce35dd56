"""API keys: stored hashed, looked up in constant time, never shown anywhere."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from testtime.budget import Budget
from testtime.errors import UserError
from testtime.serve import keys as keys_mod
from testtime.serve.keys import KeyEntry, KeyRing, bearer_key, global_limits, hash_key, key_id
from testtime.serve.ledgers import LimitRefused, MemoryStore


def new_key() -> str:
    return "tt-test-" + secrets.token_urlsafe(24)


def ring_of(*keys: str, **limits: str) -> KeyRing:
    return KeyRing.from_config([{"name": f"user{i}", "hash": hash_key(k), **limits} for i, k in enumerate(keys)])


def test_hash_key_is_prefixed_sha256_hex_of_the_key():
    k = new_key()
    assert hash_key(k) == "sha256:" + hashlib.sha256(k.encode()).hexdigest()
    assert hash_key(k) != hash_key(k + "x")
    assert key_id(hash_key(k)) == hashlib.sha256(k.encode()).hexdigest()[:12]


@pytest.mark.parametrize("bad", ["", "   ", None, 42])
def test_hash_key_refuses_empty_or_non_string_keys(bad):
    with pytest.raises(UserError):
        hash_key(bad)


def test_hash_key_refuses_surrounding_whitespace_without_echoing_the_key():
    k = new_key()
    with pytest.raises(UserError) as err:
        hash_key(k + "\n")
    assert k not in str(err.value)


def test_lookup_finds_only_the_exact_key():
    a, b, c = new_key(), new_key(), new_key()
    ring = ring_of(a, b, c, total="tokens=1000")
    assert ring.lookup(b).name == "user1"
    assert ring.lookup(a).limits.scope == f"key:{key_id(hash_key(a))}"
    assert ring.lookup(a).limits.total == Budget(tokens=1000)
    for wrong in (new_key(), b[:-1], b + "x", b.upper(), "", None, hash_key(b), hash_key(b)[7:]):
        assert ring.lookup(wrong) is None
    assert len(ring) == 3


def test_lookup_compares_against_every_entry_whatever_matches(monkeypatch):
    ks = [new_key() for _ in range(5)]
    ring = ring_of(*ks)
    calls: list[tuple[bytes, bytes]] = []
    real = keys_mod.hmac.compare_digest

    def counting(x, y):
        calls.append((x, y))
        return real(x, y)

    monkeypatch.setattr(keys_mod.hmac, "compare_digest", counting)
    for presented in (ks[0], ks[4], new_key()):
        calls.clear()
        ring.lookup(presented)
        # No early exit: the time taken does not say which entry matched.
        assert len(calls) == 5
        assert all(isinstance(x, bytes) and len(x) == 32 for pair in calls for x in pair)


def test_the_key_never_appears_in_reprs_messages_or_refusals():
    k = new_key()
    hashed = hash_key(k)
    ring = KeyRing.from_config([{"name": "alice", "hash": hashed, "per_day": "tokens=100"}])
    entry = ring.lookup(k)
    assert isinstance(entry, KeyEntry)
    shown = " ".join([repr(entry), str(entry), repr(ring), repr(entry.limits)])
    assert k not in shown
    assert hashed[7:] not in shown  # the full hash is not shown either: only its 12-digit id
    assert entry.key_id in shown
    store = MemoryStore()
    with pytest.raises(LimitRefused) as err:
        store.grant([entry.limits], Budget(tokens=500))
    text = str(err.value) + repr(err.value) + repr(err.value.to_dict())
    assert k not in text and hashed[7:] not in text
    assert f"key:{entry.key_id}" in text


def test_a_plaintext_key_in_the_config_is_refused_without_echoing_it():
    k = new_key()
    with pytest.raises(UserError) as err:
        KeyRing.from_config([{"name": "bob", "key": k}])
    assert k not in str(err.value) and "hash-key" in str(err.value)


@pytest.mark.parametrize("entry, says", [
    ({"name": "x", "hash": "sha256:abc"}, "sha256:<64 hex digits>"),
    ({"name": "x", "hash": "md5:" + "0" * 32}, "sha256:<64 hex digits>"),
    ({"hash": "sha256:" + "0" * 64}, "name"),
    ({"name": "x", "hash": "sha256:" + "0" * 64, "colour": "red"}, "unknown field"),
    ({"name": "x", "hash": "sha256:" + "0" * 64, "per_day": "tokens=lots"}, "per_day"),
    ({"name": "x", "hash": "sha256:" + "0" * 64, "total": "seconds=60"}, "per-request"),
])
def test_malformed_key_entries_raise_user_errors_naming_the_entry(entry, says):
    with pytest.raises(UserError) as err:
        KeyRing.from_config([entry], where="serve.yaml keys")
    assert "serve.yaml keys[0]" in str(err.value) and says in str(err.value)


def test_repeated_hashes_or_names_are_refused():
    h = hash_key(new_key())
    with pytest.raises(UserError, match="twice"):
        KeyRing.from_config([{"name": "a", "hash": h}, {"name": "b", "hash": h}])
    with pytest.raises(UserError, match="twice"):
        KeyRing.from_config([{"name": "a", "hash": h}, {"name": "a", "hash": hash_key(new_key())}])


def test_limits_accept_specs_or_mappings_and_uppercase_hashes():
    k = new_key()
    ring = KeyRing.from_config([{"name": "a", "key_hash": hash_key(k).upper().replace("SHA256", "sha256"),
                                 "total": {"tokens": "1M", "usd": 5}, "per_day": "calls=100"}])
    entry = ring.lookup(k)
    assert entry.limits.total == Budget(tokens=1_000_000, usd=5.0)
    assert entry.limits.per_day == Budget(calls=100)


def test_global_limits_build_the_global_scope():
    g = global_limits({"total": "usd=100", "per_day": "tokens=2M"})
    assert g.scope == "global" and g.total == Budget(usd=100.0) and g.per_day == Budget(tokens=2_000_000)
    assert global_limits(None).limits("total") == {}
    with pytest.raises(UserError, match="unknown field"):
        global_limits({"daily": "tokens=1"})


def test_bearer_key_reads_only_bearer_authorization():
    k = new_key()
    assert bearer_key(f"Bearer {k}") == k
    assert bearer_key(f"bearer   {k}  ") == k
    assert bearer_key(f"Basic {k}") is None
    assert bearer_key("Bearer ") is None
    assert bearer_key(None) is None
