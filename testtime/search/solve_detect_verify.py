"""``solve_detect_verify``: stop solving as soon as a verified answer appears.

From "Solve-Detect-Verify: Inference-Time Scaling with Flexible Generative
Verifier". The detector watches the solver as it writes. On a backend that
streams (OpenAI-compatible servers, vLLM, llama.cpp, Anthropic) each attempt
is **one** streamed request (``mode="stream"``, chosen by ``"auto"``): the
detector reads the deltas and, at a completion point, closes the stream --
the backend stops generating and the call is billed for the prompt and the
tokens received (:func:`~testtime.search.stream_watch.generate_watched`).
On a backend that cannot stream (the simulator, scripted fakes) the solver
writes in chunks of ``chunk_tokens`` instead (``mode="chunks"``; each chunk
continues the previous ones through ``request.prefix``, re-sending it).
A *completion point* is a stated final answer
(``\\boxed{}``, "the answer is ...") followed by the end of the chunk or by a
hesitation marker ("Wait", "Hmm", "Alternatively", ...), where a reasoning
model would start re-checking itself. There the solution so far (cut before
the marker) goes to the verifier (``ctx.verifier``; FlexiVe is the paper's
choice):

* accepted -> stop at once, ``stopped_reason="verified"``: the tokens the
  solver would have spent double-checking are saved;
* rejected -> the verifier's feedback (``Verdict.data["feedback"]`` or its
  detail) goes back to the solver, which writes a revised solution, while
  revisions and budget remain.

A chunk that ends the generation (``eos``/``stop``) or reaches
``ctx.max_tokens`` is a completion point too. Hesitation without a stated
answer is not: there is nothing to verify yet. Anytime: when the budget
refuses a chunk or a verification, the best candidate so far is returned
(highest verifier score, else the longest text with an answer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from testtime.context import RunContext
from testtime.errors import SearchStop, UserError
from testtime.models.base import GenerationRequest
from testtime.search.base import (
    DEFAULT_SYSTEM,
    Candidate,
    Problem,
    SearchResult,
    SearchStrategy,
    SearchTree,
    fit_request,
)
from testtime.search.stream_watch import generate_watched, streams_deltas
from testtime.verifiers.answer import extract_answer, has_final_answer

#: How the solver's output is watched (see the module docstring).
MODES = ("auto", "stream", "chunks")
#: The end of a settled piece of text: a sentence end or closing brace
#: followed by whitespace, or a newline. A stated answer is only trusted up
#: to there while streaming ("The answer is 4" may still become "42").
_SETTLED = re.compile(r"(?:[.!}]\s|\n)")

#: Hesitation markers that signal self-verification has begun.
DEFAULT_MARKERS = ("Wait", "Hmm", "Alternatively", "Let me double-check", "Let me check", "But wait")

REVISE = ("A verifier reviewed your solution and rejected it.\n\nVerifier feedback:\n{feedback}\n\n"
          "Write a corrected solution. Finish with a line of the form 'The answer is X.'")


def completion_point(text: str, markers: Sequence[str], *, ended: bool) -> int | None:
    """Where ``text`` holds a complete solution, as an index to cut at, or None.

    The cut is just before the first hesitation marker that follows a stated
    final answer; else the end of the text when it states an answer (or the
    generation ended).
    """
    if markers:
        pattern = re.compile(r"(?<![A-Za-z])(?:" + "|".join(re.escape(m) for m in markers) + r")(?![a-z])")
        for m in pattern.finditer(text):
            if has_final_answer(text[: m.start()]):
                return m.start()
    if has_final_answer(text) or ended:
        return len(text)
    return None


class SolveDetectVerify(SearchStrategy):
    """Chunked solving with early completion detection and verification.

    Args:
        chunk_tokens: tokens per solver chunk (smaller: earlier detection,
            more calls).
        max_revisions: revisions after rejections (0: verify once); None
            revises for as long as the budget pays for another attempt
            (capped at 32).
        markers: hesitation markers the detector stops at.
        detect: check for completion points as the solver writes (False:
            only when the solver stops by itself -- plain solve-then-verify).
        mode: ``"stream"`` (one streamed request per attempt, stopped at the
            completion point), ``"chunks"`` (``chunk_tokens`` per request) or
            ``"auto"`` (stream when the backend streams).
    """

    name = "solve_detect_verify"

    def __init__(self, *, chunk_tokens: int = 64, max_revisions: int | None = None,
                 markers: Sequence[str] = DEFAULT_MARKERS, detect: bool = True,
                 mode: str = "auto") -> None:
        if mode not in MODES:
            raise UserError(f"solve_detect_verify mode must be one of {', '.join(MODES)}, got {mode!r}")
        if chunk_tokens < 1:
            raise UserError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        if max_revisions is not None and max_revisions < 0:
            raise UserError(f"max_revisions must be >= 0, got {max_revisions}")
        self.chunk_tokens = chunk_tokens
        self.max_revisions = max_revisions
        self.markers = tuple(markers)
        self.detect = detect
        self.mode = mode

    def _request(self, problem: Problem, ctx: RunContext, history: list[dict[str, str]], prefix: str,
                 max_tokens: int) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple([{"role": "user", "content": problem.question}, *history]),
            system=ctx.system_prompt or DEFAULT_SYSTEM, prefix=prefix, max_tokens=max_tokens,
            temperature=ctx.temperature, seed=ctx.next_seed(), metadata={"problem_id": problem.id})

    def _streaming(self, ctx: RunContext) -> bool:
        if self.mode == "auto":
            return streams_deltas(ctx.model) and ctx.journal is None
        return self.mode == "stream"

    def _watch(self, text: str) -> bool:
        """Stop the stream here? At a completion point in the settled text."""
        if not self.detect:
            return False
        ends = [m.end() for m in _SETTLED.finditer(text)]
        if not ends:
            return False
        return completion_point(text[: ends[-1]], self.markers, ended=False) is not None

    async def _solve_stream(self, problem: Problem, ctx: RunContext, history: list[dict[str, str]],
                            stats: dict[str, Any]) -> tuple[str, bool, bool]:
        """One attempt as one streamed request, closed at the completion point."""
        request = fit_request(ctx, self._request(problem, ctx, history, "", ctx.max_tokens), min_tokens=1)
        if request is None:
            return "", False, True
        try:
            gen, early = await generate_watched(ctx, request, self._watch, role="solve")
        except SearchStop:
            return "", False, True
        stats["chunks"] += 1
        text = gen.text
        if early:
            stats["stream_stops"] = stats.get("stream_stops", 0) + 1
        ended = not early and gen.finish_reason != "length"
        cut = completion_point(text, self.markers if self.detect else (), ended=ended or early)
        if cut is not None and cut < len(text):
            stats["early_cuts"] += 1
            ctx.tracer.emit("note", message="solve_detect_verify: completion point before a "
                            "hesitation marker", cut_at=cut, dropped=text[cut:cut + 80])
        return (text[:cut].rstrip() if cut is not None else text), True, False

    async def _solve(self, problem: Problem, ctx: RunContext, history: list[dict[str, str]],
                     stats: dict[str, Any]) -> tuple[str, bool, bool]:
        """Generate one attempt up to its completion point.

        Returns (text, complete, refused): ``refused`` is True when the budget
        stopped the attempt.
        """
        if self._streaming(ctx):
            return await self._solve_stream(problem, ctx, history, stats)
        text = ""
        generated = 0
        while generated < ctx.max_tokens:
            size = min(self.chunk_tokens, ctx.max_tokens - generated)
            request = fit_request(ctx, self._request(problem, ctx, history, text, size), min_tokens=1)
            if request is None:
                return text, False, True
            try:
                gens = await ctx.generate(request, role="solve")
            except SearchStop:
                return text, False, True
            gen = gens[0]
            stats["chunks"] += 1
            generated += max(1, gen.usage.output_tokens)
            text += gen.text
            ended = gen.finish_reason != "length" or generated >= ctx.max_tokens
            if self.detect or ended:
                cut = completion_point(text, self.markers if self.detect else (), ended=ended)
                if cut is not None:
                    if cut < len(text):
                        stats["early_cuts"] += 1
                        ctx.tracer.emit("note", message="solve_detect_verify: completion point before a "
                                        "hesitation marker", cut_at=cut, dropped=text[cut:cut + 80])
                    return text[:cut].rstrip(), True, False
            if ended:
                return text, True, False
        return text, True, False

    async def search(self, problem: Problem, ctx: RunContext) -> SearchResult:
        if ctx.verifier is None:
            raise UserError("solve_detect_verify needs a verifier: pass --verifier SPEC "
                            "(e.g. flexive:MODEL, genrm:MODEL or math)")
        ctx.tracer.emit("strategy_start", strategy=self.name, params=self.params())
        stats: dict[str, Any] = {"attempts": 0, "chunks": 0, "verifications": 0, "early_cuts": 0}
        tree = SearchTree(ctx)
        parent = 0  # each revision is a child of the attempt it revises
        history: list[dict[str, str]] = []
        cands: list[Candidate] = []
        stopped = "done"
        limit = 32 if self.max_revisions is None else self.max_revisions
        for attempt in range(limit + 1):
            stats["attempts"] = attempt + 1
            text, complete, refused = await self._solve(problem, ctx, history, stats)
            if text.strip():
                cands.append(Candidate(text=text, answer=extract_answer(text), data={"attempt": attempt}))
                cands[-1].node = tree.add(parent, text, terminal=True, attempt=attempt)
                parent = cands[-1].node
            if refused:
                stopped = "budget_exhausted"
                break
            if not text.strip():
                continue
            try:
                verdict = await ctx.verifier.verify(problem, text, ctx)
            except SearchStop:
                stopped = "budget_exhausted"
                break
            stats["verifications"] += 1
            cands[-1].score = verdict.score
            tree.scored(parent, score=float(verdict.score), passed=bool(verdict.passed))
            cands[-1].data["verdict"] = verdict.detail
            if verdict.passed:
                stopped = "verified"
                break
            feedback = str(verdict.data.get("feedback") or verdict.detail or "the answer is wrong")
            history = [{"role": "assistant", "content": text},
                       {"role": "user", "content": REVISE.format(feedback=feedback[-1500:])}]
        for c in cands:
            if c.score is None and c.node is not None:
                # Never verified (the budget ran out first): it ranks below every verified attempt.
                tree.scored(c.node, score=0.0, score_source="unverified")
        best = _best(cands)
        result = SearchResult(answer=best.answer if best else None, text=best.text if best else "",
                              score=best.score if best else None, candidates=cands,
                              tree=tree.graph, stopped_reason=stopped, stats=stats)
        ctx.tracer.emit("strategy_end", strategy=self.name, answer=result.answer, stopped_reason=stopped)
        return result


def _best(cands: list[Candidate]) -> Candidate | None:
    if not cands:
        return None
    # Latest first among equals: a revision was written with more information.
    return max(reversed(cands), key=lambda c: (c.score if c.score is not None else -1.0,
                                               c.answer is not None))


__all__ = ["DEFAULT_MARKERS", "MODES", "SolveDetectVerify", "completion_point"]
