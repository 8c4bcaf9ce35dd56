"""The gateway's HTTP application (Starlette, which FastAPI is built on): ``/v1/chat/completions`` and friends.

One request, start to end:

1. authenticate (``Authorization: Bearer KEY`` against the hashed keys of
   the config; 401 when keys are configured and it is missing or unknown);
2. resolve what to run (:func:`testtime.serve.plan.resolve`: body
   ``testtime`` > headers > alias > defaults);
3. *grant*: hold the request's budget on its key's and the global shared
   ledgers (:mod:`testtime.serve.ledgers`) in one atomic step -- all of it,
   or, when only part fits, a smaller budget no less than one full sample
   (the request degrades, anytime), or 429 naming the limit;
4. run the strategy on a fresh :class:`~testtime.context.RunContext` whose
   own ledger is the granted budget (nothing mutable is shared between
   requests but the backend's connection pool; model-backed verifiers/PRMs
   are built once per spec and keep no per-request state, see
   :mod:`testtime.serve.judges`);
5. settle the shared ledgers with what the run really spent, in a
   ``finally`` -- also when the client disconnects, which cancels the
   search (no further upstream requests; in-flight calls are settled at what
   they may have cost).

The response is a standard ChatCompletion whose ``usage`` is the whole
request's spend (every sample, verifier and PRM call), plus a ``testtime``
object and ``X-Testtime-Spent-*`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from testtime.budget import Budget, BudgetLedger
from testtime.errors import CapabilityError, MissingDependency, ModelAPIError, UserError
from testtime.models.base import GenerationRequest, Model
from testtime.serve.config import ServeSettings
from testtime.serve.conversation import ConversationModel
from testtime.serve.judges import JudgeCache
from testtime.serve.metrics import Metrics
from testtime.serve.plan import Plan, model_names, resolve
from testtime.serve.wire import (
    ApiError,
    Conversation,
    apply_stop,
    bad_request,
    check_unsupported,
    chunk,
    completion_body,
    new_id,
    parse_messages,
    pieces,
    stops_of,
    usage_body,
)

log = logging.getLogger("testtime.serve")

try:
    # Starlette directly: FastAPI's request validation and OpenAPI models would only add
    # start-up time (every worker pays it) and per-request overhead to a proxy.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route
except ModuleNotFoundError as exc:  # pragma: no cover - exercised without the extra
    if exc.name == "starlette":
        raise MissingDependency("starlette", "serve", "testtime serve") from None
    raise


def _spent_headers(usage: dict[str, Any], trace_id: str | None) -> dict[str, str]:
    h = {"X-Testtime-Spent-Tokens": str(int(usage.get("tokens", 0))),
         "X-Testtime-Spent-USD": f"{float(usage.get('usd', 0.0)):.8f}"}
    if trace_id:
        h["X-Testtime-Trace-Id"] = trace_id
    return h


class Gateway:
    """Everything one gateway process holds: settings, keys, the shared store, loaded backends, metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        from testtime.serve.ledgers import ScopeLimits, open_store

        self.settings = settings
        cfg = settings.config
        self.keys = None
        if cfg.keys:
            from testtime.serve.keys import KeyRing

            self.keys = KeyRing.from_config(
                [{"name": k.name, "hash": k.hash, **{p: v for p, v in k.limits.model_dump().items() if v}}
                 for k in cfg.keys])
        total, per_day = cfg.limits.budgets()
        self.global_scope = ScopeLimits("global", total=total, per_day=per_day) \
            if (total or per_day) else None
        self.store = open_store(settings.store)
        self.metrics = Metrics()
        self.models: dict[tuple[str, str | None], Model] = {}
        #: Model-backed verifiers/PRMs, built once per spec and closed in :meth:`stop`.
        self.judges = JudgeCache()
        #: Publishes this worker's metrics to a shared store and sums the others' (None: memory://).
        self.publisher: Any = None
        #: Names a request may ask for (aliases, the base spec and its short forms).
        self.served_names = set(cfg.models)
        base = settings.base_model()
        self.served_names |= {base, base.partition(":")[0], base.partition(":")[2]} - {""}
        self.http: Any = None
        #: Request id -> its RunContext while it runs, so a cancelled run can still be settled.
        self.running: dict[str, Any] = {}
        self.trace_dir = Path(settings.trace_dir) if settings.trace_dir else None
        if self.trace_dir is not None:
            self.trace_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load every backend once (a server probe is a blocking call: in a thread)."""
        import httpx

        self.http = httpx.AsyncClient(timeout=httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=None),
                                      limits=httpx.Limits(max_connections=512, max_keepalive_connections=128))
        specs = {(self.settings.base_model(), self.settings.base_url_for(None))}
        for alias in self.settings.config.models.values():
            specs.add((alias.model or self.settings.base_model(), self.settings.base_url_for(alias)))
        for spec, url in sorted(specs, key=lambda x: (x[0], x[1] or "")):
            await self.model_for(spec, url)
        from testtime.serve.shared_metrics import MetricsPublisher, open_share

        share = await asyncio.to_thread(open_share, self.settings.store)
        if share is not None:
            self.publisher = MetricsPublisher(self.metrics, share)
            await self.publisher.start()

    async def stop(self) -> None:
        await self.judges.aclose()
        for model in self.models.values():
            with contextlib.suppress(Exception):
                await model.aclose()
        if self.http is not None:
            await self.http.aclose()
        if self.publisher is not None:  # after the last request: its final counts are published
            await self.publisher.stop()
        self.store.close()

    async def render_metrics(self) -> str:
        """``/metrics``: the whole gateway's counts with a shared store, else this process's."""
        if self.publisher is not None:
            return await self.publisher.render()
        return self.metrics.render()

    async def model_for(self, spec: str, base_url: str | None) -> Model:
        key = (spec, base_url)
        model = self.models.get(key)
        if model is None:
            from testtime.models.registry import load_model

            opts = {"base_url": base_url} if base_url else {}
            model = await asyncio.to_thread(load_model, spec, **opts)
            self.models[key] = self.models.get(key) or model
        return self.models[key]

    # ----------------------------------------------------------------- auth
    def authenticate(self, request: Request) -> Any:
        """The key's entry (None when no keys are configured); 401 otherwise."""
        if self.keys is None:
            return None
        from testtime.serve.keys import bearer_key

        presented = bearer_key(request.headers.get("authorization"))
        if presented is None:
            self.metrics.refused("auth")
            raise ApiError(401, "missing API key: send `Authorization: Bearer KEY` (api_key= in the OpenAI SDK)",
                           type="invalid_request_error", code="invalid_api_key",
                           headers={"x-should-retry": "false"})
        entry = self.keys.lookup(presented)
        if entry is None:
            self.metrics.refused("auth")
            # Never echo the presented key.
            raise ApiError(401, "unknown API key", type="invalid_request_error", code="invalid_api_key",
                           headers={"x-should-retry": "false"})
        return entry

    def scopes(self, entry: Any) -> list[Any]:
        out = []
        if entry is not None:
            out.append(entry.limits)
        if self.global_scope is not None:
            out.append(self.global_scope)
        return out

    # --------------------------------------------------------------- grants
    def want_and_minimum(self, plan: Plan, model: Model, conv: Conversation | None,
                         scopes: list[Any]) -> tuple[Budget, Budget | None]:
        """The budget to hold (finite on every dimension a scope limits) and the least worth running."""
        want = plan.budget
        limited: set[str] = set()
        for sl in scopes:
            for period in ("total", "day"):
                limited |= set(sl.limits(period))
        kw: dict[str, Any] = dict(want.limits())
        tokens = want.tokens
        # A dimension a shared limit caps but the request does not: hold a finite
        # amount (the store would otherwise hold all the room left, starving others).
        if "usd" in limited and want.usd is None and tokens is not None:
            kw["usd"] = model.price.max_cost(tokens, tokens)
        if "calls" in limited and want.calls is None:
            kw["calls"] = 256
        want = Budget(**kw)
        frac = self.settings.config.degrade_min_fraction
        if frac <= 0 or conv is None:
            return want, None
        from testtime.search.base import DEFAULT_SYSTEM

        # One full sample of the conversation: anything less cannot answer.
        one = GenerationRequest(messages=(*conv.history, {"role": "user", "content": conv.question}),
                                system=conv.system or DEFAULT_SYSTEM,
                                max_tokens=plan.max_tokens or 512)
        wc = model.worst_case(one)
        mk: dict[str, Any] = {}
        for dim, lim in want.limits().items():
            if dim == "seconds":
                continue
            floor = lim * frac
            need = {"tokens": wc.tokens, "input_tokens": wc.input_tokens, "output_tokens": wc.output_tokens,
                    "calls": wc.calls, "usd": wc.usd}.get(dim, floor)
            v = min(lim, max(floor, need))
            mk[dim] = int(v) if dim != "usd" else v
        return want, Budget(**mk)

    async def grant(self, scopes: list[Any], want: Budget, minimum: Budget | None) -> Any:
        from testtime.serve.ledgers import Grant, LimitRefused
        from testtime.serve.ledgers.base import LedgerUnavailable

        if not scopes:
            return Grant(id="", budget=want)
        wait_until = time.monotonic() + self.settings.config.admission_wait_s
        try:
            while True:
                try:
                    g = await asyncio.to_thread(self.store.grant, scopes, want, minimum=minimum)
                    break
                except LimitRefused as exc:
                    # Holds in flight on the refusing limit will return their slack when they
                    # settle: wait for that (up to admission_wait_s) rather than refuse at once.
                    if exc.overdrawn or time.monotonic() >= wait_until:
                        raise
                    held = await asyncio.to_thread(self.store.held, exc.scope, exc.period)
                    if held.get(exc.dimension, 0.0) <= 0:
                        raise
                    await asyncio.sleep(0.02 + 0.03 * random.random())
        except LimitRefused as exc:
            self.metrics.refused("limit", scope_kind=exc.scope.partition(":")[0], dimension=exc.dimension)
            headers = {"x-should-retry": "false"}
            if exc.period == "day" and not exc.overdrawn:
                now = time.time()
                headers["Retry-After"] = str(int(86400 - now % 86400) + 1)
            raise ApiError(429, str(exc), type="budget_exceeded", code="limit_exceeded",
                           extra={"limit": exc.to_dict()}, headers=headers) from None
        except LedgerUnavailable as exc:
            raise _api_error_of(exc) from None
        if getattr(g, "degraded", False):
            self.metrics.degrade()
        return g

    async def settle(self, grant: Any, ledger: BudgetLedger | None) -> None:
        if not grant.id:
            return
        try:
            if ledger is None or ledger.usage.calls == 0 and ledger.usage.tokens == 0:
                await asyncio.to_thread(self.store.release, grant.id)
            else:
                await asyncio.to_thread(self.store.settle, grant.id, ledger.usage)
        except Exception:  # a store outage must not lose the response; the hold's ttl counts it spent
            log.exception("settling grant %s failed; its hold will be counted as spent when it expires",
                          grant.id)

    async def settle_run(self, grant: Any, rid: str, state: dict[str, Any]) -> None:
        """Settle ``grant`` with what the run of request ``rid`` spent (none if it never started)."""
        ctx = self.running.pop(rid, None)
        ledger = ctx.ledger if ctx is not None else None
        if ledger is not None:
            from testtime.api import usage_report

            # What a failed or cancelled run spent is counted too (a finished one's is set again).
            state["usage"] = usage_report(ledger, ctx.stats)
        await self.settle(grant, ledger)

    # ---------------------------------------------------------------- tracing
    def tracer(self) -> tuple[Any, str | None]:
        from testtime.trace.events import Tracer

        tracer = Tracer()
        path = str(self.trace_dir / f"{tracer.run_id}.jsonl") if self.trace_dir is not None else None
        return tracer, path


