"""uvicorn plumbing for ``testtime serve``.

With ``--workers N`` uvicorn binds the listening socket itself with
``proto=0``, and asyncio only turns Nagle's algorithm off on sockets whose
proto is TCP, so every response (headers and body written apart) waited for
the client's delayed ACK: ~40 ms per request. This protocol turns it off on
each accepted connection, whatever the socket says.
"""

from __future__ import annotations

import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with ``TCP_NODELAY`` set on every connection."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not a TCP socket after all: nothing to turn off
                pass
        super().connection_made(transport)
