"""``flexive:MODEL`` -- FlexiVe, a generative verifier with a flexible budget.

From "Solve-Detect-Verify: Inference-Time Scaling with Flexible Generative
Verifier": first a cheap *fast* pass -- ``k`` short verifications
(``fast_max_tokens`` each, a prompt that asks for a brief check). Their
disagreement is ``1 - max(#Yes, #No) / k`` (unreadable samples count as
dissent). If it is at most ``max_disagreement`` the fast verdicts decide
(score: their mean P(Yes)); otherwise a *slow* pass of ``slow_m``
verifications with a larger budget (``slow_max_tokens``, a careful prompt)
decides. ``Verdict.data["path"]`` says which ran (``"fast"`` / ``"slow"``;
``"fast (slow refused)"`` when the budget could not pay for the slow pass).

Spec: ``flexive:MODEL_SPEC[?k=4&fast_max_tokens=64&slow_max_tokens=512&slow_m=1&max_disagreement=0.25]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from testtime.errors import SearchStop, UserError
from testtime.models.base import Model
from testtime.verifiers.base import Verdict, Verifier
from testtime.verifiers.generative import TEMPLATE, GenRM, Judgement, summarize

if TYPE_CHECKING:
    from testtime.context import RunContext
    from testtime.search.base import Problem

FAST_TEMPLATE = (
    "Question:\n{question}\n\nProposed solution:\n{candidate}\n\n"
    "Quickly check the final answer (one or two sentences). Then write exactly 'Verdict: Yes' "
    "if it is correct or 'Verdict: No' if it is not."
)

SLOW_TEMPLATE = TEMPLATE.replace("Verify the proposed solution step by step.",
                                 "Verify the proposed solution carefully, step by step, re-deriving "
                                 "each result and looking for any error.")


class FlexiVe(Verifier):
    """Fast pass of ``k`` short verifications; a slow pass only on disagreement.

    Args:
        model: the verifier model; None uses the policy (``ctx.model``).
        k: fast verifications.
        fast_max_tokens / slow_max_tokens: token budgets of one verification.
        slow_m: slow verifications (run only on disagreement).
        max_disagreement: the largest fast-pass disagreement accepted without
            a slow pass (0: any dissent triggers it).
        threshold, temperature, logprobs, top_logprobs: as for :class:`GenRM`.
    """

    name = "flexive"

    def __init__(self, model: Model | None = None, *, k: int = 4, fast_max_tokens: int = 64,
                 slow_max_tokens: int = 512, slow_m: int = 1, max_disagreement: float = 0.25,
                 threshold: float = 0.5, temperature: float = 0.7, logprobs: bool | str = "auto",
                 top_logprobs: int = 5) -> None:
        if k < 1 or slow_m < 1 or fast_max_tokens < 1 or slow_max_tokens < 1:
            raise UserError("flexive needs k, slow_m, fast_max_tokens and slow_max_tokens >= 1")
        if not 0.0 <= max_disagreement <= 1.0:
            raise UserError(f"flexive max_disagreement must be in [0, 1], got {max_disagreement}")
        self.k = k
        self.fast_max_tokens = fast_max_tokens
        self.slow_max_tokens = slow_max_tokens
        self.slow_m = slow_m
        self.max_disagreement = max_disagreement
        self.threshold = threshold
        self._genrm = GenRM(model, m=k, max_tokens=fast_max_tokens, temperature=temperature,
                            threshold=threshold, logprobs=logprobs, top_logprobs=top_logprobs)
        self._genrm.name = self.name

    @property
    def model(self) -> Model | None:
        return self._genrm.model

    @staticmethod
    def disagreement(judgements: list[Judgement]) -> float:
        """``1 - max(#Yes, #No) / k`` (unreadable samples count as dissent)."""
        if not judgements:
            return 1.0
        yes = sum(1 for j in judgements if j.said == "yes")
        no = sum(1 for j in judgements if j.said == "no")
        return 1.0 - max(yes, no) / len(judgements)

    async def verify(self, problem: Problem, candidate: str, ctx: RunContext) -> Verdict:
        fast = await self._genrm.sample(problem, candidate, ctx, n=self.k,
                                        max_tokens=self.fast_max_tokens, template=FAST_TEMPLATE)
        dis = self.disagreement(fast)
        fast_score, fast_passed, fast_data = summarize(fast, threshold=self.threshold)
        data = {"fast_yes": fast_data["yes"], "fast_no": fast_data["no"],
                "fast_unparsed": fast_data["unparsed"], "disagreement": round(dis, 4),
                "fast_score": round(fast_score, 4)}
        readable = fast_data["yes"] + fast_data["no"] > 0
        if dis <= self.max_disagreement and readable:
            path, score, passed = "fast", fast_score, fast_passed
            feedback = fast_data.get("feedback")
        else:
            try:
                slow = await self._genrm.sample(problem, candidate, ctx, n=self.slow_m,
                                                max_tokens=self.slow_max_tokens, template=SLOW_TEMPLATE)
            except SearchStop:
                if not readable:
                    raise
                ctx.tracer.emit("note", message="flexive: slow pass refused by the budget; using fast verdicts")
                path, score, passed = "fast (slow refused)", fast_score, fast_passed
                feedback = fast_data.get("feedback")
            else:
                slow_score, slow_passed, slow_data = summarize(slow, threshold=self.threshold)
                data.update(slow_yes=slow_data["yes"], slow_no=slow_data["no"],
                            slow_unparsed=slow_data["unparsed"])
                path = "slow"
                if slow_data["yes"] + slow_data["no"] == 0 and readable:
                    score, passed = fast_score, fast_passed  # slow pass unreadable: fall back
                else:
                    score, passed = slow_score, slow_passed
                feedback = slow_data.get("feedback") or fast_data.get("feedback")
        data["path"] = path
        if feedback:
            data["feedback"] = feedback
        detail = (f"{path} path: fast {fast_data['yes']} Yes / {fast_data['no']} No"
                  f" / {fast_data['unparsed']} unreadable, score {score:.2f}")
        ctx.tracer.emit("verdict", verifier=self.name, score=score, passed=passed, detail=detail, path=path)
        return Verdict(score=score, passed=passed, detail=detail, data=data)


__all__ = ["FlexiVe"]
