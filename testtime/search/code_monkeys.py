"""``code_monkeys``: parallel candidates x serial repairs, selected by model-written tests.

After "CodeMonkeys: Scaling Test-Time Compute for Software Engineering"
(Ehrlich et al., 2025), adapted from repository edits to function-level code
problems (HumanEval-style: ``meta["prompt"]`` and ``meta["entry_point"]``):

1. **Parallel.** ``n_candidates`` programs are drawn concurrently (role
   ``solve``); with ``n_candidates=None`` the count is derived from the
   budget, holding room for the repairs, the test writing and the judge.
   At the same time the model writes ``test_sets`` sets of assert-based tests
   for the problem statement (role ``test_gen``): it sees the prompt and the
   entry point, never the problem's own tests.
2. **Serial.** For ``iterations`` rounds every candidate runs against every
   generated test in the sandbox; a candidate that fails some is shown its
   code and the failing tests with their errors and revises it (role
   ``solve``). A trajectory keeps its best-scoring version (ties: the latest).
3. **Selection.** Every final candidate runs against every generated test;
   its votes are the number of generated tests it passes (``Candidate.votes``;
   ``Candidate.score`` is the fraction). The top ``top_k`` distinct programs go
   to a model judge (role ``judge``), which answers ``Choice: N``; when the
   judge is refused, fails or is unparsable, the vote winner is taken.

The problem's own tests (``meta["tests"]``) are never read: they are for the
final evaluation only, and ``ctx.verifier`` is not called. Every call goes
through ``ctx.generate`` on the run's ledger; the strategy is anytime: when
the budget refuses (or a call fails) it stops spending and selects among what
it has, ``stopped_reason="budget_exhausted"``.

The votes are a heuristic, not a verdict: a hostile program can print fake
harness lines or read the generated tests (it runs in the same sandbox as
any candidate); the final evaluation must run the problem's own tests.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from testtime.budget import Usage
from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.models.base import GenerationRequest
from testtime.search.base import Candidate, Problem, SearchResult, SearchStrategy, SearchTree
from testtime.verifiers.code import extract_code
from testtime.verifiers.sandbox import SandboxLimits, run_python

CODE_SYSTEM = ("You are an expert Python programmer. Reply with the complete function in one "
               "```python code block.")

#: The instruction of a test-writing request (test fakes match on it).
TEST_INSTRUCTION = "Write tests for the Python function described below."
TEST_PROMPT = (TEST_INSTRUCTION + " Do not implement the function. Reply with one ```python code block "
               "of plain `assert` statements, one per line, each calling `{entry}` directly on an input "
               "whose correct result follows from the description (include edge cases).\n\n{spec}")

#: The start of a repair request's feedback turn.
REPAIR_INSTRUCTION = "Your code was run against tests written for this problem"
REPAIR_PROMPT = (REPAIR_INSTRUCTION + " (the tests may themselves contain mistakes). "
                 "{failed} of {total} failed:\n\n{failures}\n\nRevise the function so that it is correct "
                 "for the problem statement. Reply with the full corrected function in one ```python "
                 "code block.")

#: The question a judge request ends with (test fakes match on it).
JUDGE_INSTRUCTION = "Which candidate solves the problem correctly?"
JUDGE_PROMPT = ("Problem:\n{question}\n\nCandidate solutions, each with how many of {total} model-written "
                "tests it passes (the tests may contain mistakes):\n\n{candidates}\n\n" + JUDGE_INSTRUCTION +
                " Think briefly, then end with a line of the form 'Choice: N' where N is the candidate's "
                "number.")

_CHOICE = re.compile(r"choice\s*[:=#]?\s*\**\s*(\d+)", re.I)


# ------------------------------------------------------------------ tests
@dataclass(frozen=True, slots=True)
class TestUnit:
    """One statement of a generated test set: ``setup`` runs, ``test`` is counted."""

    kind: str
    source: str
    set_index: int = 0


def parse_tests(code: str, entry_point: str | None, *, set_index: int = 0,
                max_tests: int = 20) -> list[TestUnit]:
    """Split model-written test code into setup statements and counted tests.

    Top-level ``assert`` statements are tests; ``def test_*()`` functions are
    setup plus one test calling them; a HumanEval-style ``def
    check(candidate)`` contributes each of its asserts as a test, with
    ``candidate`` bound to the entry point. A definition of the entry point
    itself is dropped (it would shadow the candidate), so are top-level
    calls of ``check``/``test_*``. Other statements (imports, helpers,
    constants) are setup. When the code does not parse, each line starting
    with ``assert`` that parses alone is a test.
    """
    units: list[TestUnit] = []
    try:
        tree = ast.parse(code)
    except SyntaxError:
        for line in code.splitlines():
            s = line.strip()
            if s.startswith("assert "):
                try:
                    ast.parse(s)
                except SyntaxError:
                    continue
                units.append(TestUnit("test", s, set_index))
        return _cap(units, max_tests)
    for node in tree.body:
        src = ast.get_source_segment(code, node) or ast.unparse(node)
        if isinstance(node, ast.Assert):
            units.append(TestUnit("test", src, set_index))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if entry_point and node.name == entry_point:
                continue
            if node.name == "check" and node.args.args:
                arg = node.args.args[0].arg
                if entry_point:
                    units.append(TestUnit("setup", f"{arg} = {entry_point}", set_index))
                for stmt in node.body:
                    s = ast.get_source_segment(code, stmt) or ast.unparse(stmt)
                    units.append(TestUnit("test" if isinstance(stmt, ast.Assert) else "setup",
                                          _dedent(s), set_index))
            elif node.name.startswith("test") and not node.args.args:
                units.append(TestUnit("setup", src, set_index))
                units.append(TestUnit("test", f"{node.name}()", set_index))
            else:
                units.append(TestUnit("setup", src, set_index))
        elif isinstance(node, ast.ClassDef) and entry_point and node.name == entry_point:
            continue
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Name) and \
                (node.value.func.id == "check" or node.value.func.id.startswith("test")):
            continue
        elif isinstance(node, ast.If) and _is_main_guard(node):
            continue
        else:
            units.append(TestUnit("setup", src, set_index))
    return _cap(units, max_tests)


def _dedent(src: str) -> str:
    import textwrap

    return textwrap.dedent(src)


def _is_main_guard(node: ast.If) -> bool:
    t = node.test
    return isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"


def _cap(units: list[TestUnit], max_tests: int) -> list[TestUnit]:
    out: list[TestUnit] = []
    n = 0
    for u in units:
        if u.kind == "test":
            if n >= max_tests:
                continue
            n += 1
        out.append(u)
    return out


_HARNESS = r'''

def __tt_harness(__units, __nonce, __per_test):
    import json as _j, os as _o, signal as _sig
    class _TimedOut(BaseException):
        pass
    def _alarm(*_a):
        raise _TimedOut()
    try:
        _sig.signal(_sig.SIGALRM, _alarm)
        _timer = True
    except Exception:
        _timer = False
    _g = globals()
    for _i, (_kind, _src) in enumerate(__units):
        _err = None
        try:
            try:
                if _timer:
                    _sig.setitimer(_sig.ITIMER_REAL, __per_test)
                exec(compile(_src, "<generated test %d>" % _i, "exec"), _g)
            finally:
                if _timer:
                    _sig.setitimer(_sig.ITIMER_REAL, 0)
        except _TimedOut:
            _err = "timed out"
        except BaseException as _e:
            _err = (type(_e).__name__ + (": " + str(_e) if str(_e) else ""))[:300]
        _o.write(1, (__nonce + _j.dumps([_i, _err]) + "\n").encode())

__tt_harness(__UNITS__, __NONCE__, __PER_TEST__)
'''


@dataclass(slots=True)
class TestRun:
    """What one candidate did on the generated tests."""

    results: dict[int, str | None] = field(default_factory=dict)  # unit index -> error (None: passed)
    status: str = "ok"
    summary: str = ""

    def passed(self, units: list[TestUnit]) -> int:
        return sum(1 for i, u in enumerate(units) if u.kind == "test" and i in self.results
                   and self.results[i] is None)

    def failures(self, units: list[TestUnit]) -> list[tuple[str, str]]:
        out = []
        for i, u in enumerate(units):
            if u.kind != "test":
                continue
            if i not in self.results:
                out.append((u.source, f"did not run (the program ended early: {self.summary})"))
            elif self.results[i] is not None:
                out.append((u.source, self.results[i] or "failed"))
        return out


def harness_program(code: str, units: list[TestUnit], nonce: str, per_test_s: float) -> str:
    """``code`` followed by a harness that runs each unit and reports it on stdout."""
    body = [(u.kind, u.source) for u in units]
    return (code + "\n" + _HARNESS.replace("__UNITS__", repr(body)).replace("__NONCE__", repr(nonce))
            .replace("__PER_TEST__", repr(float(per_test_s))))


async def run_generated_tests(code: str, units: list[TestUnit], *, limits: SandboxLimits,
                              per_test_s: float = 1.0) -> TestRun:
    """Run ``code`` against the generated ``units`` in the sandbox."""
    nonce = "@@tt-" + secrets.token_hex(8) + "@@"
    result = await run_python(harness_program(code, units, nonce, per_test_s), limits=limits)
    run = TestRun(status=result.status, summary=result.summary())
    for line in result.stdout.splitlines():
        if not line.startswith(nonce):
            continue
        try:
            i, err = json.loads(line[len(nonce):])
        except (ValueError, TypeError):
            continue
        if isinstance(i, int) and 0 <= i < len(units) and i not in run.results:
            run.results[i] = err if err is None else str(err)
    return run


# -------------------------------------------------------------- candidates
def program_code(problem: Problem, text: str) -> str:
    """The candidate's program: its code, after the prompt when it is a completion."""
    entry = problem.meta.get("entry_point")
    code = extract_code(text, entry)
    prompt = problem.meta.get("prompt") or ""
    if entry and prompt and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", code):
        code = prompt + code
    return code.strip("\n") + "\n"