# -------------------------------------------------------------------- runs
async def run_search(gw: Gateway, plan: Plan, conv: Conversation, model: Model, budget: Budget,
                     rid: str, tracer: Any, trace_path: str | None) -> tuple[Any, Any]:
    """Run the plan's strategy on its own context; returns (ctx, Result). ``ctx`` is set before any call."""
    from testtime.api import arun, build_context
    from testtime.search.base import Problem

    wrapped = ConversationModel(model, question=conv.question, history=conv.history)
    # Model-backed judges are the gateway's, shared; the rest are built for this request.
    verifier = await gw.judges.resolve("verifier", plan.verifier)
    prm = await gw.judges.resolve("prm", plan.prm)
    ctx = build_context(model=wrapped, budget=budget, seed=plan.seed, verifier=verifier, prm=prm,
                        tracer=tracer, max_tokens=plan.max_tokens, temperature=plan.temperature)
    if conv.system is not None:
        ctx.system_prompt = conv.system
    gw.running[rid] = ctx
    result = await arun(Problem(question=conv.question, id=rid), strategy=plan.strategy,
                        strategy_options=dict(plan.options), seed=plan.seed, context=ctx, trace=trace_path)
    return ctx, result


def testtime_object(plan: Plan, result: Any, grant: Any, *, passthrough: bool = False,
                    usage: dict[str, Any] | None = None, trace_id: str | None = None) -> dict[str, Any]:
    u = usage if usage is not None else result.usage
    return {
        "strategy": "passthrough" if passthrough else result.strategy,
        "stopped_reason": "done" if passthrough else result.stopped_reason,
        "answer": None if passthrough else result.answer,
        "candidates": 0 if passthrough else len(result.candidates),
        "usage": u,
        "budget": grant.budget.to_dict(),
        "degraded": bool(getattr(grant, "degraded", False)),
        "limited_by": getattr(grant, "limited_by", None),
        "alias": plan.alias,
        "trace_id": trace_id if passthrough else result.run_id,
        "passthrough": passthrough,
        "settings_from": dict(plan.sources),
    }


