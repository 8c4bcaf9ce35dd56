"""Prices you can trust: exact names or explicit globs, a corrected table, no silent $0 under a usd limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from testtime.budget import Budget
from testtime.cli import main
from testtime.errors import UserError
from testtime.models import prices
from testtime.models.prices import (
    FREE,
    Price,
    has_price,
    lookup_price,
    parse_price_arg,
    price_for,
    require_prices,
    resolve_price,
    set_price,
)
from testtime.models.scripted import ScriptedModel
from testtime.testing.loopback import LoopbackOpenAIServer


@pytest.fixture(autouse=True)
def _clean_prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """set_price / --price / TESTTIME_PRICES are process-global: each test starts and ends clean."""
    monkeypatch.delenv("TESTTIME_PRICES", raising=False)
    saved = dict(prices._OVERRIDES), dict(prices._ENV), prices._loaded_env
    prices._OVERRIDES.clear()
    prices._ENV.clear()
    prices._loaded_env = None
    yield
    prices._OVERRIDES.clear()
    prices._OVERRIDES.update(saved[0])
    prices._ENV.clear()
    prices._ENV.update(saved[1])
    prices._loaded_env = saved[2]


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every GET /models probe the openai backend makes (still probing for real)."""
    from testtime.models import openai as openai_backend

    seen: list[str] = []
    real = openai_backend.probe_server

    def recording(base_url: str, *args: object, **kwargs: object) -> str | None:
        seen.append(base_url)
        return real(base_url, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(openai_backend, "probe_server", recording)
    return seen


# ---------------------------------------------------------------- lookup rules
def test_pro_models_are_not_priced_as_their_base_models() -> None:
    assert price_for("openai", "o3-pro") != price_for("openai", "o3")
    assert price_for("openai", "o3-pro").input == 20.0 and price_for("openai", "o3-pro").output == 80.0
    assert price_for("openai", "gpt-5-pro") != price_for("openai", "gpt-5")
    assert price_for("openai", "gpt-5-pro").input == 15.0 and price_for("openai", "gpt-5-pro").output == 120.0
    assert price_for("openai", "o1-pro").output == 600.0


def test_unknown_names_sharing_a_known_prefix_have_no_price() -> None:
    for name in ("o3-pro-max", "gpt-5-turbo", "gpt-4o-realtime-preview", "o3x", "gpt-4.1-giant"):
        assert lookup_price("openai", name) is None, name
        assert not has_price("openai", name)
        assert resolve_price("openai", name) == (None, "none")
    assert lookup_price("anthropic", "claude-sonnet-4-7") is None
    # price_for keeps its old contract (a Price, never None): $0 for an unpriced model...
    assert price_for("openai", "o3-pro-max") == FREE
    # ...and local backends really are free.
    for backend in ("local", "llamacpp", "vllm", "sim", "scripted", "function"):
        assert resolve_price(backend, "anything") == (FREE, "free-backend")


def test_override_without_star_is_exact_and_glob_applies_only_where_written() -> None:
    set_price("openai:acme", Price(1.0, 2.0))
    assert lookup_price("openai", "acme") == Price(1.0, 2.0)
    assert lookup_price("openai", "acme-large") is None  # no prefix matching
    set_price("openai:acme-*", Price(3.0, 4.0))
    assert lookup_price("openai", "acme-large") == Price(3.0, 4.0)
    assert lookup_price("openai", "acme") == Price(1.0, 2.0)  # exact beats the glob
    assert lookup_price("openai", "acmeX") is None  # the glob is "acme-*", not "acme*"
    assert lookup_price("anthropic", "acme-large") is None  # other backend


def test_most_specific_glob_wins_regardless_of_order() -> None:
    set_price("openai:acme-mini-*", Price(0.1, 0.2))
    set_price("openai:acme-*", Price(3.0, 4.0))
    set_price("openai:*", Price(9.0, 9.0))
    assert lookup_price("openai", "acme-mini-3") == Price(0.1, 0.2)
    assert lookup_price("openai", "acme-large") == Price(3.0, 4.0)
    assert lookup_price("openai", "other") == Price(9.0, 9.0)


def test_override_beats_builtin_and_source_says_so() -> None:
    assert resolve_price("openai", "gpt-4o") == (Price(2.50, 10.00, 1.25), "builtin")
    set_price("openai:gpt-4o", Price(1.0, 1.0))
    assert resolve_price("openai", "gpt-4o") == (Price(1.0, 1.0), "override")


def test_dated_snapshots_are_priced_by_explicit_globs_not_prefixes() -> None:
    assert price_for("openai", "gpt-4o-2024-08-06") == price_for("openai", "gpt-4o")
    assert price_for("openai", "gpt-4o-2024-11-20") == price_for("openai", "gpt-4o")
    # gpt-4o-mini's snapshot is mini's price, not gpt-4o's.
    assert price_for("openai", "gpt-4o-mini-2024-07-18") == price_for("openai", "gpt-4o-mini")
    assert price_for("openai", "gpt-4o-mini-2024-07-18") != price_for("openai", "gpt-4o")
    # The first gpt-4o snapshot kept its launch price: an exact entry beats the glob.
    assert price_for("openai", "gpt-4o-2024-05-13") == Price(5.0, 15.0)
    assert price_for("openai", "o3-pro-2025-06-10") == price_for("openai", "o3-pro")
    assert price_for("openai", "o3-2025-04-16") == price_for("openai", "o3")
    assert price_for("openai", "gpt-5-2025-08-07") == price_for("openai", "gpt-5")
    assert price_for("openai", "gpt-5-mini-2025-08-07") == price_for("openai", "gpt-5-mini")
    assert price_for("anthropic", "claude-sonnet-4-20250514") == price_for("anthropic", "claude-sonnet-4")
    assert price_for("anthropic", "claude-opus-4-1-20250805").input == 15.0
    assert price_for("anthropic", "claude-opus-4-5-20251101").input == 5.0
    assert price_for("anthropic", "claude-haiku-4-5-20251001").input == 1.0
    # No table key is a bare prefix: every key is a full name or an explicit `*` glob.
    assert all("*" in k or not k.endswith("-") for k in prices._BUILTIN)


# ---------------------------------------------------------------- the table and costs
def test_builtin_table_has_cached_and_anthropic_cache_write_rates() -> None:
    for key, price in prices._BUILTIN.items():
        assert price.input > 0 and price.output >= price.input, key
        if key.startswith("anthropic:"):
            assert price.cache_write == pytest.approx(price.input * 1.25), key
            assert price.cached_input == pytest.approx(price.input * 0.1), key
        else:
            assert price.cache_write is None, key  # OpenAI bills no cache writes
    assert price_for("openai", "gpt-5").cached_input == 0.125
    assert price_for("anthropic", "claude-sonnet-4-5") == Price(3.0, 15.0, 0.30, 3.75)


def test_cached_and_cache_write_tokens_are_billed_at_their_rates() -> None:
    p = Price(3.0, 15.0, 0.30, 3.75)
    # 1000 prompt tokens: 400 read from cache, 500 written to it, 100 fresh; 200 output.
    got = p.cost(1000, 200, 400, cache_write_tokens=500)
    assert got == pytest.approx((100 * 3.0 + 400 * 0.30 + 500 * 3.75 + 200 * 15.0) / 1e6)
    # Backward compatible positional form; no cache rates = the input rate.
    assert Price(2.5, 10.0, 1.25).cost(1000, 100, 200) == pytest.approx((800 * 2.5 + 200 * 1.25 + 100 * 10) / 1e6)
    assert Price(2.0, 8.0).cost(1000, 0, 300, cache_write_tokens=300) == pytest.approx(1000 * 2.0 / 1e6)
    # The reservation bound covers any split of the prompt into cached / written / fresh.
    assert p.max_cost(1000, 200) >= p.cost(1000, 200, 0, cache_write_tokens=1000)
    assert p.max_cost(1000, 200) == pytest.approx((1000 * 3.75 + 200 * 15.0) / 1e6)


def test_model_usage_and_worst_case_use_cache_write_rate() -> None:
    from testtime.models.base import GenerationRequest

    m = ScriptedModel(["hi"], name="s", price=Price(1.0, 2.0, 0.1, 1.25))
    u = m.usage(1000, 10, 100, cache_write_tokens=800)
    assert u.usd == pytest.approx((100 * 1.0 + 100 * 0.1 + 800 * 1.25 + 10 * 2.0) / 1e6)
    worst = m.worst_case(GenerationRequest(prompt="hello there", max_tokens=10))
    assert worst.usd == pytest.approx(m.price.max_cost(worst.input_tokens, worst.output_tokens))
    assert worst.usd >= m.price.cost(worst.input_tokens, worst.output_tokens, 0,
                                     cache_write_tokens=worst.input_tokens)


def test_reasoning_tokens_are_billed_as_output_once() -> None:
    """Reasoning tokens are part of output_tokens (as both APIs report them): priced at the output rate."""
    m = ScriptedModel(["hi"], name="s", price=Price(1.0, 10.0))
    # 500 output tokens of which 400 were reasoning: billed 500 x output, not 900.
    assert m.usage(100, 500).usd == pytest.approx((100 * 1.0 + 500 * 10.0) / 1e6)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_price_rejects_negative_and_non_finite_rates(bad: float) -> None:
    with pytest.raises(UserError, match="price"):
        Price(bad, 1.0)
    with pytest.raises(UserError, match="cache_write"):
        Price(1.0, 1.0, None, bad)


# ---------------------------------------------------------------- Model.price_source
def test_model_records_where_its_price_came_from() -> None:
    from testtime.models.openai import OpenAIModel

    assert ScriptedModel(["x"], name="s", price=Price(1, 2)).price_source == "option"
    assert ScriptedModel(["x"], name="s").price_source == "free-backend"
    known = OpenAIModel("gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    assert (known.price_source, known.price) == ("builtin", Price(0.15, 0.60, 0.075))
    unknown = OpenAIModel("unknown-x", base_url="http://127.0.0.1:9/v1")
    assert (unknown.price_source, unknown.price) == ("none", FREE)
    explicit = OpenAIModel("unknown-x", base_url="http://127.0.0.1:9/v1", price=Price(1, 2))
    assert explicit.price_source == "option"
    require_prices([explicit, known], Budget(usd=1.0))  # priced: no error
    with pytest.raises(UserError, match="openai:unknown-x"):
        require_prices([known, unknown], Budget(usd=1.0))
    # A price given after the model was built counts (and is the one it will use).
    set_price("openai:unknown-x", Price(0.5, 1.5))
    require_prices([unknown], Budget(usd=1.0))
    assert (unknown.price, unknown.price_source) == (Price(0.5, 1.5), "override")


# ---------------------------------------------------------------- require_prices
def test_require_prices_names_the_model_and_the_three_ways_to_price_it() -> None:
    with pytest.raises(UserError) as info:
        require_prices(["openai:unknown-x"], Budget(usd=1.0))
    msg = str(info.value)
    assert "\n" not in msg
    assert "openai:unknown-x" in msg
    assert "--price openai:unknown-x=IN,OUT" in msg
    assert "TESTTIME_PRICES" in msg and "prices.yaml" in msg
    assert 'set_price("openai:unknown-x", Price(IN, OUT))' in msg


def test_require_prices_is_silent_without_a_usd_limit_or_for_priced_and_local_models() -> None:
    require_prices(["openai:unknown-x", "anthropic:nope"], Budget(tokens=1000))
    require_prices(["openai:unknown-x"], None)
    require_prices(["openai:gpt-4o", "anthropic:claude-sonnet-4-5", "sim", "local", "scripted:hi"],
                   Budget(usd=1.0))
    # A backend `price` option counts as a price, for a spec or a {"spec": ..., **options} mapping.
    require_prices(["openai:unknown-x"], Budget(usd=1.0), options={"price": Price(1, 2)})
    require_prices([{"spec": "openai:unknown-x", "price": Price(1, 2)}], Budget(usd=1.0))
    with pytest.raises(UserError, match="anthropic:nope"):
        require_prices([{"spec": "anthropic:nope"}], Budget(usd=1.0))


def test_require_prices_checks_the_model_inside_a_verifier() -> None:
    from testtime.models.openai import OpenAIModel

    class Judge:
        model = OpenAIModel("judge-x", base_url="http://127.0.0.1:9/v1")

    with pytest.raises(UserError, match="openai:judge-x"):
        require_prices([ScriptedModel(["x"]), Judge()], Budget(usd=1.0))


def test_build_context_refuses_before_loading_the_model(probes: list[str]) -> None:
    from testtime.api import build_context

    with LoopbackOpenAIServer() as srv:
        with pytest.raises(UserError, match="openai:unknown-x"):
            build_context(model="openai:unknown-x", base_url=srv.base_url, budget="usd=1")
        assert probes == [] and srv.requests == []
        ctx = build_context(model="openai:unknown-x", base_url=srv.base_url, budget="tokens=100")
        assert ctx.model.price_source == "none"  # no usd limit: fine


def test_workflow_with_unpriced_model_and_usd_limit_refuses_before_loading(probes: list[str]) -> None:
    from testtime.orchestrator.workflow import Workflow

    with LoopbackOpenAIServer() as srv:
        wf = Workflow("t", models={"solver": "openai:gpt-4o-mini"}, budget="usd=1")
        wf.stage("a", "What is 2+2?", model="solver")
        wf.stage("b", "And 3+3? {stages.a.answer}", model="openai:unknown-y", after=("a",))
        with pytest.raises(UserError, match="openai:unknown-y"):
            wf.run(base_url=srv.base_url)
        assert probes == [] and srv.requests == []


# ---------------------------------------------------------------- the CLI
def _run_argv(srv: LoopbackOpenAIServer, *extra: str) -> list[str]:
    return ["run", "What is 2+2?", "--model", "openai:unknown-x", "--base-url", srv.base_url,
            "--budget", "usd=1", "--strategy", "single", "--max-tokens", "8", "--json", *extra]


def test_cli_usd_limit_with_unpriced_model_exits_2_before_any_request(
        capsys: pytest.CaptureFixture[str], probes: list[str]) -> None:
    with LoopbackOpenAIServer(reply="The answer is 4.") as srv:
        code = main(_run_argv(srv))
        err = capsys.readouterr().err
        assert code == 2
        assert srv.requests == []  # not one chat request reached the server
        assert probes == []  # not even the GET /models probe
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("testtime: error:")
    assert "openai:unknown-x" in lines[0] and "--price openai:unknown-x=IN,OUT" in lines[0]


def test_cli_price_flag_makes_the_same_run_proceed_and_bill(capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackOpenAIServer(reply="The answer is 4.") as srv:
        code = main(_run_argv(srv, "--price", "openai:unknown-x=2,8"))
        out, err = capsys.readouterr()
        assert code == 0, err
        assert len(srv.requests) >= 1
    result = json.loads(out)
    usage = result["usage"]
    assert usage["usd"] > 0
    assert usage["usd"] == pytest.approx(
        (usage["input_tokens"] * 2 + usage["output_tokens"] * 8) / 1e6, rel=1e-6)


def test_cli_price_flag_glob_and_cached_rate() -> None:
    assert main(["run", "q", "--model", "sim", "--budget", "tokens=1", "--json",
                 "--price", "openai:corp-*=1,2,0.5", "--price", "anthropic:x=1,2,0.1,1.25"]) in (0, 1)
    assert lookup_price("openai", "corp-7b") == Price(1.0, 2.0, 0.5)
    assert lookup_price("openai", "corp") is None
    assert lookup_price("anthropic", "x") == Price(1.0, 2.0, 0.1, 1.25)


@pytest.mark.parametrize("value", ["openai:x=abc,1", "x=1,2", "openai:x=1", "openai:x=1,2,3,4,5",
                                   "openai:x=-1,2", "openai:x=nan,1", "openai:x=1e400,1", "openai:x",
                                   "=1,2", "openai:=1,2"])
def test_cli_bad_price_values_exit_2_naming_the_flag(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "q", "--model", "sim", "--price", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--price" in err[0]
    assert prices._OVERRIDES == {}  # nothing half-applied
    with pytest.raises(UserError, match="--price"):
        parse_price_arg(value)


# ---------------------------------------------------------------- prices.yaml
def test_prices_yaml_supports_globs_and_cache_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text('"anthropic:corp-*": {input: 2, output: 10, cached_input: 0.2, cache_write: 2.5}\n'
                    '"openai:exact-one": {input: 1, output: 3}\n', encoding="utf-8")
    monkeypatch.setenv("TESTTIME_PRICES", str(path))
    assert resolve_price("anthropic", "corp-large") == (Price(2.0, 10.0, 0.2, 2.5), "override")
    assert lookup_price("openai", "exact-one") == Price(1.0, 3.0)
    assert lookup_price("openai", "exact-one-2") is None  # no prefix matching in the file either
    require_prices(["anthropic:corp-large"], Budget(usd=1.0))
    # set_price beats the file
    set_price("openai:exact-one", Price(9.0, 9.0))
    assert lookup_price("openai", "exact-one") == Price(9.0, 9.0)


@pytest.mark.parametrize("text, needle", [
    ('"openai:x": {input: 1}\n', "needs 'input' and 'output'"),
    ('"openai:x": {input: abc, output: 1}\n', "input must be a number"),
    ('"openai:x": {input: 1, output: 2, cache_writes: 1}\n', "unknown field"),
    ('"openai:x": {input: -1, output: 2}\n', "finite number >= 0"),
    ('"x": {input: 1, output: 2}\n', "backend:model"),
    ("- just a list\n", "expected a mapping"),
    ("{ not: [yaml\n", "not valid YAML"),
])
def test_bad_prices_yaml_is_one_clear_error(text: str, needle: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("TESTTIME_PRICES", str(path))
    with pytest.raises(UserError, match="TESTTIME_PRICES") as info:
        lookup_price("openai", "x")
    assert needle in str(info.value)


# ---------------------------------------------------------------- testtime models
def test_models_table_shows_the_price_each_row_will_use(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "price" in out
    assert "$0.15 / $0.60 per 1M, cached $0.075 (builtin)" in out  # openai:gpt-4o-mini
    assert "$3.00 / $15.00 per 1M, cached $0.30, cache write $3.75 (builtin)" in out  # claude-sonnet-4

    assert main(["models", "--json", "--model", "openai:unknown-x", "--model", "openai:o3-pro",
                 "--price", "openai:mine=1,2"]) == 0
    rows = {r["example"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["openai:unknown-x"]["price_source"] == "none"
    assert rows["openai:unknown-x"]["price_usd_per_1m"] is None
    assert "none" in rows["openai:unknown-x"]["price"] and "--price" in rows["openai:unknown-x"]["price"]
    assert rows["openai:o3-pro"]["price_usd_per_1m"]["input"] == 20.0
    assert rows["openai:gpt-4o-mini"]["price_source"] == "builtin"
    assert rows["local"]["price_source"] == "free-backend"


def test_models_prices_prints_the_effective_table(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["models", "--prices", "--json", "--price", "openai:mine-*=1,2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["key"]: r for r in rows}
    assert rows[0]["key"] == "openai:mine-*" and rows[0]["source"] == "override"
    assert by["openai:o3-pro"]["input"] == 20.0 and by["openai:o3-pro"]["source"] == "builtin"
    assert by["openai:gpt-4o-20*"]["output"] == 10.0
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["models", "--prices", "--model", "openai:gpt-5-pro-2025-10-06"]) == 0
    out = capsys.readouterr().out
    assert "openai:gpt-5-pro-2025-10-06" in out and "$120" in out


async def test_anthropic_backend_bills_cache_reads_and_writes_at_their_rates() -> None:
    from tests.support import FAKE_KEY
    from tests.support.anthropic_server import MESSAGES, anthropic_server, message
    from tests.support.loopback import Reply
    from testtime.models.base import GenerationRequest
    from testtime.models.registry import load_model

    body = message("Paris.", input_tokens=100, output_tokens=10, cache_read=200)
    body["usage"]["cache_creation_input_tokens"] = 300
    with anthropic_server() as srv:
        srv.push(MESSAGES, Reply(body=body))
        model = load_model("anthropic:claude-sonnet-4-5-20250929", base_url=srv.url, api_key=FAKE_KEY)
        assert model.price_source == "builtin"
        gens = await model.generate(GenerationRequest(prompt="Capital of France?", max_tokens=20))
    usage = gens[0].usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (600, 200, 10)
    # 100 fresh x $3 + 200 cache reads x $0.30 + 300 cache writes x $3.75 + 10 output x $15, per 1M
    assert usage.usd == pytest.approx((100 * 3.0 + 200 * 0.30 + 300 * 3.75 + 10 * 15.0) / 1e6)
