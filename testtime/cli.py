"""The ``testtime`` command.

Subcommands: ``run`` and ``models`` live here; other packages add theirs
(``bench``, ``trace``, ``allocate``, ``compose``) through a ``register``
function in their own ``cli`` module, so each capability owns its CLI code.

Exit codes: 0 success, 1 runtime failure (a model API error after retries),
2 bad input (one clear line, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import Any

from testtime.errors import ModelAPIError, TesttimeError, UserError

#: Modules with a ``register(subparsers)`` that add subcommands when present.
EXTENSIONS = (
    "testtime.search.tune_cli",
    "testtime.benchmark.cli",
    "testtime.trace.cli",
    "testtime.agents.cli",
    "testtime.serve.cli",
)


#: A command-line value shaped like an API key: 16+ letters, digits, '-' or '_', with at least
#: one letter and one digit. argparse echoes bad values ("invalid choice: 'X'", "unrecognized
#: arguments: X"); a key typed into the wrong place must not end up on screen or in a CI log.
_KEY_SHAPED = re.compile(r"(?<![\w./:-])(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{16,}(?![\w./:-])")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default is exit 2 + usage; keep it short
        raise UserError(f"{self.prog}: {_KEY_SHAPED.sub('[redacted]', message)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="testtime", description="Agentic test-time scaling under one global budget.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_run(sub)
    models = sub.add_parser("models", help="list model backends and whether each is usable here")
    models.add_argument("--base-url", help="OpenAI-compatible server to probe")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.add_argument("--prices", action="store_true", help="print the whole effective price table")
    models.add_argument("--model", action="append", default=[], metavar="SPEC",
                        help="also show the price this model will use, repeatable")
    models.add_argument("--price", action="append", default=[], metavar="MODEL=IN,OUT[,CACHED]",
                        help="as on `run`: apply this price first (to preview it)")
    models.set_defaults(func=_cmd_models)
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # The module (or its package) is not there yet: skip it, but never hide
            # a missing dependency inside a module that exists.
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="answer a question (or run a task file) under a budget")
    p.add_argument("question", nargs="?", help="the question to answer")
    p.add_argument("--model", default=None, help="model spec: local (default), llamacpp:PATH.gguf, "
                   "openai:MODEL, anthropic:MODEL, vllm:MODEL, sim[:NAME]")
    p.add_argument("--base-url", help="base URL of an OpenAI-compatible server (or OPENAI_BASE_URL)")
    p.add_argument("--strategy", default="self_consistency", help="search strategy (default self_consistency)")
    p.add_argument("--budget", default=None, help="limits, e.g. tokens=20k,usd=0.5,seconds=60 "
                   "(default tokens=4000)")
    p.add_argument("--n", type=int, default=None, help="samples for sampling strategies (default: from budget)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")
    p.add_argument("--verifier", default=None, help="outcome verifier spec (math, code, genrm:MODEL, ...)")
    p.add_argument("--prm", default=None, help="process reward model spec (prm:confidence, prm:llm:MODEL, ...)")
    p.add_argument("--isolation", default=None, choices=("auto", "namespaces", "rlimits"),
                   help="how the code verifier isolates programs (namespaces: mandatory, error if unavailable)")
    p.add_argument("--trace", default=None, metavar="FILE.jsonl", help="write trace events to this file")
    p.add_argument("--otel", action="store_true", help="export OpenTelemetry spans over OTLP/HTTP to "
                   "OTEL_EXPORTER_OTLP_ENDPOINT (else http://localhost:4318); on by itself when that is set")
    p.add_argument("--otel-endpoint", default=None, metavar="URL", help="OTLP/HTTP collector URL (implies --otel)")
    p.add_argument("--max-tokens", type=int, default=None, help="max tokens of one solution")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads of local/llamacpp models "
                   "(default: this machine's cores; same as the spec option local?threads=N)")
    p.add_argument("--step-delimiter", default=None, help="reasoning step delimiter (default blank line)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy option, repeatable (e.g. -o beam_width=4)")
    p.add_argument("--task", default=None, metavar="FILE.yaml", help="run a multi-stage task file")
    p.add_argument("--input", action="append", default=[], metavar="KEY=VALUE",
                   help="task input, repeatable")
    p.add_argument("--resume", default=None, metavar="RUN_ID", help="resume a checkpointed task run")
    p.add_argument("--price", action="append", default=[], metavar="MODEL=IN,OUT[,CACHED]",
                   help="price of a model in USD per 1M tokens, repeatable; MODEL is backend:model "
                   "(globs with *), e.g. --price openai:my-model=0.5,1.5")
    t = p.add_argument_group("thinking models (docs/thinking.md)")
    t.add_argument("--thinking-budget", type=int, default=None, metavar="TOKENS",
                   help="thinking tokens per generation; at the budget thinking is closed and the answer forced")
    t.add_argument("--answer-budget", type=int, default=None, metavar="TOKENS",
                   help="tokens of the answer after thinking (default --max-tokens)")
    t.add_argument("--min-thinking", type=int, default=None, metavar="TOKENS",
                   help="budget forcing: an earlier end of thinking is replaced by 'Wait' (see --max-forcing)")
    t.add_argument("--max-forcing", type=int, default=None, metavar="K", help="at most K 'Wait' continuations")
    t.add_argument("--notice-every", type=int, default=None, metavar="TOKENS",
                   help="write a remaining-thinking-budget notice every TOKENS tokens")
    t.add_argument("--thinking", action="append", default=[], metavar="KEY=VALUE",
                   help="other thinking policy options, repeatable: answer_cue, wait_cue, open_tag, "
                   "close_tag, mode (auto|tags|native), reasoning_effort")
    p.set_defaults(func=_cmd_run)


def parse_options(pairs: Sequence[str], what: str = "--option") -> dict[str, Any]:
    """``["k=v", ...]`` -> dict, values parsed as JSON when they look like it."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"bad {what} {pair!r}: expected KEY=VALUE")
        key, _, raw = pair.partition("=")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, an int too long, nested too deep: the text
            out[key.strip().replace("-", "_")] = raw
    return out


