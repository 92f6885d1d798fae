"""Cost tracking across calls: a callback handler that adds up the hybrid ledger of every chat model call,
and ``get_hybrid_callback()``, a context manager in the spirit of ``get_openai_callback``.

Every ``HybridChatModel`` answer carries its request's ledger in ``response_metadata["hybrid_ledger"]``
(the core's ``UsageLedger``); the handler sums those ledgers with the core's own ``+``, so the total is
exactly the sum of the per-call ledgers, including calls made inside chains and agents (the context
manager's handler is inherited by every nested run). LangChain's ``UsageMetadataCallbackHandler`` also
works: it reads ``usage_metadata``, which every answer sets.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers.context import register_configure_hook

from hybrid_llm_adapters import UsageLedger


def ledger_from_metadata(metadata: dict[str, Any]) -> UsageLedger | None:
    """The ``UsageLedger`` in a message's ``response_metadata`` (None if it has none)."""
    data = metadata.get("hybrid_ledger")
    if not isinstance(data, dict):
        return None
    return UsageLedger.model_validate(data)


class HybridLedgerCallbackHandler(BaseCallbackHandler):
    """Adds up the hybrid ledgers of every chat model call it sees.

    ``total`` is the summed ``UsageLedger``; ``ledgers`` the per-call ledgers in completion order;
    ``by_model`` the sums per SLM name. Thread-safe (batch calls finish on several threads).
    """

    raise_error: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.total = UsageLedger()
        self.ledgers: list[UsageLedger] = []
        self.by_model: dict[str, UsageLedger] = {}

    def __repr__(self) -> str:
        return self.total.summary()

    # convenience views of the total, named like OpenAICallbackHandler's
    @property
    def total_cost(self) -> float:
        return self.total.cost_usd

    @property
    def successful_requests(self) -> int:
        return self.total.requests

    @property
    def prompt_tokens(self) -> int:
        return self.total.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.total.generated_tokens

    @property
    def total_tokens(self) -> int:
        return self.total.prompt_tokens + self.total.generated_tokens

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        found: list[tuple[str, UsageLedger]] = []
        for generations in response.generations:
            for generation in generations:
                if not isinstance(generation, ChatGeneration):
                    continue
                meta = generation.message.response_metadata
                ledger = ledger_from_metadata(meta)
                if ledger is not None:
                    found.append((str(meta.get("model_name", "")), ledger))
        if not found:
            return
        with self._lock:
            for model_name, ledger in found:
                self.ledgers.append(ledger)
                self.total = self.total + ledger
                self.by_model[model_name] = self.by_model.get(model_name, UsageLedger()) + ledger

    def __copy__(self) -> HybridLedgerCallbackHandler:
        return self  # one shared tally, even when LangChain copies handler lists

    def __deepcopy__(self, memo: Any) -> HybridLedgerCallbackHandler:
        return self


_hybrid_callback_var: ContextVar[HybridLedgerCallbackHandler | None] = ContextVar(
    "hybrid_llm_callback", default=None
)
register_configure_hook(_hybrid_callback_var, inheritable=True)


@contextmanager
def get_hybrid_callback() -> Generator[HybridLedgerCallbackHandler, None, None]:
    """Sum the hybrid ledger of every ``HybridChatModel`` call made inside the ``with`` block::

        with get_hybrid_callback() as cb:
            chain.invoke(...)
            agent.invoke(...)
        print(cb)                 # tokens, cloud calls, cost vs cloud-only
        cb.total.cost_usd
    """
    cb = HybridLedgerCallbackHandler()
    token = _hybrid_callback_var.set(cb)
    try:
        yield cb
    finally:
        _hybrid_callback_var.reset(token)
