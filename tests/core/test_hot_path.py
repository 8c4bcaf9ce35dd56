"""The spend path's shortcuts record exactly what the general code would.

The per-sample path builds its trace events already redacted
(``Tracer.emit_redacted``), memoises which key sets hold no secret, reuses one
request for unseeded samples and keeps a ledger's spend in one vector. These
tests hold each shortcut to the result of the long way round.
"""

from __future__ import annotations

import random

import pytest

from testtime.budget import Budget, BudgetLedger, Usage
from testtime.context import RunContext
from testtime.models.base import Capabilities, Generation, GenerationRequest, Model, streams_deltas
from testtime.models.prices import Price
from testtime.models.scripted import FunctionModel, ScriptedModel
from testtime.search.base import Problem, SearchTree, draw_solutions
from testtime.trace.events import Tracer

SECRET = "sk-test-" + "abcdefghijklmnop0123"


def _generic(kind: str, **data: object) -> dict[str, object]:
    """What Tracer.emit records for these fields (the generic redaction walk)."""
    got: list = []
    Tracer(sinks=[got.append]).emit(kind, **data)
    return got[0].data


async def test_model_call_event_equals_the_generic_emit_and_redacts_model_and_finish_reason() -> None:
    def reply(request):
        return Generation(text="The answer is 4.", finish_reason=f"stop Bearer {SECRET}",
                          usage=Usage(input_tokens=3, output_tokens=4, calls=1))

    events: list = []
    model = FunctionModel(reply, name=f"leaky-{SECRET}")
    ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=1000)),
                     tracer=Tracer(sinks=[events.append]), max_tokens=16)
    await draw_solutions(Problem(question="2+2?"), ctx, n=1, batch=1)
    [call] = [e for e in events if e.kind == "model_call"]
    expected = _generic("model_call", model=model.spec, role="solve", n=1,
                        usage=Usage(input_tokens=3, output_tokens=4, calls=1).to_dict(),
                        latency_s=call.data["latency_s"],
                        finish_reasons=[f"stop Bearer {SECRET}"])
    assert call.data == expected
    assert list(call.data) == list(expected)  # same keys in the same order
    assert SECRET not in repr(call.data)


def test_node_added_event_equals_the_generic_emit_and_redacts_the_text() -> None:
    events: list = []
    ctx = RunContext(model=ScriptedModel(), tracer=Tracer(sinks=[events.append]))
    tree = SearchTree(ctx)
    text = f"my key is {SECRET}. The answer is 4."
    node = tree.add(0, text, score=0.5, tokens=9, terminal=True, answer="4")
    [added] = events
    assert added.kind == "node_added"
    assert added.data == _generic("node_added", node=node, parent=0, step=1, score=0.5, tokens=9,
                                  terminal=True, text=text)
    assert SECRET not in added.data["text"]
    # The tree itself keeps the real text and every attribute, as add_node would.
    assert tree[node] == {"text": text, "step": 1, "score": 0.5, "tokens": 9, "visits": 0, "value": 0.0,
                          "terminal": True, "parent": 0, "answer": "4"}
    assert list(tree.graph.successors(0)) == [node]


def test_key_set_memo_never_lets_a_secret_key_through() -> None:
    # A value no pattern recognises: only its key says it is secret.
    hidden = "correct-horse-battery-" + "staple"
    events: list = []
    tracer = Tracer(sinks=[events.append])
    tracer.emit("note", message="plain", detail={"a": 1})
    tracer.emit("note", message="plain", detail={"a": 1, "api_key": hidden})
    tracer.emit("note", message="plain", password=hidden)
    wide = {f"k{i}": i for i in range(40)} | {"authorization": hidden}
    tracer.emit("note", message="wide", detail=wide)
    tracer.emit("note", message="plain", detail={"a": 1})
    assert events[0].data == {"message": "plain", "detail": {"a": 1}}
    assert events[1].data["detail"] == {"a": 1, "api_key": "[redacted]"}
    assert events[2].data["password"] == "[redacted]"
    assert events[3].data["detail"]["authorization"] == "[redacted]"
    assert events[4].data == {"message": "plain", "detail": {"a": 1}}
    assert hidden not in repr([e.data for e in events])


def test_nested_values_are_copied_not_shared_with_the_caller() -> None:
    events: list = []
    params = {"n": 3, "names": ["a", "b"]}
    Tracer(sinks=[events.append]).emit("strategy_start", strategy="x", params=params)
    params["n"] = 99
    params["names"].append("c")
    assert events[0].data["params"] == {"n": 3, "names": ["a", "b"]}


