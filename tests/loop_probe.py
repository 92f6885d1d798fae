"""A probe for 'the event loop is never blocked': count ticker turns while async work runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def loop_ticks_during(work: Callable[[], Awaitable[object]], period: float) -> tuple[int, float]:
    """Run ``work`` beside a ticker that wakes every ``period`` seconds; return (ticks, elapsed seconds).
    A blocked loop starves the ticker, so few ticks over a long elapsed time means blocking."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(period)

    task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    try:
        await work()
    finally:
        elapsed = time.perf_counter() - t0
        stop.set()
        await task
    return ticks, elapsed
