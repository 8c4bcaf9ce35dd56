"""Opening a ledger store from a URL."""

from __future__ import annotations

import time

from testtime.errors import UserError
from testtime.serve.ledgers.base import Clock, LedgerStore
from testtime.serve.ledgers.memory import MemoryStore
from testtime.serve.ledgers.redis import RedisStore
from testtime.serve.ledgers.sqlite import SqliteStore
from testtime.trace.events import redact_url

_URL_FORMS = ("memory://", "sqlite:///relative/file.db or sqlite:////absolute/file.db",
              "redis://host:port/db (rediss:// for TLS)")


def _shown(url: object) -> str:
    """``url`` as a message may show it: quoted, credentials redacted (also without a scheme)."""
    if not isinstance(url, str):
        return repr(url)
    if "://" not in url and "@" in url:
        return repr("[redacted]@" + url.rpartition("@")[2])
    return repr(redact_url(url))


def open_store(url: str, *, clock: Clock = time.time) -> LedgerStore:
    """Open a ledger store from a URL: ``memory://``, ``sqlite:///path.db``, ``redis://host:port/db``.

    SQLite paths follow SQLAlchemy: ``sqlite:///serve.db`` is relative to the
    working directory, ``sqlite:////var/lib/testtime/serve.db`` absolute.

    Raises:
        UserError: the URL is none of the accepted forms (the message lists them).
        MissingDependency: a ``redis://`` URL without the ``redis`` package.
    """
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"bad ledger store URL {_shown(url)}: use one of {', '.join(_URL_FORMS)}")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "memory":
        if rest not in ("", "/"):
            raise UserError(f"bad ledger store URL {_shown(url)}: a memory store takes no path; use memory://")
        return MemoryStore(clock=clock)
    if scheme == "sqlite":
        path = rest.split("?", 1)[0]
        # SQLAlchemy's spelling: sqlite:///rel.db is relative, sqlite:////abs.db absolute.
        if path.startswith("/"):
            path = path[1:]
        if not path or path in ("/", ":memory:", "/:memory:"):
            raise UserError(f"bad ledger store URL {_shown(url)}: give a file, e.g. sqlite:///serve.db (relative) "
                            "or sqlite:////var/lib/testtime/serve.db (absolute) "
                            "(workers share it; an in-memory SQLite database would not be shared)")
        return SqliteStore(path, clock=clock)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, clock=clock)
    raise UserError(f"bad ledger store URL {_shown(url)}: unknown scheme {scheme!r}; use one of {', '.join(_URL_FORMS)}")