async def test_seeded_samples_get_distinct_seeds_and_unseeded_samples_none() -> None:
    for seed, batch in ((7, 1), (7, 4), (None, 1), (None, 4)):
        model = ScriptedModel(["The answer is 4."])
        ctx = RunContext(model=model, ledger=BudgetLedger(Budget(tokens=10_000)), max_tokens=16,
                         seed=seed, rng=random.Random(seed))
        cands, stopped = await draw_solutions(Problem(question="2+2?"), ctx, n=8, batch=batch)
        assert stopped == "done" and len(cands) == 8 and len(model.requests) == 8
        seeds = [r.seed for r in model.requests]
        if seed is None:
            assert seeds == [None] * 8
        else:
            assert len(set(seeds)) == 8, seeds
        assert all(r.n == 1 for r in model.requests)


def test_ledger_totals_by_role_after_settles_charges_and_restore() -> None:
    root = BudgetLedger(Budget(tokens=10_000))
    root.restore(Usage(input_tokens=5, output_tokens=5, cached_tokens=2, calls=1, usd=0.25, reasoning_tokens=1))
    stage = root.child(Budget(tokens=1000), name="stage")
    res = stage.reserve(Usage(input_tokens=10, output_tokens=20, calls=1, usd=0.5), role="solve")
    assert root.reserved("tokens") == 30 and stage.reserved("usd") == 0.5
    assert res.settle(Usage(input_tokens=10, output_tokens=7, cached_tokens=4, calls=1, usd=0.1,
                            reasoning_tokens=3)) == {}
    stage.charge(Usage(input_tokens=1, output_tokens=2, calls=1, usd=0.05), role="verify")
    assert root.reserved("tokens") == 0 and root.reserved("usd") == 0.0
    assert stage.usage == Usage(input_tokens=11, output_tokens=9, cached_tokens=4, calls=2,
                                usd=0.1 + 0.05, reasoning_tokens=3)
    assert root.usage == Usage(input_tokens=16, output_tokens=14, cached_tokens=6, calls=3,
                               usd=0.25 + 0.1 + 0.05, reasoning_tokens=4)
    assert root.usage_by_role() == {
        "solve": Usage(input_tokens=10, output_tokens=7, cached_tokens=4, calls=1, usd=0.1, reasoning_tokens=3),
        "verify": Usage(input_tokens=1, output_tokens=2, calls=1, usd=0.05),
    }
    assert root.spent("tokens") == 30 and stage.spent("calls") == 2
    assert stage.remaining("tokens") == 1000 - 20 and root.remaining("seconds") == float("inf")


def test_worst_case_memo_recomputes_when_the_request_price_or_native_n_changes() -> None:
    class Switchable(ScriptedModel):
        native = False

        @property
        def capabilities(self) -> Capabilities:
            return Capabilities(native_n=self.native, exact_token_count=True)

    model = Switchable(price=Price(input=1.0, output=2.0))
    req = GenerationRequest(prompt="What is 2 + 2?", n=4, max_tokens=10)
    first = model.worst_case(req)
    assert model.worst_case(req) is first  # the same frozen request: memoised
    assert first == Switchable(price=Price(input=1.0, output=2.0)).worst_case(req)
    assert first.calls == 4 and first.input_tokens == 4 * model.input_upper_bound(req)
    longer = req.with_(max_tokens=20)  # a new request object with other fields
    assert model.worst_case(longer).output_tokens == 80
    model.price = Price(input=10.0, output=20.0)
    assert model.worst_case(req).usd == 10 * first.usd
    model.native = True  # e.g. a server found to honour n: one request, the prompt once
    native = model.worst_case(req)
    assert native.calls == 1 and native.input_tokens == first.input_tokens // 4


async def test_a_whole_reply_model_that_returns_no_list_raises_and_leaves_nothing_reserved() -> None:
    class Broken(Model):
        backend = "broken"

        async def generate(self, request):  # not a list of generations: a backend bug
            return None

    ledger = BudgetLedger(Budget(tokens=1000))
    ctx = RunContext(model=Broken("b"), ledger=ledger, max_tokens=16)
    with pytest.raises(TypeError):
        await ctx.generate(GenerationRequest(prompt="What is 2+2?", max_tokens=16))
    assert ledger.reserved("tokens") == 0 and ledger.in_flight() == 0


def test_streams_deltas_sees_a_stream_overridden_on_the_class_or_the_instance() -> None:
    class Streaming(ScriptedModel):
        async def stream(self, request):
            yield None

    plain = ScriptedModel()
    assert not streams_deltas(plain)
    assert streams_deltas(Streaming())
    patched = ScriptedModel()
    patched.stream = Streaming().stream  # type: ignore[method-assign]
    assert streams_deltas(patched) and not streams_deltas(plain)
