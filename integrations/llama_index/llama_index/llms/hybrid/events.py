"""Instrumentation events emitted by ``HybridChatModel`` (besides LlamaIndex's own LLM start/end events)."""

from __future__ import annotations

from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation.events import BaseEvent

from hybrid_llm_adapters import UsageLedger


class HybridLLMUsageEvent(BaseEvent):
    """One finished hybrid request: its ledger (local/cloud tokens, cloud calls, billed tokens, cost and
    the cloud-only cost of the same request), finish reason and the names of the tools it called."""

    model_name: str
    ledger: UsageLedger
    finish_reason: str
    tool_calls: list[str] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "HybridLLMUsageEvent"