def create_app(settings: ServeSettings | None = None) -> Starlette:
    """The ASGI app; without ``settings`` it reads them from ``TESTTIME_SERVE_SETTINGS`` (workers)."""
    if settings is None:
        settings = ServeSettings.from_env()
    gw = Gateway(settings)
    # Which worker process answered (with --workers N any of them may): for operators and tests.
    worker_header = {"X-Testtime-Worker": str(os.getpid())}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": settings.base_model(),
                             "store": settings.store.split("://")[0]}, headers=worker_header)

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await gw.render_metrics(), media_type="text/plain; version=0.0.4",
                                 headers=worker_header)

    async def models(request: Request) -> JSONResponse:
        gw.authenticate(request)
        data = []
        for name in model_names(settings):
            alias = settings.config.models.get(name)
            entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "testtime"}
            if alias is not None:
                entry["testtime"] = {k: v for k, v in alias.model_dump().items() if v not in (None, {})}
            data.append(entry)
        return JSONResponse({"object": "list", "data": data})

    async def chat(request: Request) -> Response:
        gw.metrics.started()
        t0 = time.monotonic()
        state: dict[str, Any] = {"status": 200, "model": "?", "strategy": "?", "usage": {}, "stream": False}
        try:
            return await _chat(gw, request, state)
        except ApiError as exc:
            state["status"] = exc.status
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except Exception as exc:  # counted (and answered) as what it is, not as a 200
            err = _api_error_of(exc)
            state["status"] = err.status
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        finally:
            if not state["stream"]:
                _count(gw, state, t0)

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ], lifespan=lifespan, exception_handlers={ApiError: api_error})
    app.state.gateway = gw
    return app


