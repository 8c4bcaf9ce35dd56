"""Trace events as an async iterator (``async for event in wf.astream(...)``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from testtime.trace.events import TraceEvent

_DONE = object()


class EventStream:
    """Runs ``start(sink)`` as a task and yields every event the sink receives.

    ``start`` gets a sink callable and returns the awaitable doing the work
    (e.g. ``lambda sink: wf.arun(inputs, on_event=sink)``). After iteration
    ends, :attr:`result` holds what the awaitable returned; an exception it
    raised is re-raised from the iterator. Breaking out of the loop cancels
    the run.
    """

    def __init__(self, start: Callable[[Callable[[TraceEvent], None]], Awaitable[Any]]) -> None:
        self._start = start
        self.result: Any = None

    async def __aiter__(self) -> AsyncIterator[TraceEvent]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.ensure_future(self._start(queue.put_nowait))
        task.add_done_callback(lambda _t: queue.put_nowait(_DONE))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                yield item
            self.result = task.result()
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001 - cancelled on purpose; nothing to report
                    pass
