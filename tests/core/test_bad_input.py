"""Bad input: every case ends with one clear line (exit 2), or with unreadable
trace lines skipped and counted; none hangs, none prints a traceback, and no
URL password is shown anywhere (stderr, stdout, trace files, repr)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testtime.cli import main
from testtime.trace.events import redact

ROOT = Path(__file__).resolve().parents[2]
#: A case that takes longer than this hangs (each one needs well under a second).
CASE_TIMEOUT_S = 30.0
SECRET = "s3cretpw"
RUN = ["run", "What is 2+2?", "--model", "sim", "--json"]

GOOD_EVENT = json.dumps({"kind": "run_start", "run_id": "r1", "t": 0.0, "stage": None,
                         "question": "q", "budget": {"tokens": 100}})
DEEP = b"[" * 100_000 + b"]" * 100_000
API_TASK = f"""\
name: creds
budget: tokens=2000
models:
  api: {{spec: "openai:fake", base_url: "http://user:{SECRET}@127.0.0.1:1/v1",
         options: {{probe: false, max_retries: 0}}}}
stages:
  - {{name: solve, prompt: "2+2?", model: api}}
"""


def _trace_lines_are_json(tmp: Path) -> None:
    lines = (tmp / "t.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    #: files to create in the working directory first (name -> content)
    files: dict[str, bytes | str] = field(default_factory=dict)
    #: accepted exit codes
    codes: tuple[int, ...] = (2,)
    #: a substring stderr must contain ("" when stderr may be empty)
    err: str = ""
    #: substrings that must appear nowhere: stderr, stdout, files written
    forbid: tuple[str, ...] = ()
    #: run as a subprocess (killed at the timeout) instead of in-process:
    #: for inputs that used to spin for ever
    subprocess: bool = False
    #: a last check on the working directory
    post: Callable[[Path], None] | None = None


CASES = [
    # ---- budgets
    Case("budget-1e400-overflow", RUN + ["--budget", "tokens=1e400"], err="too large"),
    Case("budget-inf", RUN + ["--budget", "tokens=inf"], err="finite number"),
    Case("budget-nan", RUN + ["--budget", "tokens=nan"], err="finite number"),
    Case("budget-negative", RUN + ["--budget", "tokens=-5"], err="bad value '-5'"),
    Case("budget-empty-is-an-error", RUN + ["--budget", ""], err="--budget is empty"),
    Case("budget-only-commas", RUN + ["--budget", ",,"], err="--budget is empty"),
    # ---- strategy options
    Case("option-n-1e400", RUN + ["-o", "n=1e400"], err="option 'n' must be an integer", subprocess=True),
    Case("option-n-fraction-used-to-hang", RUN + ["-o", "n=2.5"], err="option 'n' must be an integer",
         subprocess=True),
    Case("option-n-bool", RUN + ["-o", "n=true"], err="option 'n' must be an integer, got true"),
    Case("option-n-huge", RUN + ["-o", "n=" + "9" * 30], err="at most 1,000,000", subprocess=True),
    Case("option-n-too-many-digits", RUN + ["-o", "n=" + "9" * 5000], err="option 'n' must be an integer"),
    Case("option-n-zero", RUN + ["-o", "n=0"], err="n >= 1"),
    Case("option-n-json-object", RUN + ["-o", 'n={"a": 1}'], err="option 'n' must be an integer, got an object"),
    Case("option-n-json-list", RUN + ["-o", "n=[1, 2]"], err="option 'n' must be an integer, got a list"),
    Case("option-str-json-list", RUN + ["--strategy", "beam", "-o", "select=[1]"],
         err="option 'select' must be a string"),
    Case("option-float-nan", RUN + ["--strategy", "best_of_majority", "-o", "threshold=NaN"],
         err="option 'threshold' must be a finite number"),
    Case("option-n-integral-float-ok", RUN + ["-o", "n=2.0"], codes=(0,)),
    # ---- sampling flags
    Case("temperature-nan", RUN + ["--temperature", "nan"], err="--temperature must be a finite number"),
    Case("temperature-inf", RUN + ["--temperature", "inf"], err="--temperature must be a finite number"),
    Case("temperature-negative", RUN + ["--temperature", "-0.5"], err="--temperature must be a finite number"),
    Case("max-tokens-zero", RUN + ["--max-tokens", "0"], err="--max-tokens must be >= 1"),
    Case("seed-huge-ok", RUN + ["--seed", "9" * 40], codes=(0,)),
    # ---- task files
    Case("task-not-utf8", ["run", "--task", "bad.yaml", "--model", "sim", "--json"],
         files={"bad.yaml": b'name: x\nstages:\n  - {name: a, prompt: "\xff\xfe"}\n'},
         err="task file bad.yaml is not UTF-8 text: byte 0xff at byte 39"),
    Case("task-nul-byte", ["run", "--task", "nul.yaml", "--model", "sim", "--json"],
         files={"nul.yaml": b"name: x\x00\nstages: []\n"}, err="nul.yaml contains a NUL byte at byte 7"),
    Case("task-control-character", ["run", "--task", "ctl.yaml", "--model", "sim", "--json"],
         files={"ctl.yaml": b"name: x\x01\nstages: []\n"}, err="ctl.yaml:1: not valid YAML"),
    Case("task-nested-too-deeply", ["run", "--task", "deep.yaml", "--model", "sim", "--json"],
         files={"deep.yaml": DEEP}, err="deep.yaml: not valid YAML"),
    # ---- text that is not valid Unicode
    Case("question-lone-surrogates-with-trace",
         ["run", "2+2 \udcff\ud800?", "--model", "sim", "--json", "--trace", "t.jsonl"],
         codes=(0,), post=_trace_lines_are_json),
    # ---- trace show
    Case("trace-binary-file", ["trace", "show", "bin.jsonl"], files={"bin.jsonl": bytes(range(256)) * 4},
         err="bin.jsonl: no readable trace events"),
    Case("trace-wrong-field-types", ["trace", "show", "types.jsonl"],
         files={"types.jsonl": '{"kind": 5, "data": []}\n[1, 2]\n"text"\n'},
         err="no readable trace events, 3 line(s) skipped"),
    Case("trace-deeply-nested", ["trace", "show", "deep.jsonl"], files={"deep.jsonl": DEEP + b"\n"},
         err="nested too deeply"),
    Case("trace-good-and-bad-lines-skip-with-count", ["trace", "show", "mix.jsonl"],
         files={"mix.jsonl": b"\n".join([GOOD_EVENT.encode(), b"\xff\xfe\x00", b'{"kind": 5}', DEEP,
                                          b'{"kind": "node_added", "node": "x"}',
                                          b'{"kind": "model_call", "usage": {"calls": "many"}}',
                                          b'{"kind": "run_start", "budget": {"tokens": "lots"}}']) + b"\n"},
         codes=(0,), err="skipped 6 unreadable line(s) of mix.jsonl"),
    # ---- credentials in URLs
    Case("base-url-password-unreachable",
         ["run", "2+2?", "--model", "openai:fake", "--base-url", f"http://user:{SECRET}@127.0.0.1:1/v1",
          "--json", "--trace", "t.jsonl"],
         err="cannot reach the OpenAI-compatible server at http://[redacted]@127.0.0.1:1/v1",
         forbid=(SECRET,)),
    # The failed call's exit code is item 7's (1 when no call succeeded); the
    # point here is the password: kept out of every trace event and of stderr.
    Case("task-model-base-url-password-in-trace", ["run", "--task", "api.yaml", "--trace", "t.jsonl", "--json"],
         files={"api.yaml": API_TASK}, codes=(0, 1), forbid=(SECRET,),
         post=lambda tmp: (_trace_lines_are_json(tmp),
                           _assert_in("[redacted]@127.0.0.1:1", (tmp / "t.jsonl").read_text()))),
]


def _assert_in(needle: str, haystack: str) -> None:
    assert needle in haystack


def _run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["code"] = main(argv)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the case
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(CASE_TIMEOUT_S)
    assert not thread.is_alive(), f"hung for more than {CASE_TIMEOUT_S:.0f} s"
    out, err = capsys.readouterr()
    if "exc" in box:
        raise AssertionError(f"main raised {box['exc']!r}; stderr: {err}") from box["exc"]  # type: ignore[misc]
    return int(box["code"]), out, err  # type: ignore[call-overload]


def _run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    try:
        proc = subprocess.run([sys.executable, "-m", "testtime.cli", *argv], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for more than {CASE_TIMEOUT_S:.0f} s")
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_gives_one_line_and_right_exit_code(case: Case, tmp_path: Path, monkeypatch, capsys):
    for name, content in case.files.items():
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    if case.subprocess:
        code, out, err = _run_subprocess(case.argv, tmp_path)
    else:
        code, out, err = _run_in_process(case.argv, capsys)

    assert "Traceback" not in err, err
    assert code in case.codes, f"exit {code}, stderr: {err}"
    lines = err.strip().splitlines()
    if code == 2 or case.err:  # bad input: one line; skipped trace lines: one warning
        assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
        assert lines[0].startswith("testtime: "), lines[0]
    elif code == 0:
        assert len(lines) <= 1, err
    assert case.err in err
    written = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*")
                      if p.is_file() and p.suffix in (".jsonl", ".json") and p.name not in case.files)
    for secret in case.forbid:
        assert secret not in err and secret not in out and secret not in written
    if case.post is not None:
        case.post(tmp_path)


def test_redact_hides_url_credentials():
    assert redact(f"http://u:{SECRET}@h/v1") == "http://[redacted]@h/v1"
    assert redact(f"at https://tok{SECRET}@github.com/x?mail=a@b.c, ok") == \
        "at https://[redacted]@github.com/x?mail=a@b.c, ok"
    assert redact(f"http://u:p@{SECRET}@h:1/v1") == "http://[redacted]@h:1/v1"  # '@' in the password
    assert redact({"base_url": f"http://u:{SECRET}@h", "urls": [f"http://u:{SECRET}@h"]}) == \
        {"base_url": "http://[redacted]@h", "urls": ["http://[redacted]@h"]}
    # No credentials: unchanged.
    assert redact("http://h/v1?to=a@b.c and a@b.c") == "http://h/v1?to=a@b.c and a@b.c"


def test_openai_model_repr_hides_url_password():
    from testtime.models.openai import OpenAIModel

    model = OpenAIModel("fake", base_url=f"http://user:{SECRET}@127.0.0.1:1/v1", api_key="sk-" + "k" * 20)
    shown = repr(model)
    assert SECRET not in shown and "k" * 20 not in shown
    assert "[redacted]@127.0.0.1:1/v1" in shown
