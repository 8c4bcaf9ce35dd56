"""The `testtime run` command: JSON output, live summary, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = main(["run", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_run_json_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "What is 2+2?", "--model", "scripted:Two plus two.\n\nThe answer is 4.",
                    "--budget", "tokens=600,calls=5", "--seed", "1")
    assert data["answer"] == "4"
    assert data["strategy"] == "self_consistency"
    assert data["model"] == "scripted:scripted"
    assert set(data["usage"]) >= {"input_tokens", "output_tokens", "calls", "usd", "seconds"}
    assert data["budget"] == {"tokens": 600, "calls": 5}
    assert data["stopped_reason"] in {"done", "budget_exhausted"}
    assert data["candidates"] and {"text", "score"} <= set(data["candidates"][0])
    assert data["usage"]["tokens"] <= 600 and data["usage"]["calls"] <= 5


def test_single_strategy_and_n(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "q", "--model", "scripted:The answer is 7.", "--strategy", "single")
    assert data["answer"] == "7" and data["usage"]["calls"] == 1
    data = run_json(capsys, "q", "--model", "scripted:The answer is 7.", "--n", "3", "--budget", "tokens=100k")
    assert len(data["candidates"]) == 3


def test_tiny_budget_is_respected_and_reported(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "What is 2+2?", "--model", "scripted:" + "word " * 500, "--budget", "tokens=200")
    assert data["usage"]["tokens"] <= 200
    assert data["stopped_reason"] == "budget_exhausted"


def test_trace_file_is_written(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    run_json(capsys, "q", "--model", "scripted:The answer is 1.", "--trace", str(trace), "--n", "2")
    kinds = [json.loads(line)["kind"] for line in trace.read_text().splitlines()]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and "model_call" in kinds


def test_live_view_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "What is 2+2?", "--model", "scripted:The answer is 4.", "--budget", "tokens=500"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Answer: 4" in out and "Spend" in out and "Stopped:" in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "q", "--strategy", "nope", "--model", "scripted"], "unknown strategy"),
        (["run", "q", "--budget", "tokens=lots", "--model", "scripted"], "bad value 'lots'"),
        (["run", "q", "--model", "nosuch:thing"], "unknown model spec"),
        (["run", "q", "--model", "llamacpp:/does/not/exist.gguf"], "/does/not/exist.gguf"),
        (["run", "--model", "scripted"], "give a QUESTION"),
        (["run", "q", "--model", "scripted", "--n", "0"], "--n must be >= 1"),
        (["run", "q", "--model", "scripted", "--trace", "/nonexistent-dir/x.jsonl"], "cannot write trace file"),
        (["run", "q", "--model", "scripted", "--frobnicate"], "unrecognized arguments"),
        (["run", "q", "--model", "scripted", "-o", "bogus_option=1"], "bad options for strategy"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_python_api_matches_cli() -> None:
    import testtime

    result = testtime.run("q", model="scripted:The answer is 9.", budget="tokens=100k", n=2, seed=3)
    assert result.answer == "9" and result.stopped_reason == "done"
    # The scripted model has no native n: n=2 is two requests, and calls counts requests.
    assert result.to_dict()["usage"]["calls"] == 2


async def test_arun_inside_event_loop() -> None:
    import testtime

    result = await testtime.arun("q", model="scripted:The answer is 5.", budget="tokens=1000", n=2)
    assert result.answer == "5"
    with pytest.raises(testtime.UserError):
        testtime.run("q", model="scripted")