class _GuardedStream(StreamingResponse):
    """A StreamingResponse that runs ``on_exit`` however the response ends (shielded from cancellation)."""

    def __init__(self, content: Any, *, on_exit: Any, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_exit = on_exit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import anyio

        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_exit()


def _count(gw: Gateway, state: dict[str, Any], t0: float) -> None:
    u = state["usage"] or {}
    gw.metrics.finished(model=state["model"], strategy=state["strategy"], status=state["status"],
                        seconds=time.monotonic() - t0, input_tokens=int(u.get("input_tokens", 0)),
                        output_tokens=int(u.get("output_tokens", 0)), usd=float(u.get("usd", 0.0)))


async def _body(request: Request) -> dict[str, Any]:
    from starlette.requests import ClientDisconnect

    try:
        raw = await request.body()
    except ClientDisconnect:
        # Gone before its body arrived: nothing was started, nobody reads the answer.
        raise ApiError(499, "the client disconnected before sending its request") from None
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


async def _chat(gw: Gateway, request: Request, state: dict[str, Any]) -> Response:
    entry = gw.authenticate(request)
    body = await _body(request)
    # Only served names become metric labels: a client must not mint new time series.
    asked = body.get("model")
    state["model"] = asked if isinstance(asked, str) and asked in gw.served_names else "other"
    tools = bool(body.get("tools") or body.get("functions"))
    if tools:
        return await _passthrough(gw, request, body, entry, state)
    plan = resolve(body, request.headers, gw.settings)
    state["strategy"] = plan.strategy
    check_unsupported(body)
    conv = parse_messages(body.get("messages"))
    stops = stops_of(body)
    model = await gw.model_for(plan.model, plan.base_url)
    scopes = gw.scopes(entry)
    want, minimum = gw.want_and_minimum(plan, model, conv, scopes)
    grant = await gw.grant(scopes, want, minimum)
    rid = new_id()
    tracer, trace_path = gw.tracer()
    if body.get("stream"):
        state["stream"] = True
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        gen = _stream(gw, plan, conv, model, grant, rid, tracer, trace_path, stops, include_usage, state)

        async def abandoned() -> None:
            # The client left before the stream began: the generator never ran, so its
            # finally (which settles) never will. Release the hold here instead.
            if not state.get("started"):
                state["status"] = 499
                await gw.settle(grant, None)
                _count(gw, state, time.monotonic())

        return _GuardedStream(gen, on_exit=abandoned, media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache", "X-Testtime-Trace-Id": tracer.run_id,
                                       "X-Accel-Buffering": "no"})
    task = asyncio.create_task(run_search(gw, plan, conv, model, grant.budget, rid, tracer, trace_path))
    gone = asyncio.Event()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, task, gone))
    try:
        try:
            ctx, result = await task
        except asyncio.CancelledError:
            if not task.done():  # this handler was cancelled (shutdown): stop the search too
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if not gone.is_set():
                raise
            state["status"] = 499  # the client went away; nobody reads this response
            return Response(status_code=499)
        except BaseException as exc:
            raise _api_error_of(exc) from None
    finally:
        watcher.cancel()
        await gw.settle_run(grant, rid, state)
    text, matched = apply_stop(result.text, stops)
    finish = _finish_reason(result, text, matched)
    tt = testtime_object(plan, result, grant)
    out = completion_body(rid=rid, model=plan.model_name, text=text, finish_reason=finish,
                          usage=result.usage, testtime=tt)
    state["usage"] = result.usage
    return JSONResponse(out, headers=_spent_headers(result.usage, result.run_id))


