"""The workflow builder: stages + edges + routes compiled to a LangGraph StateGraph.

Example::

    wf = Workflow("math", models={"solver": "sim", "judge": "sim:strong"}, budget="tokens=20k")
    wf.stage("plan", "Plan how to solve: {inputs.question}", model="solver", share=0.3)
    wf.stage("solve", "{inputs.question}\\nPlan:\\n{stages.plan.text}", model="solver",
             strategy="self_consistency", verifier="genrm:judge", after=["plan"])
    result = wf.run({"question": "What is 2 + 3?"})

Each stage compiles to ``S.solve -> S.verify -> (S.refine -> S.verify)* -> S.end``.
When no stage has ``after`` and there are no edges or routes, stages run in
sequence in definition order; otherwise stages without dependencies start at
once (in parallel) and a stage waits for all stages in its ``after``. A :class:`Route` replaces the plain
edges out of a stage by a choice made when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.graph import END as LG_END
from langgraph.graph import START, StateGraph

from testtime.budget import Budget
from testtime.context import RunContext
from testtime.errors import UserError
from testtime.models.base import Model
from testtime.orchestrator import nodes, template
from testtime.orchestrator.definition import END, Route, Stage, merge_thinking, thinking_options
from testtime.orchestrator.state import WorkflowRuntime, WorkflowState
from testtime.thinking import ThinkingPolicy
from testtime.trace.events import TraceEvent, Tracer

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from testtime.verifiers.base import ProcessRewardModel, Verifier

DEFAULT_BUDGET = "tokens=20000"


@dataclass(slots=True, kw_only=True)
class WorkflowResult:
    """The outcome of a workflow run.

    Attributes:
        answer / text / score: those of the output stage.
        stages: stage name -> its final record (answer, text, score, passed,
            rounds, status, stopped_reason, usage, by_role, budget).
        usage: totals, ``seconds``, ``by_role`` and ``by_stage``.
        budget: the global limits.
        stopped_reason: ``verified``, ``done`` or ``budget_exhausted``.
        run_id: the checkpoint thread id (pass it to ``resume=``).
        output: the name of the output stage.
    """

    answer: str | None
    text: str
    score: float | None
    stages: dict[str, dict[str, Any]]
    usage: dict[str, Any]
    budget: dict[str, float]
    stopped_reason: str
    run_id: str
    output: str | None = None
    checkpoint: str | None = None
    resumed: bool = False
    # Duck-typed fields so the live view's summary printer works unchanged.
    strategy: str = "workflow"
    model: str = ""
    candidates: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "text": self.text, "score": self.score,
                "output_stage": self.output, "stages": self.stages, "usage": self.usage,
                "budget": self.budget, "stopped_reason": self.stopped_reason, "run_id": self.run_id,
                "checkpoint": self.checkpoint, "resumed": self.resumed}


class Workflow:
    """A multi-stage test-time scaling workflow under one budget.

    Args:
        name: label used in traces.
        models: model key -> spec or Model; stages refer to them by key.
        model: the default model (spec, key or Model) for stages without one.
        verifiers: verifier key -> spec or Verifier; stages refer by key.
        budget: the default global budget (``arun(budget=...)`` overrides).
        seed: default seed.
        inputs: declared input names -> default (None = required); when
            given, templates may only use declared inputs.
        output: the stage whose answer is the workflow's answer (default:
            the last stage, in definition order, that finished).
        thinking: the thinking policy of every stage (docs/thinking.md): a
            mapping of policy options or a ThinkingPolicy; a stage's own
            ``thinking`` is merged over it key by key.

    Attribute ``thinking_flags`` (options mapping, default None) is a
    run-level layer between the two, set by ``testtime run --task`` from the
    ``--thinking-*`` flags; like ``--model`` it is not part of the
    definition's fingerprint.
    """

    def __init__(self, name: str = "workflow", *, models: Mapping[str, str | Model] | None = None,
                 model: str | Model | None = None, verifiers: Mapping[str, Any] | None = None,
                 budget: str | Budget | None = None, seed: int | None = None,
                 inputs: Mapping[str, Any] | Iterable[str] | None = None,
                 output: str | None = None, stages: Iterable[Stage] = (),
                 edges: Iterable[tuple[str, str]] = (), routes: Iterable[Route] = (),
                 thinking: Mapping[str, Any] | ThinkingPolicy | None = None) -> None:
        self.name = name
        try:
            thinking_options(thinking)  # a bad policy fails here, not at the first stage
        except UserError as exc:
            raise UserError(f"workflow {name!r} thinking: {str(exc).removeprefix('thinking policy: ')}") from None
        self.thinking = thinking
        self.thinking_flags: Mapping[str, Any] | None = None
        self.models: dict[str, str | Model] = dict(models or {})
        self.default_model = model
        self.verifiers: dict[str, Any] = dict(verifiers or {})
        self.budget = budget
        self.seed = seed
        if inputs is None:
            self.inputs: dict[str, Any] | None = None
        elif isinstance(inputs, Mapping):
            self.inputs = dict(inputs)
        else:
            self.inputs = dict.fromkeys(inputs)
        self.output = output
        self.stages: dict[str, Stage] = {}
        self.routes: dict[str, Route] = {}
        self._edges: list[tuple[str, str]] = []
        for s in stages:
            self.add_stage(s)
        for a, b in edges:
            self.edge(a, b)
        for r in routes:
            self.route(r)

    # ------------------------------------------------------------- building
    def add_stage(self, stage: Stage) -> Workflow:
        if stage.name in self.stages:
            raise UserError(f"stage {stage.name!r} is defined twice")
        self.stages[stage.name] = stage
        return self

    def stage(self, name: str, prompt: str, **options: Any) -> Workflow:
        """Add a stage (see :class:`Stage` for options); returns self for chaining."""
        return self.add_stage(Stage(name=name, prompt=prompt, **options))

    def edge(self, src: str, dst: str) -> Workflow:
        """``dst`` starts after ``src`` ends (same as ``after=[src]`` on dst)."""
        self._edges.append((src, dst))
        return self

    def route(self, route: Route | None = None, /, *, after: str | None = None,
              cases: Iterable[tuple[str | Callable[..., bool], str]] = (), default: str = END) -> Workflow:
        """Add conditional edges after a stage (a :class:`Route`, or its fields)."""
        r = route or Route(after=after or "", cases=tuple(cases), default=default)
        if r.after in self.routes:
            raise UserError(f"stage {r.after!r} has two routes; merge their cases")
        self.routes[r.after] = r
        return self

    def stage_thinking(self, stage: Stage) -> ThinkingPolicy | None:
        """The thinking policy of ``stage``'s generations (None: none).

        Layers, later winning key by key: the workflow's ``thinking``, the
        run's ``thinking_flags``, the stage's own ``thinking`` (``False``
        there: none).

        Raises:
            UserError: the merged options disagree, naming the stage.
        """
        try:
            return merge_thinking(self.thinking, self.thinking_flags, stage.thinking)
        except UserError as exc:
            raise UserError(f"stage {stage.name!r} thinking: {str(exc).removeprefix('thinking policy: ')}") from None

    def dependencies(self) -> dict[str, list[str]]:
        """stage -> the stages it waits for (``after`` + edges + route sources)."""
        deps: dict[str, list[str]] = {n: list(s.after) for n, s in self.stages.items()}
        if not self._edges and not self.routes and not any(deps.values()):
            # No structure given: the stages form a sequence in definition order.
            names = list(self.stages)
            return {n: ([names[i - 1]] if i else []) for i, n in enumerate(names)}
        for a, b in self._edges:
            if b in deps and a not in deps[b]:
                deps[b].append(a)
        for r in self.routes.values():
            for t in r.targets():
                if t in deps and r.after not in deps[t]:
                    deps[t].append(r.after)
        return deps

    def validate(self) -> None:
        """Check names, the DAG, routes and templates; raise UserError."""
        if not self.stages:
            raise UserError(f"workflow {self.name!r} has no stages")
        names = set(self.stages)
        for a, b in self._edges:
            for n in (a, b):
                if n not in names:
                    raise UserError(f"edge {a} -> {b}: unknown stage {n!r} (stages: {', '.join(self.stages)})")
        for s in self.stages.values():
            for d in s.after:
                if d not in names:
                    raise UserError(f"stage {s.name!r}: `after` names unknown stage {d!r}")
        for r in self.routes.values():
            if r.after not in names:
                raise UserError(f"route after unknown stage {r.after!r}")
            for t in r.targets():
                if t != END and t not in names:
                    raise UserError(f"route after {r.after!r}: unknown target {t!r} (use a stage or 'end')")
        deps = self.dependencies()
        for r in self.routes.values():
            for t in r.targets():
                if t != END and deps[t] != [r.after]:
                    # A join waiting on a stage a route may skip would never fire.
                    raise UserError(f"route target {t!r} must depend only on {r.after!r}, "
                                    f"but it also waits for {', '.join(x for x in deps[t] if x != r.after)}")
        order = self.topological_order()
        if self.output is not None and self.output not in names:
            raise UserError(f"output names unknown stage {self.output!r}")
        ancestors = self.ancestors()
        for name in order:
            s = self.stages[name]
            declared = None if self.inputs is None else set(self.inputs)
            template.check(s.prompt, inputs=declared, stages=ancestors[name], where=f"stage {name!r} prompt")
            for k, v in s.meta.items():
                if isinstance(v, str):
                    template.check(v, inputs=declared, stages=ancestors[name], where=f"stage {name!r} meta.{k}")
            if isinstance(s.model, str) and s.model not in self.models:
                load_spec_check(s.model, f"stage {name!r} model")
            self.stage_thinking(s)
        self.check_specs()

    def check_specs(self) -> None:
        """Build every stage's strategy and verifier/PRM from its spec, loading no model.

        So an unknown strategy option or a bad verifier spec in the last stage
        fails before the first stage spends anything (``validate`` calls it;
        a definition that passed once is not checked again).
        """
        key = self.fingerprint()
        if getattr(self, "_specs_checked", None) == key:
            return
        from testtime.search.registry import make_strategy

        for key_, spec in self.verifiers.items():  # first: a stage's error then points at its own field
            if isinstance(spec, str) and spec != "default":
                _check_judge_spec(spec, "verifier", self, f"verifiers.{key_}")
        for name, s in self.stages.items():
            if isinstance(s.strategy, str):
                try:
                    strategy = make_strategy(s.strategy, **dict(s.strategy_options))
                except UserError as exc:
                    raise UserError(f"stage {name!r} strategy: {exc}") from None
                if strategy.needs_prm and s.prm is None:
                    raise UserError(f"stage {name!r} strategy: {strategy.name!r} needs a PRM (set `prm:`)")
            verifier = s.verifier
            if isinstance(verifier, str) and verifier in self.verifiers:
                verifier = self.verifiers[verifier]
            if isinstance(verifier, str) and verifier != "default":
                _check_judge_spec(verifier, "verifier", self, f"stage {name!r} verifier")
            if isinstance(s.prm, str) and s.prm != "default":
                _check_judge_spec(s.prm, "prm", self, f"stage {name!r} prm")
        self._specs_checked = key

    def topological_order(self) -> list[str]:
        deps = self.dependencies()
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(n: str, path: list[str]) -> None:
            if state.get(n) == 2:
                return
            if state.get(n) == 1:
                raise UserError(f"stages form a cycle: {' -> '.join(path + [n])}")
            state[n] = 1
            for d in deps[n]:
                visit(d, path + [n])
            state[n] = 2
            order.append(n)

        for n in self.stages:
            visit(n, [])
        return order

    def ancestors(self) -> dict[str, set[str]]:
        deps = self.dependencies()
        out: dict[str, set[str]] = {}
        for n in self.topological_order():
            acc: set[str] = set()
            for d in deps[n]:
                acc |= {d} | out[d]
            out[n] = acc
        return out

    def fingerprint(self) -> str:
        """A hash of everything in the definition that changes what a run does.

        Stages (prompts, models, strategies and their options, verifier and
        PRM specs, shares, budgets, sampling settings), dependencies, routes
        with their conditions, the models and verifiers maps, the default
        model, budget and seed, the declared inputs and the output stage. A
        resume with a different fingerprint is refused (the name is left out:
        a renamed file resumes).
        """
        # ``thinking`` only when set, so definitions without it hash as before it existed.
        blob = {"stages": {n: {k: _plain(getattr(s, k)) for k in s.__slots__  # type: ignore[attr-defined]
                               if k != "thinking" or s.thinking is not None}
                           for n, s in self.stages.items()},
                "deps": self.dependencies(),
                "routes": {src: {"cases": [[_plain(c), t] for c, t in r.cases], "default": r.default}
                           for src, r in sorted(self.routes.items())},
                "models": _plain(self.models), "model": _plain(self.default_model),
                "verifiers": _plain(self.verifiers), "budget": _plain(self.budget), "seed": self.seed,
                "inputs": _plain(self.inputs), "output": self.output}
        if self.thinking is not None:
            blob["thinking"] = _plain(self.thinking)
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=repr).encode()).hexdigest()[:16]

    def build_graph(self) -> StateGraph:
        """The uncompiled LangGraph StateGraph (compile it with a checkpointer)."""
        self.validate()
        g = StateGraph(WorkflowState, context_schema=WorkflowRuntime)
        for s in self.stages.values():
            n = s.name
            g.add_node(f"{n}.solve", nodes.make_solve(s))
            g.add_node(f"{n}.end", nodes.make_end(s))
            if s.verifier is not None:
                g.add_node(f"{n}.verify", nodes.make_verify(s))
                g.add_node(f"{n}.refine", nodes.make_refine(s))
                g.add_edge(f"{n}.solve", f"{n}.verify")
                g.add_conditional_edges(f"{n}.verify", nodes.after_verify(s),
                                        [f"{n}.refine", f"{n}.end"])
                g.add_conditional_edges(f"{n}.refine", nodes.after_refine(s),
                                        [f"{n}.verify", f"{n}.end"])
            else:
                g.add_edge(f"{n}.solve", f"{n}.end")
        deps = self.dependencies()
        routed = {t for r in self.routes.values() for t in r.targets()}
        has_children: set[str] = set()
        for n, ds in deps.items():
            if n in routed:
                continue  # reached through its route
            has_children.update(ds)
            if not ds:
                g.add_edge(START, f"{n}.solve")
            elif len(ds) == 1:
                g.add_edge(f"{ds[0]}.end", f"{n}.solve")
            else:
                g.add_edge([f"{d}.end" for d in ds], f"{n}.solve")
        for src, r in self.routes.items():
            mapping = {t: (LG_END if t == END else f"{t}.solve") for t in r.targets()}
            g.add_conditional_edges(f"{src}.end", nodes.route_from(self.stages[src]), mapping)
        for n in self.stages:
            if n not in has_children and n not in self.routes:
                g.add_edge(f"{n}.end", LG_END)
        return g

    def compile(self, checkpointer: Any = None) -> CompiledStateGraph:
        """Compile to a runnable LangGraph graph."""
        return self.build_graph().compile(checkpointer=checkpointer)

    # ------------------------------------------------------------ resolving
    def resolve_model(self, ref: str | Model | None, rt: WorkflowRuntime) -> Model:
        """A stage's model: a key of ``models``, a spec, a Model, or the default."""
        if ref is None:
            return rt.root.model
        if isinstance(ref, Model):
            return ref
        if ref in rt.models:
            return rt.models[ref]
        model = rt.models.get(f"spec:{ref}") or rt.load(ref)
        rt.models[f"spec:{ref}"] = model
        return model

    def resolve_verifier(self, ref: Any, rt: WorkflowRuntime, ctx: RunContext) -> Verifier | None:
        """A stage's verifier: a key of ``verifiers``, a spec, ``default``, or an object."""
        if ref is None:
            return None
        if ref == "default":
            return rt.root.verifier
        if isinstance(ref, str) and ref in self.verifiers:
            ref = self.verifiers[ref]
        if not isinstance(ref, str):
            return ref
        from testtime.orchestrator.resolve import load_verifier_spec

        return load_verifier_spec(ref, rt, ctx)

    def resolve_prm(self, ref: Any, rt: WorkflowRuntime, ctx: RunContext) -> ProcessRewardModel | None:
        if ref is None or not isinstance(ref, str):
            return ref
        if ref == "default":
            return rt.root.prm
        from testtime.orchestrator.resolve import load_prm_spec

        return load_prm_spec(ref, rt, ctx)

    # -------------------------------------------------------------- running
    async def arun(self, inputs: Mapping[str, Any] | None = None, *, budget: str | Budget | None = None,
                   seed: int | None = None, model: str | Model | None = None, base_url: str | None = None,
                   trace: str | Path | None = None, on_event: Callable[[TraceEvent], None] | None = None,
                   tracer: Tracer | None = None, checkpoint: str | Path | bool | None = None,
                   run_id: str | None = None, resume: str | None = None,
                   context: RunContext | None = None) -> WorkflowResult:
        """Run the workflow (or resume a checkpointed run) and return its result.

        Args:
            inputs: values for ``{inputs.X}`` templates.
            budget: the global budget (default: the workflow's, else tokens=20000).
            seed: makes the run reproducible, across a resume too.
            model: overrides every stage's model (e.g. ``"sim"`` for a dry run).
            base_url: for OpenAI-compatible model specs.
            trace: JSONL trace file to write (appended to on resume).
            on_event: callback for each trace event.
            tracer: use this tracer (its run_id becomes the run id).
            checkpoint: SQLite path, True for the default path, None/False for
                no checkpoints. Resuming needs the same path.
            run_id: the id of a new run (default: random).
            resume: the run_id of a checkpointed run to continue.
            context: a prebuilt root RunContext (ledger, tracer, models).
        """
        from testtime.orchestrator.runner import execute

        return await execute(self, inputs=dict(inputs or {}), budget=budget, seed=seed, model=model,
                             base_url=base_url, trace=trace, on_event=on_event, tracer=tracer,
                             checkpoint=checkpoint, run_id=run_id, resume=resume, context=context)

    def run(self, inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> WorkflowResult:
        """Synchronous :meth:`arun`."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(inputs, **kwargs))
        raise UserError("Workflow.run() was called inside a running event loop; use `await wf.arun(...)`")

    async def astream(self, inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> AsyncIterator[TraceEvent]:
        """Run the workflow and yield its trace events as they happen.

        Takes the keyword arguments of :meth:`arun`; the last event is
        ``run_end``. To get the :class:`WorkflowResult` as well, use
        :class:`testtime.trace.stream.EventStream` and read its ``result``.
        """
        from testtime.trace.stream import EventStream

        stream = EventStream(lambda sink: self.arun(inputs, on_event=sink, **kwargs))
        async for event in stream:
            yield event


def load_spec_check(spec: str, where: str) -> None:
    """Fail early on a model spec whose backend is unknown (without loading it)."""
    from testtime.models.registry import parse_spec

    try:
        parse_spec(spec)
    except UserError as exc:
        raise UserError(f"{where}: {exc} (or use a key of `models`)") from exc


def _check_judge_spec(spec: str, kind: str, wf: Workflow, where: str) -> None:
    """Build a verifier (``kind="verifier"``) or PRM spec with a stand-in model, to check it.

    The model a spec names (``genrm:judge``) must be a key of the workflow's
    models, ``policy``, or a valid model spec; nothing is loaded or sent.
    """
    import importlib

    from testtime.models.scripted import ScriptedModel

    try:
        registry = importlib.import_module("testtime.verifiers.registry")
    except ModuleNotFoundError:  # no verifier registry in this install: nothing to check against
        return
    try:
        head, _ = registry.split_options(spec.strip())
        form, _, arg = head.partition(":")
        form = form.strip().lower()
        target = None
        if kind == "verifier" and form in ("genrm", "flexive"):
            target = arg
        elif kind == "prm" and form == "prm" and arg.partition(":")[0].strip().lower() == "llm":
            target = arg.partition(":")[2]
        if target and target.strip() not in wf.models and target.strip().lower() not in ("policy", "self"):
            load_spec_check(target.strip(), where)
        stand_in = ScriptedModel(["(spec check)"], name="spec-check")
        if kind == "verifier":
            registry.load_verifier(spec, None, model=stand_in)
        else:
            registry.load_prm(spec, None, model=stand_in)
    except UserError as exc:
        if str(exc).startswith(where):
            raise
        raise UserError(f"{where}: {exc}") from None


def _plain(v: Any) -> Any:
    """A JSON-able, process-independent form of a definition value (for the fingerprint)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Budget):
        return {"budget": v.to_dict()}
    if isinstance(v, Model):
        return {"model": v.spec, "type": type(v).__name__}
    params = getattr(v, "params", None)
    if callable(params) and hasattr(v, "search"):  # a strategy instance
        try:
            return {"strategy": getattr(v, "name", type(v).__name__), "params": _plain(params())}
        except Exception:  # noqa: BLE001 - a strategy whose params fail: its type still counts
            return {"strategy": type(v).__name__}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {type(v).__name__: {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    spec = getattr(v, "spec", None)
    if isinstance(spec, str):
        return {"spec": spec, "type": type(v).__name__}
    if callable(v):
        return f"<callable {getattr(v, '__module__', '')}.{getattr(v, '__qualname__', type(v).__name__)}>"
    return f"<{type(v).__name__}>"
