"""serve.yaml checking and per-request precedence, without HTTP."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.serve.gateway_support import ROOT
from testtime.errors import UserError
from testtime.serve.config import ServeConfig, ServeSettings, load_config
from testtime.serve.plan import resolve
from testtime.serve.wire import ApiError, parse_messages

SETTINGS = ServeSettings(model="sim", config=ServeConfig.model_validate({
    "defaults": {"strategy": "best_of_n", "budget": "tokens=3000", "options": {"n": 4}},
    "models": {"deep": {"strategy": "mcts", "prm": "prm:confidence", "budget": "tokens=20k",
                        "options": {"iterations": 8}}},
}))


def _plan(body=None, headers=None):
    return resolve({"model": "deep", "messages": [], **(body or {})}, headers or {}, SETTINGS)


def test_alias_settings_apply_and_its_options_follow_its_strategy():
    p = _plan()
    assert (p.strategy, p.prm, p.options, p.budget.tokens) == ("mcts", "prm:confidence", {"iterations": 8}, 20000)
    # A header strategy replaces the alias's; the alias's MCTS options do not leak into it.
    h = _plan(headers={"x-testtime-strategy": "self_consistency"})
    assert h.strategy == "self_consistency" and h.options == {} and h.budget.tokens == 20000
    # Body beats header; body options add to the options of the strategy in force.
    b = _plan(body={"testtime": {"strategy": "mcts", "options": {"c_puct": 2.0}}},
              headers={"x-testtime-strategy": "self_consistency", "x-testtime-budget": "tokens=5k"})
    assert b.strategy == "mcts" and b.options == {"c_puct": 2.0} and b.budget.tokens == 5000
    assert b.sources["strategy"] == "body" and b.sources["budget"] == "headers"


def test_defaults_apply_to_the_base_model_and_request_fields_win():
    p = resolve({"model": "sim", "temperature": 0.2, "max_tokens": 99}, {}, SETTINGS)
    assert (p.strategy, p.options, p.budget.tokens) == ("best_of_n", {"n": 4}, 3000)
    assert p.temperature == 0.2 and p.max_tokens == 99


def test_plans_are_independent_values():
    a = _plan(body={"testtime": {"options": {"iterations": 2}}})
    b = _plan()
    a.options["iterations"] = 99
    assert b.options == {"iterations": 8} and SETTINGS.config.models["deep"].options == {"iterations": 8}


@pytest.mark.parametrize("body, param", [
    ({"testtime": {"budget": "tokens=-1"}}, "testtime.budget"),
    ({"testtime": {"stratgy": "mcts"}}, "testtime.stratgy"),
    ({"testtime": "mcts"}, "testtime"),
    ({"n": 3}, "n"),
    ({"temperature": 9}, "temperature"),
    ({"testtime": {"strategy": "beam", "prm": None}}, "testtime.prm"),
])
def test_bad_request_settings_are_400_naming_the_field(body, param):
    with pytest.raises(ApiError) as info:
        resolve({"model": "sim", **body}, {}, SETTINGS)
    assert info.value.status == 400 and info.value.param == param


def test_conversation_split_keeps_every_turn_and_joins_leading_system_messages():
    conv = parse_messages([{"role": "system", "content": "A"}, {"role": "developer", "content": "B"},
                           {"role": "user", "content": [{"type": "text", "text": "q1"}]},
                           {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}])
    assert conv.system == "A\n\nB" and conv.question == "q2"
    assert conv.history == ({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"})
    with pytest.raises(ApiError):
        parse_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_config_errors_name_the_file_the_line_and_the_fix(tmp_path):
    p = tmp_path / "serve.yaml"
    p.write_text("models:\n  fast:\n    strategy: single\n    budgt: tokens=1k\n")
    with pytest.raises(UserError, match=rf"{p}:4: models.fast.budgt: unknown field; known here: .*budget"):
        load_config(p)
    p.write_text("keys:\n  - name: a\n    hash: my-secret-key\n")
    with pytest.raises(UserError, match=rf"{p}:3: keys.0.hash: .*hash-key") as info:
        load_config(p)
    assert "my-secret-key" not in str(info.value)
    p.write_text("defaults:\n  budget: tokens=lots\n")
    with pytest.raises(UserError, match=rf"{p}:2: defaults.budget: bad value 'lots'"):
        load_config(p)
    p.write_text("models: [oops\n")
    with pytest.raises(UserError, match=rf"{p}:2: not valid YAML"):
        load_config(p)


def test_serve_without_the_extra_says_how_to_install_it():
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "from testtime.cli import main; sys.exit(main(['serve', '--model', 'scripted']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and 'pip install "testtime[serve]"' in r.stderr


def test_bad_options_for_a_named_strategy_fail_in_the_config_and_in_a_request(tmp_path):
    p = tmp_path / "serve.yaml"
    p.write_text("models:\n  a:\n    strategy: self_consistency\n    options: {n: 0}\n")
    with pytest.raises(UserError, match=rf"{p}:2: models.a: options for self_consistency"):
        load_config(p)
    with pytest.raises(ApiError) as info:
        resolve({"model": "sim", "testtime": {"strategy": "self_consistency", "options": {"n": 0}}}, {}, SETTINGS)
    assert info.value.param == "testtime.options" and "n >= 1" in info.value.message


@pytest.mark.parametrize("spec", ["python:os:system", "genrm:openai:gpt-4o", "code", "regex:(a+)+$"])
def test_a_request_cannot_name_a_verifier_that_loads_code_or_a_model(spec):
    with pytest.raises(ApiError) as info:
        resolve({"model": "sim", "testtime": {"verifier": spec}}, {}, SETTINGS)
    assert info.value.status == 403 and info.value.param == "testtime.verifier"


def test_safe_verifiers_and_specs_the_operator_named_are_allowed_per_request():
    assert resolve({"model": "sim", "testtime": {"verifier": "math"}}, {}, SETTINGS).verifier == "math"
    assert resolve({"model": "sim", "testtime": {"verifier": "numeric:0.01"}}, {}, SETTINGS).verifier
    allowed = ServeSettings(model="sim", config=ServeConfig.model_validate(
        {"request_specs": ["genrm:openai:gpt-4o"]}))
    assert resolve({"model": "sim", "testtime": {"verifier": "genrm:openai:gpt-4o"}}, {}, allowed).verifier
    # The alias's own PRM is the operator's choice, whoever repeats it.
    assert resolve({"model": "deep", "testtime": {"prm": "prm:confidence"}}, {}, SETTINGS).prm == "prm:confidence"