def _finish_reason(result: Any, text: str, matched: bool) -> str:
    """``stop`` for an answer; ``length`` when the budget ran out before any text was written."""
    if matched or text:
        return "stop"
    return "length" if result.stopped_reason.startswith("budget") else "stop"


async def _cancel_on_disconnect(request: Request, task: asyncio.Task[Any], gone: asyncio.Event) -> None:
    """Cancel ``task`` when the client disconnects (its body has been read already)."""
    while not task.done():
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            gone.set()
            task.cancel()
            return


def _api_error_of(exc: BaseException) -> ApiError:
    import httpx

    from testtime.serve.ledgers.base import LedgerUnavailable

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, LedgerUnavailable):
        # The shared ledgers cannot be reached: nothing was held, a retry may find the store back.
        return ApiError(503, str(exc), type="server_error", code="ledger_unavailable",
                        headers={"Retry-After": "1"})
    if isinstance(exc, httpx.TransportError):  # the passthrough's upstream did not answer
        return ApiError(502, f"the upstream model failed: {type(exc).__name__}: {exc}", type="upstream_error")
    if isinstance(exc, (CapabilityError, UserError)):
        return bad_request(str(exc))
    if isinstance(exc, ModelAPIError):
        return ApiError(502, f"the upstream model failed: {exc}", type="upstream_error",
                        code=str(exc.status) if exc.status else None)
    log.exception("request failed", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")


async def _stream(gw: Gateway, plan: Plan, conv: Conversation, model: Model, grant: Any, rid: str,
                  tracer: Any, trace_path: str | None, stops: tuple[str, ...], include_usage: bool,
                  state: dict[str, Any]) -> AsyncIterator[str]:
    """SSE: a role chunk, keep-alive/progress comments while searching, content deltas, the end."""
    import anyio

    state["started"] = True
    created = int(time.time())
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()
    progress: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def sink(event: Any) -> None:
        if event.kind in ("model_call", "budget_refused", "error"):
            data = {"event": event.kind, "t": round(event.t, 3)}
            usage = event.data.get("usage")
            if isinstance(usage, dict):
                data["tokens"] = usage.get("tokens")
            loop.call_soon_threadsafe(progress.put_nowait, data)

    tracer.add_sink(sink)
    task: asyncio.Task[Any] | None = None
    try:
        yield chunk(rid=rid, model=plan.model_name, created=created, delta={"role": "assistant", "content": ""})
        task = asyncio.create_task(run_search(gw, plan, conv, model, grant.budget, rid, tracer, trace_path))
        keepalive = gw.settings.config.keepalive_s
        calls = 0
        while not task.done():
            getter = asyncio.ensure_future(progress.get())
            done, _ = await asyncio.wait({task, getter}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                item = getter.result()
                calls += item["event"] == "model_call"
                yield f": testtime {json.dumps({**item, 'calls': calls})}\n\n"
            else:
                getter.cancel()
                if not done:
                    yield ": keep-alive\n\n"
        try:
            _ctx, result = task.result()
        except BaseException as exc:
            err = _api_error_of(exc)
            state["status"] = err.status
            yield "data: " + json.dumps(err.body()) + "\n\n"
            return
        text, matched = apply_stop(result.text, stops)
        for piece in pieces(text):
            yield chunk(rid=rid, model=plan.model_name, created=created, delta={"content": piece})
        finish = _finish_reason(result, text, matched)
        tt = testtime_object(plan, result, grant)
        yield chunk(rid=rid, model=plan.model_name, created=created, finish_reason=finish, testtime=tt)
        if include_usage:
            yield chunk(rid=rid, model=plan.model_name, created=created, usage=usage_body(result.usage),
                        choices=False)
        yield "data: [DONE]\n\n"
    finally:
        # A disconnect cancels this generator: stop the search, then settle, shielded
        # from the cancellation so the shared ledgers always hear what was spent.
        with anyio.CancelScope(shield=True):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                state["status"] = 499
            await gw.settle_run(grant, rid, state)
            _count(gw, state, t0)


async def _passthrough(gw: Gateway, request: Request, body: dict[str, Any], entry: Any,
                       state: dict[str, Any]) -> Response:
    """A request with ``tools``: one unscaled upstream call under the request's budget."""
    from testtime.api import usage_report
    from testtime.serve.passthrough import forward

    # Only the model and the budget matter here: strategy settings do not apply.
    probe = {k: v for k, v in body.items() if k in ("model", "testtime")}
    tt_in = probe.get("testtime")
    if isinstance(tt_in, dict):
        probe["testtime"] = {k: v for k, v in tt_in.items() if k == "budget"}
    plan = resolve(probe, {k: v for k, v in request.headers.items() if k.lower() == "x-testtime-budget"},
                   gw.settings)
    plan.strategy = "passthrough"
    state["strategy"] = "passthrough"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise bad_request("messages must be a non-empty list", param="messages")
    model = await gw.model_for(plan.model, plan.base_url)
    scopes = gw.scopes(entry)
    want, _ = gw.want_and_minimum(plan, model, None, scopes)
    grant = await gw.grant(scopes, want, None)
    ledger = BudgetLedger(grant.budget)
    tracer, trace_path = gw.tracer()
    writer = None
    started = False
    # From the grant on, every way out settles (or releases) the hold: a trace that
    # cannot be opened or an upstream that does not answer included.
    try:
        if trace_path is not None:
            from testtime.trace.jsonl import JsonlWriter

            writer = JsonlWriter(trace_path)
            tracer.add_sink(writer)
        tracer.emit("run_start", question="(tools passthrough)", strategy="passthrough", model=model.spec,
                    budget=grant.budget.to_dict(), seed=body.get("seed"))
        started = True
        try:
            data, latency = await forward(gw.http, model, body, ledger)
        except Exception as exc:
            raise _api_error_of(exc) from None
        tracer.emit("model_call", model=model.spec, role="passthrough", n=int(body.get("n") or 1),
                    usage=ledger.usage.to_dict(), latency_s=round(latency, 6),
                    finish_reasons=[c.get("finish_reason") for c in data.get("choices") or []])
    finally:
        usage = usage_report(ledger)
        state["usage"] = usage
        try:
            if started:
                tracer.emit("run_end", answer=None, stopped_reason="done", usage=usage)
            if writer is not None:
                writer.close()
        finally:
            await gw.settle(grant, ledger)
    data["model"] = plan.model_name
    data["usage"] = usage_body(usage)
    data["testtime"] = testtime_object(plan, None, grant, passthrough=True, usage=usage,
                                       trace_id=tracer.run_id)
    headers = _spent_headers(usage, tracer.run_id)
    if not body.get("stream"):
        return JSONResponse(data, headers=headers)
    state["stream"] = False  # already counted below as a plain request
    return StreamingResponse(_replay(data, bool((body.get("stream_options") or {}).get("include_usage"))),
                             media_type="text/event-stream", headers=headers)


async def _replay(data: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """An upstream ChatCompletion as SSE chunks (each choice's message as one delta)."""
    rid, model, created = data.get("id", new_id()), data.get("model", ""), int(data.get("created") or time.time())
    choices = []
    for c in data.get("choices") or []:
        msg = dict(c.get("message") or {})
        delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
        choices.append({"index": c.get("index", 0), "delta": delta, "finish_reason": None, "logprobs": None})
    yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "choices": choices}) + "\n\n"
    end = [{"index": c.get("index", 0), "delta": {}, "finish_reason": c.get("finish_reason"), "logprobs": None}
           for c in data.get("choices") or []]
    yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                 "model": model, "choices": end, "testtime": data.get("testtime")}) + "\n\n"
    if include_usage:
        yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                     "model": model, "choices": [], "usage": data.get("usage")}) + "\n\n"
    yield "data: [DONE]\n\n"