def fenced(code: str) -> str:
    return "```python\n" + code.rstrip("\n") + "\n```"


@dataclass(slots=True)
class Version:
    code: str
    tokens: int
    node: int
    round: int
    passed: int | None = None
    run: TestRun | None = None


def parse_choice(text: str, k: int) -> int | None:
    """The 1-based candidate number a judge chose (last ``Choice: N``), or None."""
    found = _CHOICE.findall(text or "")
    if not found:
        bare = (text or "").strip().strip(".*")
        found = [bare] if bare.isdigit() else []
    if not found:
        return None
    n = int(found[-1])
    return n if 1 <= n <= k else None


class CodeMonkeys(SearchStrategy):
    """Parallel candidates x serial repairs on model-written tests, then votes and a judge.

    Args:
        n_candidates: parallel candidates; None derives the count from the
            budget (at most ``max_candidates``).
        iterations: repair rounds per candidate (0: no repairs).
        test_sets: how many test sets the model writes (0: none; then
            repairs see only crashes and selection has no votes).
        top_k: how many top-voted distinct programs the judge sees.
        judge: ask a model judge among the top ``top_k`` (else votes alone).
        max_candidates: cap on a budget-derived ``n_candidates``.
        max_tests: counted tests kept per test set.
        max_failures: failing tests shown in one repair request.
        test_max_tokens: output cap of a test-writing reply (None: ctx.max_tokens).
        judge_max_tokens: output cap of the judge's reply.
        wall_s: sandbox wall-clock limit of one candidate's test run.
        test_timeout_s: time limit of one generated test.
        memory_mb: sandbox memory cap.
    """

    name = "code_monkeys"

    def __init__(self, n_candidates: int | None = None, *, iterations: int = 2, test_sets: int = 2,
                 top_k: int = 3, judge: bool = True, max_candidates: int = 8, max_tests: int = 20,
                 max_failures: int = 5, test_max_tokens: int | None = None, judge_max_tokens: int = 256,
                 wall_s: float = 10.0, test_timeout_s: float = 2.0, memory_mb: int = 512) -> None:
        if n_candidates is not None and n_candidates < 1:
            raise UserError(f"code_monkeys needs n_candidates >= 1, got {n_candidates}")
        if iterations < 0 or test_sets < 0:
            raise UserError("code_monkeys needs iterations >= 0 and test_sets >= 0")
        if top_k < 1 or max_candidates < 1 or max_tests < 1 or max_failures < 1 or judge_max_tokens < 1:
            raise UserError("code_monkeys needs top_k, max_candidates, max_tests, max_failures and "
                            "judge_max_tokens >= 1")
        if test_max_tokens is not None and test_max_tokens < 1:
            raise UserError(f"code_monkeys test_max_tokens must be >= 1, got {test_max_tokens}")
        if not wall_s > 0 or not test_timeout_s > 0:
            raise UserError("code_monkeys needs wall_s > 0 and test_timeout_s > 0")
        if memory_mb < 64:
            raise UserError(f"code_monkeys memory_mb must be >= 64, got {memory_mb}")
        self.n_candidates = n_candidates
        self.iterations = iterations
        self.test_sets = test_sets
        self.top_k = top_k
        self.judge = judge
        self.max_candidates = max_candidates
        self.max_tests = max_tests
        self.max_failures = max_failures
        self.test_max_tokens = test_max_tokens
        self.judge_max_tokens = judge_max_tokens
        self.wall_s = wall_s
        self.test_timeout_s = test_timeout_s
        self.memory_mb = memory_mb

    # -------------------------------------------------------------- requests
    def _meta(self, problem: Problem, purpose: str) -> dict[str, Any]:
        return {"problem_id": problem.id, "purpose": purpose}

    def solve_request(self, problem: Problem, ctx: RunContext, *, n: int = 1) -> GenerationRequest:
        return GenerationRequest(prompt=problem.question, system=ctx.system_prompt or CODE_SYSTEM, n=n,
                                 max_tokens=ctx.max_tokens, temperature=ctx.temperature,
                                 seed=ctx.next_seed(), metadata=self._meta(problem, "solve"))

    def test_request(self, problem: Problem, ctx: RunContext, *, n: int = 1) -> GenerationRequest:
        entry = problem.meta.get("entry_point") or "the function"
        spec = problem.meta.get("prompt") or problem.question
        return GenerationRequest(prompt=TEST_PROMPT.format(entry=entry, spec=spec), n=n,
                                 max_tokens=self.test_max_tokens or ctx.max_tokens,
                                 temperature=ctx.temperature, seed=ctx.next_seed(),
                                 metadata=self._meta(problem, "test_gen"))

    def repair_request(self, problem: Problem, ctx: RunContext, code: str,
                       failures: list[tuple[str, str]], total: int) -> GenerationRequest:
        shown = failures[: self.max_failures]
        text = "\n\n".join(f"```python\n{src}\n```\n-> {err}" for src, err in shown)
        if len(failures) > len(shown):
            text += f"\n\n({len(failures) - len(shown)} more failed)"
        feedback = REPAIR_PROMPT.format(failed=len(failures), total=total, failures=text)
        messages = ({"role": "user", "content": problem.question},
                    {"role": "assistant", "content": fenced(code)},
                    {"role": "user", "content": feedback})
        return GenerationRequest(messages=messages, system=ctx.system_prompt or CODE_SYSTEM,
                                 max_tokens=ctx.max_tokens, temperature=ctx.temperature,
                                 seed=ctx.next_seed(), metadata=self._meta(problem, "repair"))

    def judge_request(self, problem: Problem, ctx: RunContext, shown: list[Version],
                      total: int) -> GenerationRequest:
        blocks = "\n\n".join(f"Candidate {i + 1} (passes {v.passed or 0} of {total}):\n{fenced(v.code)}"
                             for i, v in enumerate(shown))
        prompt = JUDGE_PROMPT.format(question=problem.question, total=total, candidates=blocks)
        return GenerationRequest(prompt=prompt, max_tokens=self.judge_max_tokens, temperature=0.0,
                                 seed=ctx.next_seed(), metadata=self._meta(problem, "judge"))

    # ---------------------------------------------------------------- budget
    def derive_n(self, problem: Problem, ctx: RunContext) -> int:
        """Candidates the budget pays for, each with its repairs, beside the tests and the judge."""
        model = ctx.model
        solve = model.worst_case(self.solve_request(problem, ctx))
        filler = "x " * ctx.max_tokens
        repair = model.worst_case(self.repair_request(
            problem, ctx, filler, [(filler, "AssertionError")] * 1, self.max_tests))
        fixed = Usage()
        if self.test_sets:
            fixed = fixed + model.worst_case(self.test_request(problem, ctx, n=self.test_sets))
        if self.judge:
            dummy = [Version(code=filler, tokens=0, node=0, round=0)] * self.top_k
            fixed = fixed + model.worst_case(self.judge_request(problem, ctx, dummy, 1))
        per = solve + repair.times(self.iterations)
        lo = ctx.ledger.affordable_repeats(per, self.max_candidates, plus=fixed)
        if lo == 0 and ctx.ledger.can_afford(solve):
            lo = 1  # one unrepaired, unjudged candidate beats none
        return lo

    # ---------------------------------------------------------------- search
    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        ctx.tracer.emit("strategy_start", strategy=self.name, params=self.params())
        tree = SearchTree(ctx)
        limits = SandboxLimits(wall_s=self.wall_s, cpu_s=max(1, int(self.wall_s + 0.999)),
                               memory_mb=self.memory_mb)
        entry = problem.meta.get("entry_point")
        stats: dict[str, Any] = {"repairs": 0, "sandbox_runs": 0, "rounds": 0, "judge": "skipped"}
        stopped = "done"
        n = self.n_candidates if self.n_candidates is not None else self.derive_n(problem, ctx)
        stats["n_candidates_planned"] = n

        # Phase 1: candidates and tests, concurrently.
        async def draw() -> list[Any]:
            if n < 1:
                raise _Nothing()
            return await ctx.generate(self.solve_request(problem, ctx, n=n), role="solve")

        async def write_tests() -> list[Any]:
            if self.test_sets < 1:
                return []
            return await ctx.generate(self.test_request(problem, ctx, n=self.test_sets), role="test_gen")

        got_c, got_t = await asyncio.gather(draw(), write_tests(), return_exceptions=True)
        for r in (got_c, got_t):
            if isinstance(r, BaseException) and not isinstance(r, (SearchStop, _Nothing)):
                raise r
        if isinstance(got_c, (SearchStop, _Nothing)) or isinstance(got_t, SearchStop):
            stopped = "budget_exhausted"
        gens = [] if isinstance(got_c, BaseException) else got_c
        tgens = [] if isinstance(got_t, BaseException) else got_t
        if len(gens) < n or len(tgens) < self.test_sets:
            stopped = "budget_exhausted"

        units: list[TestUnit] = []
        for si, g in enumerate(tgens):
            units.extend(parse_tests(extract_code(g.text), entry, set_index=si, max_tests=self.max_tests))
        total = sum(1 for u in units if u.kind == "test")
        stats["test_sets"] = len(tgens)
        stats["generated_tests"] = total

        trajectories: list[list[Version]] = []
        for g in gens:
            code = program_code(problem, g.text)
            node = tree.add(0, fenced(code), tokens=g.usage.output_tokens, terminal=True)
            trajectories.append([Version(code=code, tokens=g.usage.output_tokens, node=node, round=0)])
        stats["n_candidates"] = len(trajectories)
        if not trajectories:
            return SearchResult(answer=None, text="", tree=tree.graph, stopped_reason="budget_exhausted",
                                stats=stats)

        cache: dict[str, TestRun] = {}

        async def evaluate(versions: list[Version]) -> None:
            todo = {v.code for v in versions if v.code not in cache}

            async def one(code: str) -> None:
                cache[code] = await run_generated_tests(code, units, limits=limits,
                                                        per_test_s=self.test_timeout_s)
                stats["sandbox_runs"] += 1

            await asyncio.gather(*(one(c) for c in todo))
            for v in versions:
                v.run = cache[v.code]
                v.passed = v.run.passed(units)

        # Phase 2: serial repair rounds (a refused repair ends them).
        halted = False
        for rnd in range(1, self.iterations + 1):
            if halted:
                break
            latest = [t[-1] for t in trajectories]
            await evaluate(latest)
            broken = []
            for ti, v in enumerate(latest):
                assert v.run is not None
                failures = v.run.failures(units)
                if not units and v.run.status != "ok":
                    failures = [("(running the program itself)", v.run.summary)]
                if failures:
                    broken.append((ti, v, failures))
            if not broken:
                break
            stats["rounds"] = rnd

            async def repair(ti: int, v: Version, failures: list[tuple[str, str]]) -> Any:
                try:
                    req = self.repair_request(problem, ctx, v.code, failures, max(total, 1))
                    return ti, v, await ctx.generate(req, role="solve")
                except SearchStop as exc:
                    return exc

            for r in await asyncio.gather(*(repair(*b) for b in broken)):
                if isinstance(r, SearchStop):
                    halted = True
                    stopped = "budget_exhausted"
                    continue
                ti, v, rg = r
                if not rg:
                    continue
                code = program_code(problem, rg[0].text)
                node = tree.add(v.node, fenced(code), tokens=rg[0].usage.output_tokens, terminal=True)
                trajectories[ti].append(Version(code=code, tokens=rg[0].usage.output_tokens, node=node,
                                                round=rnd))
                stats["repairs"] += 1

        # Phase 3: votes on the generated tests.
        everything = [v for t in trajectories for v in t]
        await evaluate(everything)
        for v in everything:
            # Traced: each version's share of the generated tests it passes
            # (0 for all when no test was generated: nothing tells them apart).
            tree.scored(v.node, score=(v.passed or 0) / total if total else 0.0, votes=float(v.passed or 0),
                        **({} if total else {"score_source": "no_tests"}))
        finals = [max(reversed(t), key=lambda v: v.passed or 0) for t in trajectories]
        # reversed + max keeps the latest among equals (max returns the first maximum).
        cands: list[Candidate] = []
        for v in finals:
            frac = (v.passed or 0) / total if total else None
            cands.append(Candidate(text=fenced(v.code), answer=v.code, score=frac, tokens=v.tokens,
                                   node=v.node, votes=float(v.passed or 0),
                                   data={"passed_generated": v.passed or 0, "generated_tests": total,
                                         "round": v.round, "status": v.run.status if v.run else None}))
        order = sorted(range(len(cands)), key=lambda i: -cands[i].votes)  # stable: ties keep draw order
        distinct: list[int] = []
        seen: set[str] = set()
        for i in order:
            key = _normalized(finals[i].code)
            if key not in seen:
                seen.add(key)
                distinct.append(i)
        top = distinct[: self.top_k]
        chosen = top[0]
        stats["selection"] = "votes"

        # Phase 4: the judge among the top few.
        if self.judge and len(top) > 1:
            try:
                gens_j = await ctx.generate(self.judge_request(problem, ctx, [finals[i] for i in top], total),
                                            role="judge")
                pick = parse_choice(gens_j[0].text, len(top)) if gens_j else None
                if pick is None:
                    stats["judge"] = "unparsable"
                else:
                    chosen = top[pick - 1]
                    stats["judge"] = "chosen"
                    stats["selection"] = "judge"
                    stats["judge_choice"] = pick
            except SearchStop:
                stats["judge"] = "refused"
                stopped = "budget_exhausted"

        best = cands[chosen]
        tree.select(best.node or 0, reason=stats["selection"])
        ranked = [cands[chosen]] + [cands[i] for i in order if i != chosen]
        stats["votes"] = [c.votes for c in cands]
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=best.answer, stopped_reason=stopped)
        return SearchResult(answer=best.answer, text=best.text, score=best.score, candidates=ranked,
                            tree=tree.graph, stopped_reason=stopped, stats=stats)


class _Nothing(Exception):
    """No candidate could be afforded."""


def _normalized(code: str) -> str:
    try:
        return ast.dump(ast.parse(code))
    except SyntaxError:
        return "\n".join(ln.rstrip() for ln in code.strip().splitlines())
