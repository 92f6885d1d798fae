"""An instrumentation event handler that sums the hybrid ledger over a whole query (or agent run).

The counterpart of the LangChain callback: attach it to the root dispatcher (or use ``track_hybrid_usage``)
and every ``HybridChatModel`` request inside reports its ledger here, however deep in a query engine,
retriever-synthesizer or agent workflow it was made.

    with track_hybrid_usage() as usage:
        query_engine.query("...")
    print(usage.report())
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import llama_index.core.instrumentation as instrument
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent

from hybrid_llm_adapters import UsageLedger

from .events import HybridLLMUsageEvent


class HybridUsageEventHandler(BaseEventHandler):
    """Aggregates ``HybridLLMUsageEvent`` ledgers (thread-safe; async requests report from the loop)."""

    ledger: UsageLedger = Field(default_factory=UsageLedger, description="sum over every request seen")
    events: list[HybridLLMUsageEvent] = Field(default_factory=list, description="one per request, in order")
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        return "HybridUsageEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, HybridLLMUsageEvent):
            with self._lock:
                self.ledger = self.ledger + event.ledger
                self.events.append(event)

    def reset(self) -> None:
        with self._lock:
            self.ledger = UsageLedger()
            self.events = []

    def report(self) -> str:
        """A short per-query cost report (savings are negative when the hybrid cost more than cloud-only)."""
        return self.ledger.summary()


@contextmanager
def track_hybrid_usage(dispatcher: Any = None) -> Iterator[HybridUsageEventHandler]:
    """Attach a fresh handler to ``dispatcher`` (default: the root) for the ``with`` block, then detach it."""
    dispatcher = dispatcher or instrument.get_dispatcher()
    handler = HybridUsageEventHandler()
    dispatcher.add_event_handler(handler)
    try:
        yield handler
    finally:
        dispatcher.event_handlers = [h for h in dispatcher.event_handlers if h is not handler]
