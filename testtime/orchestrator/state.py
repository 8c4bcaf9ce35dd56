"""The graph state of a workflow run and the runtime context nodes receive.

The state is what LangGraph checkpoints, so it holds only JSON-like values:
the task inputs and one record per stage (status, round, current answer and
text, verdict, budget limits it was given, usage). Everything that is not
serialisable -- models, the ledger, the tracer, verifier objects -- reaches
the nodes through :class:`WorkflowRuntime`, LangGraph's runtime context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from testtime.budget import Budget, BudgetLedger, Usage
from testtime.context import RunContext

if TYPE_CHECKING:
    from testtime.models.base import Model
    from testtime.orchestrator.checkpoint import CallJournal
    from testtime.orchestrator.workflow import Workflow
    from testtime.verifiers.base import Verifier

#: Stage statuses as stored in the state.
PENDING, RUNNING, DONE, SKIPPED = "pending", "running", "done", "skipped"


def merge_stages(old: dict[str, dict[str, Any]] | None,
                 new: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Reducer: merge per-stage updates field by field.

    Stages that run in the same LangGraph super-step (DAG branches) each write
    their own key, so merging never loses an update.
    """
    out = dict(old or {})
    for name, update in (new or {}).items():
        out[name] = {**out.get(name, {}), **update}
    return out


class WorkflowState(TypedDict, total=False):
    """What the checkpointer stores after every node.

    Attributes:
        inputs: the task inputs (strings, numbers).
        stages: stage name -> record (see :func:`new_record`).
        task_hash: fingerprint of the workflow definition; a resume with a
            different definition is refused.
    """

    inputs: dict[str, Any]
    stages: Annotated[dict[str, dict[str, Any]], merge_stages]
    task_hash: str


def new_record() -> dict[str, Any]:
    """A stage's record before it starts."""
    return {"status": PENDING, "round": 0, "answer": None, "text": "", "score": None,
            "passed": None, "feedback": "", "stopped_reason": "", "budget": None,
            "usage": None, "by_role": {}, "history": []}


@dataclass(kw_only=True)
class WorkflowRuntime:
    """The LangGraph runtime context of a workflow run (never checkpointed).

    Attributes:
        workflow: the workflow definition being run.
        root: the run's RunContext (global ledger, tracer, seed).
        models: model key -> loaded model.
        verifiers: verifier key/spec -> loaded verifier (cache).
        stage_ctx: stage name -> the RunContext carved for it (built when the
            stage starts, or rebuilt from the checkpoint on resume).
        journal: the call journal of a checkpointed run (None without
            checkpoints); stages journal and replay their calls through it.
    """

    workflow: Workflow
    root: RunContext
    models: dict[str, Model] = field(default_factory=dict)
    verifiers: dict[str, Verifier | None] = field(default_factory=dict)
    stage_ctx: dict[str, RunContext] = field(default_factory=dict)
    journal: CallJournal | None = None
    entered: set[str] = field(default_factory=set)
    model_override: str | Model | None = None
    model_options: dict[str, Any] = field(default_factory=dict)

    def load(self, spec: str | Model) -> Model:
        """Load a model spec (``--model`` overrides every spec with one shared model)."""
        from testtime.models.registry import load_model

        if self.model_override is not None:
            cached = self.models.get("__override__")
            if cached is None:
                cached = load_model(self.model_override, **self.model_options)
                self.models["__override__"] = cached
            return cached
        return load_model(spec, **self.model_options)

    def node_rng(self, stage: str, step: str, round_: int) -> random.Random:
        """Per-node randomness that does not depend on what ran before.

        A resumed run re-creates exactly the RNG the node had in the
        uninterrupted run, so seeded runs give the same answers after a crash.
        """
        seed = self.root.seed
        if seed is None:
            return random.Random()
        return random.Random(f"{seed}:{stage}:{step}:{round_}")

    def stage_ledger(self, stage: str, limits: dict[str, float] | None) -> BudgetLedger:
        """The stage's child ledger with ``limits``.

        On resume its clock continues from the seconds the stage had run for
        (journaled with every call), so a ``seconds`` limit does not restart;
        its spend comes back when its first node runs (:meth:`enter_node`),
        through replayed calls and when it ends (:meth:`settle_journal`); see
        :mod:`testtime.orchestrator.checkpoint`.
        """
        ledger = self.root.ledger.child(Budget(**(limits or {})), name=stage)
        if self.journal is not None:
            seconds = self.journal.stage_elapsed(stage)
            if seconds > 0:
                ledger.restore(Usage(), seconds=seconds)
        return ledger

    def enter_node(self, stage: str, scope: str, ledger: BudgetLedger) -> dict[str, Usage]:
        """The first node of ``stage`` this process runs: charge the journaled spend of its earlier nodes.

        Those nodes were checkpointed and do not run again, so their calls
        cannot replay; charging them now gives the resumed node the budget it
        had in the uninterrupted run. Returns role -> Usage charged (empty
        after the first node, and in a run that is not resumed).
        """
        if self.journal is None or stage in self.entered:
            return {}
        self.entered.add(stage)
        taken = self.journal.take_stage_except(stage, scope)
        for role, usage in taken.items():
            ledger.charge(usage, role=role)
        return taken

    def settle_journal(self, stage: str, ledger: BudgetLedger) -> dict[str, Usage]:
        """Charge ``stage``'s journaled spend that no replay accounted for to ``ledger``.

        Called when the stage ends: done calls of an earlier process that the
        re-run did not make again, failed calls, and calls in flight at a
        crash (at their worst case). Returns role -> Usage charged.
        """
        if self.journal is None:
            return {}
        taken = self.journal.take_stage(stage)
        for role, usage in taken.items():
            ledger.charge(usage, role=role)
        return taken