def thinking_policy_of(args: argparse.Namespace) -> Any:
    """The ThinkingPolicy the ``--thinking-*`` flags of ``run`` ask for (None: none)."""
    from testtime.thinking import ThinkingPolicy

    return ThinkingPolicy.from_options(thinking_options_of(args))


def thinking_options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The policy options the ``--thinking-*`` flags of ``run`` set (only those given)."""
    opts = parse_options(getattr(args, "thinking", []) or [], "--thinking")
    for flag in ("thinking_budget", "answer_budget", "min_thinking", "max_forcing", "notice_every"):
        value = getattr(args, flag, None)
        if value is not None:
            opts[flag] = value
    for key in ("answer_cue", "wait_cue", "open_tag", "close_tag"):
        if isinstance(opts.get(key), str):  # let "\n\n" on a command line mean two newlines
            opts[key] = opts[key].encode().decode("unicode_escape")
    return opts


def _check_run_args(args: argparse.Namespace) -> None:
    """Reject values no run can use, before any work (one line each)."""
    if args.budget is not None and not args.budget.strip(" ,\t\n"):
        raise UserError("--budget is empty: give limits like tokens=20k,usd=0.5,seconds=60, "
                        "or omit --budget for the default")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.question is not None:
        args.question = _valid_text(args.question)


def _valid_text(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes of a non-UTF-8 argv) as U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _cmd_run(args: argparse.Namespace) -> int:
    _check_run_args(args)
    from testtime.trace.otel import exporting

    # --otel, --otel-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT: spans per run (extra otel).
    with exporting(args.otel_endpoint or ("" if args.otel else None)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "isolation", None):
        from testtime.verifiers.isolation import set_default_isolation

        set_default_isolation(args.isolation)  # UserError now when 'namespaces' cannot be had
    if args.price:
        from testtime.models.prices import apply_price_args

        apply_price_args(args.price)
    if args.task:
        from testtime.orchestrator.cli_support import run_task_command

        return run_task_command(args)
    if args.resume:
        raise UserError("--resume needs --task FILE.yaml (the task that was checkpointed)")
    if not args.question:
        raise UserError("testtime run: give a QUESTION (or --task FILE.yaml)")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    from testtime.api import arun, build_context
    from testtime.search.registry import make_strategy
    from testtime.trace.events import Tracer
    from testtime.trace.jsonl import JsonlWriter

    options = parse_options(args.option)
    if args.n is not None:
        options["n"] = args.n
    # Build the strategy first so a bad name or option fails before any work.
    strategy = make_strategy(args.strategy, **options)
    policy = thinking_policy_of(args)

    tracer = Tracer()
    if args.trace:
        tracer.add_sink(JsonlWriter(args.trace))
    ctx = build_context(model=args.model or "local", base_url=args.base_url, budget=args.budget,
                        seed=args.seed, verifier=args.verifier, prm=args.prm, tracer=tracer,
                        max_tokens=args.max_tokens, temperature=args.temperature,
                        step_delimiter=args.step_delimiter,
                        model_options=None if args.threads is None else {"n_threads": args.threads})
    if policy is not None:
        from testtime.thinking import with_thinking

        ctx.model = with_thinking(ctx.model, policy)
    kwargs = dict(strategy=strategy, seed=args.seed, context=ctx)

    async def answer() -> Any:
        # Close HTTP pools on the loop that opened them, not at garbage collection.
        try:
            return await arun(args.question, **kwargs)
        finally:
            await ctx.model.aclose()

    if args.json:
        result = asyncio.run(answer())
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    from testtime.trace.live import LiveView

    with LiveView(ctx.ledger, title=args.question, strategy=strategy.name, model=ctx.model.spec,
                  context=ctx) as view:
        tracer.add_sink(view)
        result = asyncio.run(answer())
    view.print_summary(result)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from testtime.models.availability import check_all, price_rows, render_prices, render_table

    if args.price:
        from testtime.models.prices import apply_price_args

        apply_price_args(args.price)
    if args.prices:
        rows = price_rows(args.model)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            render_prices(rows)
        return 0
    rows = check_all(base_url=args.base_url, models=args.model)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        render_table(rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            from testtime import __version__

            print(f"testtime {__version__}")
            return 0
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UserError as exc:
        _say("error", exc)
        return 2
    except ModelAPIError as exc:
        _say("model error", exc)
        return 1
    except TesttimeError as exc:
        _say("error", exc)
        return 1
    except KeyboardInterrupt:
        print("testtime: interrupted", file=sys.stderr)
        return 130


def _say(what: str, exc: BaseException) -> None:
    """Print ``testtime: WHAT: message`` with URL credentials and keys removed."""
    from testtime.trace.events import redact

    print(f"testtime: {what}: {redact(str(exc))}", file=sys.stderr)


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
