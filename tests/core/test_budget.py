"""Budget parsing and the ledger's reserve -> settle/release protocol."""

from __future__ import annotations

import threading

import pytest

from testtime.budget import Budget, BudgetLedger, Usage
from testtime.errors import BudgetExhausted, UserError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tokens=20k,usd=0.5,seconds=60", Budget(tokens=20_000, usd=0.5, seconds=60.0)),
        ("tokens=1.5M", Budget(tokens=1_500_000)),
        ("calls=10 output_tokens=2k", Budget(calls=10, output_tokens=2000)),
        ("input=300,usd=$2", Budget(input_tokens=300, usd=2.0)),
        ("seconds=2min", Budget(seconds=120.0)),
        (None, Budget()),
    ],
)
def test_parse_budget_specs(spec: str, expected: Budget) -> None:
    assert Budget.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("tokens=abc", "'abc'"),
        ("tokens", "'tokens'"),
        ("bananas=3", "'bananas'"),
        ("tokens=1,tokens=2", "given twice"),
        ("usd=-1", "bad value"),
        ("", "empty budget spec"),
    ],
)
def test_bad_budget_specs_name_the_bad_part(spec: str, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        Budget.parse(spec)
    assert fragment in str(err.value)


def test_budget_round_trips_through_str() -> None:
    b = Budget.parse("tokens=20k,usd=0.5")
    assert Budget.parse(str(b)) == b


def test_reserve_settle_and_release() -> None:
    ledger = BudgetLedger(Budget(tokens=100, calls=3))
    r = ledger.reserve(Usage(input_tokens=30, output_tokens=50, calls=1))
    assert ledger.reserved("tokens") == 80
    assert ledger.remaining("tokens") == 20
    r.settle(Usage(input_tokens=30, output_tokens=10, calls=1))
    assert ledger.spent("tokens") == 40 and ledger.reserved("tokens") == 0
    r2 = ledger.reserve(Usage(output_tokens=60, calls=1))
    r2.release()
    assert ledger.spent("tokens") == 40 and ledger.open_reservations() == 0
    r2.settle(Usage(output_tokens=60))  # settling twice is a no-op
    assert ledger.spent("tokens") == 40


def test_refusal_names_dimension_and_leaves_no_hold() -> None:
    ledger = BudgetLedger(Budget(tokens=100, calls=1))
    ledger.reserve(Usage(output_tokens=10, calls=1))
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(Usage(output_tokens=10, calls=1))
    assert err.value.dimension == "calls"
    assert ledger.reserved("tokens") == 10  # the refused hold was not applied


def test_hold_releases_on_exception_including_cancellation() -> None:
    import asyncio

    ledger = BudgetLedger(Budget(tokens=100))
    with pytest.raises(asyncio.CancelledError), ledger.hold(Usage(output_tokens=50)):
        raise asyncio.CancelledError
    assert ledger.reserved("tokens") == 0 and ledger.open_reservations() == 0


def test_child_ledger_counts_in_parent_and_has_own_limit() -> None:
    parent = BudgetLedger(Budget(tokens=100))
    child = parent.child(Budget(tokens=60), name="stage1")
    r = child.reserve(Usage(output_tokens=50))
    assert parent.remaining("tokens") == 50
    with pytest.raises(BudgetExhausted) as err:
        child.reserve(Usage(output_tokens=20))
    assert err.value.ledger == "stage1"
    r.settle(Usage(output_tokens=20))
    assert parent.spent("tokens") == 20 and child.spent("tokens") == 20
    # Unused child budget rolls over: the parent still has it.
    assert parent.remaining("tokens") == 80


def test_share_is_a_fraction_of_what_remains() -> None:
    parent = BudgetLedger(Budget(tokens=1000, usd=1.0))
    parent.charge(Usage(output_tokens=200, usd=0.2))
    kid = parent.share(0.5, name="half")
    assert kid.budget.tokens == 400 and kid.budget.usd == pytest.approx(0.4)
    with pytest.raises(UserError):
        parent.share(1.5)


def test_seconds_limit_uses_clock() -> None:
    now = [0.0]
    ledger = BudgetLedger(Budget(seconds=10), clock=lambda: now[0])
    ledger.reserve(Usage(calls=1)).settle(Usage(calls=1))
    now[0] = 10.0
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(Usage(calls=1))
    assert err.value.dimension == "seconds"


def test_restore_keeps_total_across_resume() -> None:
    ledger = BudgetLedger(Budget(tokens=100), start_spent=Usage(input_tokens=30, output_tokens=40, calls=2))
    assert ledger.remaining("tokens") == 30
    with pytest.raises(BudgetExhausted):
        ledger.reserve(Usage(output_tokens=31))


def test_threads_never_overspend() -> None:
    ledger = BudgetLedger(Budget(tokens=1000, calls=150))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        import random

        rng = random.Random(seed)
        for _ in range(50):
            try:
                r = ledger.reserve(Usage(output_tokens=rng.randint(1, 30), calls=1))
            except BudgetExhausted:
                continue
            except BaseException as exc:  # pragma: no cover - surfaced below
                errors.append(exc)
                return
            if rng.random() < 0.3:
                r.release()
            else:
                r.settle(Usage(output_tokens=rng.randint(0, r.amount.output_tokens), calls=1))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert ledger.spent("tokens") <= 1000 and ledger.spent("calls") <= 150
    assert ledger.open_reservations() == 0 and ledger.reserved("tokens") == 0
