"""Async wrappers: the sync decode loop runs in a worker thread, events cross to the event loop through a
queue, so model compute and cloud calls never block the loop. One body of logic, wrapped twice."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from .events import GenerationResult, TokenEvent

_DONE = object()


class AsyncGeneration:
    """Async iterator of ``TokenEvent``; ``result`` is set once it is exhausted."""

    def __init__(self, generation: Any):
        self._generation = generation
        self.result: GenerationResult | None = None

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._run()

    async def _run(self) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                for event in self._generation:
                    if cancelled.is_set():
                        self._generation.close()  # frees the request's row in the SLM batch
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except BaseException as e:  # noqa: BLE001 - re-raised in the event loop
                loop.call_soon_threadsafe(queue.put_nowait, e)

        thread = threading.Thread(target=work, name="hybrid-llm-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
        self.result = self._generation.result
