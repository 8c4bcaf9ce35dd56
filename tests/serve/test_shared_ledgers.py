"""Shared ledger stores: the same semantics on memory, SQLite and a real redis-server.

The Redis cases start a private ``redis-server`` (127.0.0.1, free port, no
persistence) and skip with a printed reason when the binary is missing.
"""

from __future__ import annotations

import multiprocessing
import pickle
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.redis_support import redis_available, redis_server
from testtime.budget import Budget, Usage
from testtime.errors import BudgetExhausted, UserError
from testtime.serve.ledgers import (
    STORE_DIMENSIONS,
    Grant,
    LedgerStore,
    LimitRefused,
    MemoryStore,
    RedisStore,
    ScopeLimits,
    SqliteStore,
    day_key,
    open_store,
)

STORES = ("memory", "sqlite", "redis")
NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    """A settable wall clock (epoch seconds)."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str | None]:
    if redis_available():
        yield None
        return
    with redis_server() as url:
        yield url


def _open(kind: str, tmp_path, redis_url: str | None, clock: Callable[[], float]) -> LedgerStore:
    if kind == "memory":
        return MemoryStore(clock=clock)
    if kind == "sqlite":
        return SqliteStore(tmp_path / f"ledgers-{uuid.uuid4().hex[:8]}.db", clock=clock)
    reason = redis_available()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    # A fresh key prefix per store keeps cases apart on one server.
    return RedisStore(f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}:", clock=clock)


@pytest.fixture(params=STORES)
def make_store(request, tmp_path, redis_url) -> Iterator[Callable[..., LedgerStore]]:
    opened: list[LedgerStore] = []

    def make(clock: Callable[[], float] | None = None) -> LedgerStore:
        s = _open(request.param, tmp_path, redis_url, clock or Clock())
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def usage(tokens: int, *, calls: int = 1, usd: float = 0.0) -> Usage:
    return Usage(input_tokens=tokens // 2, output_tokens=tokens - tokens // 2, calls=calls, usd=usd)


KEY = ScopeLimits("key:0123456789ab", total=Budget(tokens=1000))
GLOBAL = ScopeLimits("global", total=Budget(tokens=5000))


# ------------------------------------------------------------ admission
def test_grant_holds_want_until_settled_and_refuses_what_does_not_fit(make_store):
    s = make_store()
    g = s.grant([KEY, GLOBAL], Budget(tokens=700))
    assert g.budget.tokens == 700 and not g.degraded
    assert s.held("key:0123456789ab")["tokens"] == 700
    assert s.held("global")["tokens"] == 700
    with pytest.raises(LimitRefused) as err:
        s.grant([KEY, GLOBAL], Budget(tokens=400))
    assert (err.value.scope, err.value.period, err.value.dimension) == ("key:0123456789ab", "total", "tokens")
    assert (err.value.requested, err.value.remaining) == (400, 300)
    assert isinstance(err.value, BudgetExhausted)
    assert s.settle(g.id, usage(250)) == {}
    assert s.spent("key:0123456789ab")["tokens"] == 250
    assert s.held("key:0123456789ab")["tokens"] == 0
    assert s.grant([KEY, GLOBAL], Budget(tokens=400)).budget.tokens == 400  # room freed by the settle


def test_degrades_to_the_room_left_when_minimum_fits_and_refuses_below_minimum(make_store):
    s = make_store()
    s.grant([KEY], Budget(tokens=800))
    g = s.grant([KEY], Budget(tokens=500), minimum=Budget(tokens=100))
    assert g.budget.tokens == 200 and g.degraded
    assert g.limited_by == "key:0123456789ab total tokens"
    with pytest.raises(LimitRefused) as err:
        s.grant([KEY], Budget(tokens=500), minimum=Budget(tokens=1))
    assert err.value.remaining == 0
    assert s.held("key:0123456789ab")["tokens"] == 1000


def test_zero_room_refuses_even_without_a_minimum_on_that_dimension(make_store):
    s = make_store()
    s.grant([KEY], Budget(tokens=1000))
    with pytest.raises(LimitRefused) as err:
        s.grant([KEY], Budget(tokens=10), minimum=Budget(calls=1))
    assert err.value.dimension == "tokens" and err.value.remaining == 0


def test_refusal_names_the_tightest_limit_across_scopes_and_periods(make_store):
    s = make_store()
    key = ScopeLimits("key:aaaaaaaaaaaa", total=Budget(tokens=1000), per_day=Budget(tokens=600, calls=10))
    glob = ScopeLimits("global", total=Budget(tokens=300))
    with pytest.raises(LimitRefused) as err:
        s.grant([key, glob], Budget(tokens=500))
    assert (err.value.scope, err.value.period, err.value.dimension) == ("global", "total", "tokens")
    assert err.value.remaining == 300
    # Two dimensions short: the one furthest from what was needed is named.
    with pytest.raises(LimitRefused) as err:
        s.grant([key], Budget(tokens=700, calls=40))
    assert (err.value.scope, err.value.period, err.value.dimension) == ("key:aaaaaaaaaaaa", "day", "calls")
    assert "today" in str(err.value) and "00:00 UTC" in str(err.value)
    body = err.value.to_dict()
    assert body["scope"] == "key:aaaaaaaaaaaa" and body["requested"] == 40 and body["remaining"] == 10
    again = pickle.loads(pickle.dumps(err.value))  # crosses worker processes intact
    assert again.to_dict() == body and str(again) == str(err.value)


def test_unlimited_want_on_a_limited_dimension_holds_all_the_room(make_store):
    s = make_store()
    limits = ScopeLimits("key:bbbbbbbbbbbb", per_day=Budget(usd=2.0))
    g = s.grant([limits], Budget(tokens=100, seconds=30))
    assert g.budget.usd == pytest.approx(2.0) and g.budget.tokens == 100 and g.budget.seconds == 30
    with pytest.raises(LimitRefused) as err:
        s.grant([limits], Budget(tokens=100))
    assert err.value.dimension == "usd"


def test_seconds_is_not_a_shared_dimension(make_store):
    s = make_store()
    limits = ScopeLimits("global", total=Budget(tokens=100, seconds=1))
    g = s.grant([limits], Budget(tokens=50, seconds=1000))
    assert g.budget.seconds == 1000
    assert "seconds" not in s.spent("global")
    assert set(s.spent("global")) == set(STORE_DIMENSIONS)


# ------------------------------------------------------------- periods
def test_day_limit_resets_at_utc_midnight_while_total_keeps_counting(make_store):
    clock = Clock(datetime(2026, 12, 1, 23, 59, 30, tzinfo=UTC).timestamp())
    s = make_store(clock)
    limits = ScopeLimits("key:cccccccccccc", total=Budget(tokens=1500), per_day=Budget(tokens=1000))
    g = s.grant([limits], Budget(tokens=1000))
    s.settle(g.id, usage(900))
    with pytest.raises(LimitRefused) as err:
        s.grant([limits], Budget(tokens=200))
    assert err.value.period == "day"
    clock.now += 60  # 00:00:30 UTC the next day
    assert s.spent("key:cccccccccccc", "day")["tokens"] == 0
    assert s.spent("key:cccccccccccc", "day:2026-12-01")["tokens"] == 900
    g2 = s.grant([limits], Budget(tokens=800), minimum=Budget(tokens=100))
    assert g2.budget.tokens == 600 and g2.limited_by == "key:cccccccccccc total tokens"
    assert s.spent("key:cccccccccccc", "total")["tokens"] == 900


def test_a_settle_lands_in_the_day_its_grant_was_made(make_store):
    clock = Clock(datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC).timestamp())
    s = make_store(clock)
    limits = ScopeLimits("key:dddddddddddd", per_day=Budget(tokens=1000))
    g = s.grant([limits], Budget(tokens=500))
    clock.now += 5
    s.settle(g.id, usage(300))
    assert s.spent("key:dddddddddddd", "day:2026-12-01")["tokens"] == 300
    assert s.held("key:dddddddddddd", "day:2026-12-01")["tokens"] == 0
    assert s.spent("key:dddddddddddd", "day")["tokens"] == 0
    assert day_key(clock.now) == "day:2026-12-02"


# ------------------------------------------------- crashes, over-reports
def test_a_hold_past_its_ttl_counts_as_fully_spent_and_is_never_freed(make_store):
    clock = Clock()
    s = make_store(clock)
    g = s.grant([KEY], Budget(tokens=600), ttl_s=30)
    clock.now += 31
    assert s.spent("key:0123456789ab")["tokens"] == 600
    assert s.held("key:0123456789ab")["tokens"] == 0
    with pytest.raises(LimitRefused):
        s.grant([KEY], Budget(tokens=500))
    s.release(g.id)  # a late release refunds nothing
    assert s.spent("key:0123456789ab")["tokens"] == 600
    assert s.grant([KEY], Budget(tokens=400)).budget.tokens == 400


def test_a_late_settle_of_an_expired_hold_adds_only_its_excess(make_store):
    clock = Clock()
    s = make_store(clock)
    g = s.grant([KEY], Budget(tokens=300, calls=2), ttl_s=10)
    g_small = s.grant([KEY], Budget(tokens=100), ttl_s=10)
    clock.now += 11
    assert s.settle(g_small.id, usage(40, calls=1)) == {}
    assert s.spent("key:0123456789ab")["tokens"] == 400  # no refund of the unused 60
    assert s.settle(g.id, usage(350, calls=1)) == {"tokens": 50}
    assert s.spent("key:0123456789ab")["tokens"] == 450
    assert s.overdrawn("key:0123456789ab") == {"tokens": 50}


def test_over_report_is_recorded_in_full_and_refuses_the_next_grant_until_cleared(make_store):
    s = make_store()
    g = s.grant([KEY, GLOBAL], Budget(tokens=100))
    assert s.settle(g.id, usage(130)) == {"tokens": 30}
    assert s.spent("key:0123456789ab")["tokens"] == 130
    assert s.spent("global")["tokens"] == 130
    with pytest.raises(LimitRefused) as err:
        s.grant([KEY, GLOBAL], Budget(tokens=10))
    assert err.value.overdrawn and err.value.scope == "key:0123456789ab"
    assert "overdrawn" in str(err.value)
    s.clear_overdrawn("key:0123456789ab")
    with pytest.raises(LimitRefused) as err:
        s.grant([KEY, GLOBAL], Budget(tokens=10))
    assert err.value.scope == "global"  # global limits tokens too, so it was marked
    s.clear_overdrawn("global")
    assert s.grant([KEY, GLOBAL], Budget(tokens=10)).budget.tokens == 10


def test_over_report_marks_only_scopes_limiting_that_dimension_and_day_marks_reset(make_store):
    clock = Clock()
    s = make_store(clock)
    key = ScopeLimits("key:eeeeeeeeeeee", per_day=Budget(tokens=1000))
    glob = ScopeLimits("global", total=Budget(usd=10.0))
    g = s.grant([key, glob], Budget(tokens=100, usd=1.0))
    assert s.settle(g.id, usage(150, usd=0.5)) == {"tokens": 50}
    assert s.overdrawn("global") == {}
    assert s.grant([glob], Budget(usd=1.0)).budget.usd == pytest.approx(1.0)
    with pytest.raises(LimitRefused) as err:
        s.grant([key], Budget(tokens=10))
    assert err.value.overdrawn and err.value.period == "day"
    clock.now += 86400
    assert s.grant([key], Budget(tokens=10)).budget.tokens == 10


def test_settle_and_release_are_idempotent_and_unknown_ids_do_nothing(make_store):
    s = make_store()
    g = s.grant([KEY], Budget(tokens=500))
    s.settle(g.id, usage(100))
    s.settle(g.id, usage(400))
    s.release(g.id)
    s.release("no-such-grant")
    s.settle("no-such-grant", usage(999))
    assert s.spent("key:0123456789ab")["tokens"] == 100
    assert s.held("key:0123456789ab")["tokens"] == 0


def test_usd_limits_admit_an_exact_fit_despite_float_sums(make_store):
    s = make_store()
    limits = ScopeLimits("global", total=Budget(usd=0.3))
    for _ in range(3):
        g = s.grant([limits], Budget(usd=0.1))
        s.settle(g.id, Usage(calls=1, usd=0.1))
    with pytest.raises(LimitRefused):
        s.grant([limits], Budget(usd=0.01))
    assert s.spent("global")["usd"] == pytest.approx(0.3)


# ------------------------------------------------------------ property
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(0, 400), st.integers(0, 400), st.sampled_from([5.0, 1e6])),
        st.tuples(st.just("settle"), st.integers(0, 30), st.floats(0, 1.3)),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("tick"), st.sampled_from([1.0, 6.0, 43200.0])),
    ),
    max_size=40,
)


@pytest.mark.parametrize("kind", STORES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_sequences_keep_spent_plus_held_within_every_limit(kind, ops, tmp_path, redis_url):
    """A reference model tracks what must have been spent; the store must agree and never pass a limit
    while every settle stays within its grant (fractions > 1 are over-reports: then only bounded)."""
    clock = Clock()
    s = _open(kind, tmp_path, redis_url, clock)
    key = ScopeLimits("key:ffffffffffff", total=Budget(tokens=1500, calls=40), per_day=Budget(tokens=900))
    glob = ScopeLimits("global", total=Budget(tokens=2000))
    open_grants: list[tuple[Grant, float]] = []  # (grant, expires)
    over = 0.0
    expected_total = 0.0
    try:
        for op in ops:
            if op[0] == "grant":
                _, want, minimum, ttl = op
                try:
                    g = s.grant([key, glob], Budget(tokens=want, calls=2), minimum=Budget(tokens=min(minimum, want)),
                                ttl_s=ttl)
                except LimitRefused as e:
                    assert e.scope in ("key:ffffffffffff", "global")
                    continue
                assert min(minimum, want) <= g.budget.tokens <= want
                open_grants.append((g, clock.now + ttl))
            elif op[0] in ("settle", "release") and open_grants:
                g, expires = open_grants.pop(op[1] % len(open_grants))
                expired = clock.now >= expires
                if op[0] == "settle":
                    actual = int(g.budget.tokens * op[2])
                    excess = s.settle(g.id, usage(actual))
                    over += max(actual - g.budget.tokens, 0)
                    assert excess == ({"tokens": actual - g.budget.tokens} if actual > g.budget.tokens else {})
                    expected_total += max(actual, g.budget.tokens) if expired else actual
                else:
                    s.release(g.id)
                    expected_total += g.budget.tokens if expired else 0
            elif op[0] == "tick":
                clock.now += op[1]
                for g, expires in [x for x in open_grants if clock.now >= x[1]]:
                    open_grants.remove((g, expires))
                    expected_total += g.budget.tokens  # counted as spent; a late settle is not tested here
            for scope, lim in (("key:ffffffffffff", 1500), ("global", 2000)):
                spent, held = s.spent(scope)["tokens"], s.held(scope)["tokens"]
                assert spent + held <= lim + over
            assert s.spent("key:ffffffffffff", "day")["tokens"] + s.held("key:ffffffffffff", "day")["tokens"] \
                <= 900 + over
            assert s.spent("key:ffffffffffff")["calls"] + s.held("key:ffffffffffff")["calls"] <= 40
        assert s.spent("global")["tokens"] == pytest.approx(expected_total)
        live = sum(g.budget.tokens for g, exp in open_grants if clock.now < exp)
        assert s.held("global")["tokens"] == pytest.approx(live)
    finally:
        s.close()


# --------------------------------------------------------- concurrency
LIMIT = 20_000


def _hammer(store: LedgerStore, seed: int, rounds: int) -> tuple[float, int, int]:
    """Grant/settle/release with random actual <= grant; returns (tokens settled, grants, refusals)."""
    rng = random.Random(seed)
    limits = [ScopeLimits("key:111111111111", total=Budget(tokens=LIMIT, calls=10_000)),
              ScopeLimits("global", per_day=Budget(tokens=LIMIT + 5_000))]
    settled = 0.0
    grants = refused = 0
    for _ in range(rounds):
        want = rng.randint(50, 900)
        try:
            g = store.grant(limits, Budget(tokens=want, calls=3), minimum=Budget(tokens=rng.randint(1, 50)))
        except LimitRefused:
            refused += 1
            continue
        grants += 1
        if rng.random() < 0.2:
            store.release(g.id)
        else:
            actual = rng.randint(0, g.budget.tokens)
            store.settle(g.id, usage(actual, calls=rng.randint(0, 3)))
            settled += actual
    return settled, grants, refused


def _process_worker(url: str, seed: int, rounds: int, out) -> None:
    store = open_store(url)
    try:
        out.put(_hammer(store, seed, rounds))
    finally:
        store.close()


def _check_final(store: LedgerStore, settled: float, grants: int, refused: int) -> None:
    spent = store.spent("key:111111111111")["tokens"]
    assert spent <= LIMIT
    assert spent == pytest.approx(settled)  # no update was lost
    assert store.spent("global")["tokens"] == pytest.approx(settled)
    assert store.held("key:111111111111")["tokens"] == 0
    assert grants > 0 and refused > 0  # the limit was actually reached under contention


def test_many_threads_never_spend_past_the_limit(make_store):
    store = make_store(lambda: NOON)
    results: list[tuple[float, int, int]] = []
    threads = [threading.Thread(target=lambda i=i: results.append(_hammer(store, i, 60))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    _check_final(store, *(sum(col) for col in zip(*results, strict=True)))


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_four_processes_never_spend_past_the_limit(kind, tmp_path, redis_url):
    if kind == "redis":
        reason = redis_available()
        if reason:
            print(f"SKIP: {reason}")
            pytest.skip(reason)
        url = f"{redis_url}?prefix=p{uuid.uuid4().hex[:8]}:"
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(url, 100 + i, 120, out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    store = open_store(url)
    try:
        _check_final(store, *(sum(col) for col in zip(*results, strict=True)))
    finally:
        store.close()


# -------------------------------------------------------------- opening
@pytest.mark.parametrize("url", ["", "ledgers.db", "postgres://db/x", "memory://named", "sqlite://",
                                 "sqlite:///:memory:", "sqlite:///no/such/folder/x.db"])
def test_bad_store_urls_raise_user_errors_that_say_what_to_use(url):
    with pytest.raises(UserError) as err:
        open_store(url)
    msg = str(err.value)
    assert url in msg or "folder" in msg
    if "://" not in url or url.startswith("postgres"):
        assert "memory://" in msg and "sqlite:///" in msg and "redis://" in msg


def test_an_unreachable_redis_is_a_user_error_without_the_password():
    if redis_available() and "package" in (redis_available() or ""):
        pytest.skip(redis_available())
    with pytest.raises(UserError) as err:
        open_store("redis://:s3cret-pw@127.0.0.1:1/0")
    assert "cannot reach" in str(err.value) and "s3cret-pw" not in str(err.value)


def test_open_store_urls_open_each_kind(tmp_path, redis_url, monkeypatch):
    assert isinstance(open_store("memory://"), MemoryStore)
    s = open_store(f"sqlite:///{tmp_path}/a.db")  # SQLAlchemy's four slashes: absolute
    assert isinstance(s, SqliteStore) and s.path == f"{tmp_path}/a.db"
    s.close()
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///rel.db")  # three slashes: relative to the working directory
    assert s.path == "rel.db" and (tmp_path / "rel.db").exists()
    s.close()
    if redis_url:
        r = open_store(redis_url + "?prefix=x:")
        assert isinstance(r, RedisStore) and r.prefix == "x:"
        r.close()
