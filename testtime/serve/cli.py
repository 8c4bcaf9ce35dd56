"""``testtime serve``: run the gateway; ``testtime serve hash-key``: hash an API key for serve.yaml."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from testtime.errors import UserError


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``testtime`` command."""
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible test-time-scaling gateway (extra `serve`)",
        description="Serve POST /v1/chat/completions: every request runs a test-time strategy under its own "
                    "budget, inside per-key and global limits. `testtime serve hash-key < keyfile` prints the "
                    "hash of the key on stdin to put in serve.yaml (asks for it, unechoed, on a terminal). "
                    "Prefer stdin to `hash-key KEY`: an argument stays in the shell history and shows in ps.")
    p.add_argument("action", nargs="?", type=_action, metavar="hash-key",
                   help="hash-key: read a key from stdin (recommended) and print its hash for serve.yaml")
    p.add_argument("key", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="base model spec (default: the config's, else local)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible upstream for openai:MODEL")
    p.add_argument("--config", default=None, metavar="serve.yaml", help="aliases, defaults, keys and limits")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (>1 needs --store sqlite:// or redis://)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="shared ledger store: memory:// (default), sqlite:///FILE.db, redis://HOST:PORT/DB")
    p.add_argument("--trace-dir", default=None, metavar="DIR",
                   help="write one JSONL trace per request here (read with `testtime trace show`)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_cmd_serve)


def _action(value: str) -> str:
    """The one action ``serve`` takes; anything else is refused *without echoing it*.

    A stray positional is most likely a key pasted in the wrong place, and
    argparse's own ``invalid choice: 'VALUE'`` would print it.
    """
    if value == "hash-key":
        return value
    raise argparse.ArgumentTypeError("unknown action (the only one is hash-key; the value is not shown in "
                                     "case it is a key). To hash a key: testtime serve hash-key < keyfile")


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.action == "hash-key":
        return _hash_key(args.key)
    if args.key is not None:  # unreachable: a second positional needs the first
        raise UserError("testtime serve: unexpected argument (not shown: it may be a key)")
    settings = build_settings(args)
    run_server(settings, log_level=args.log_level)
    return 0


def _hash_key(key: str | None) -> int:
    from testtime.serve.keys import hash_key

    if key is not None:
        print("testtime serve hash-key: a key given as an argument stays in your shell history and shows "
              "in ps; next time pipe it in: testtime serve hash-key < keyfile", file=sys.stderr)
    else:
        if sys.stdin.isatty():
            import getpass

            key = getpass.getpass("API key: ")
        else:
            key = sys.stdin.readline()
    key = key.strip()
    if not key:
        raise UserError("testtime serve hash-key: no key on stdin; pipe one in: testtime serve hash-key < keyfile")
    print(hash_key(key))
    return 0


def build_settings(args: argparse.Namespace) -> Any:
    """Command line + config file -> checked :class:`~testtime.serve.config.ServeSettings`."""
    from testtime.serve.config import ServeConfig, ServeSettings, load_config

    config = load_config(args.config) if args.config else ServeConfig()
    store = args.store or config.store or "memory://"
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and store.startswith("memory"):
        raise UserError(f"--workers {args.workers} needs a store the worker processes share: "
                        "--store sqlite:///serve.db (one machine) or --store redis://127.0.0.1:6379/0; "
                        "memory:// keeps each worker's spend apart, so the limits would not hold")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    from testtime.serve.ledgers import open_store

    open_store(store).close()  # a bad URL or an unwritable file fails now, not in every worker
    if args.trace_dir:
        try:
            os.makedirs(args.trace_dir, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--trace-dir {args.trace_dir}: {exc.strerror}") from None
    return ServeSettings(model=args.model, base_url=args.base_url, config_path=args.config, config=config,
                         store=store, trace_dir=args.trace_dir, host=args.host, port=args.port,
                         workers=args.workers)


def run_server(settings: Any, *, log_level: str = "info") -> None:
    """Serve until interrupted (workers: an import string and the settings in the environment)."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as exc:
        raise UserError(f"testtime serve needs {exc.name}: pip install \"testtime[serve]\"") from None
    from testtime.serve.config import SETTINGS_ENV
    from testtime.serve.server import NoDelayH11Protocol

    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"testtime serve: listening on {settings.host}: reachable from other machines"
              + ("" if settings.config.keys else " and no API keys are configured"), file=sys.stderr)
    if settings.workers > 1:
        os.environ[SETTINGS_ENV] = settings.to_env()
        uvicorn.run("testtime.serve.app:create_app", factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, log_level=log_level, timeout_graceful_shutdown=5,
                    http=NoDelayH11Protocol)
        return
    from testtime.serve.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level,
                timeout_graceful_shutdown=5, http=NoDelayH11Protocol)
