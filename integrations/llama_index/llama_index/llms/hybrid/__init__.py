"""LlamaIndex integration of hybrid_llm_adapters: ``from llama_index.llms.hybrid import HybridChatModel``."""

from llama_index.llms.hybrid.base import HybridChatModel
from llama_index.llms.hybrid.events import HybridLLMUsageEvent
from llama_index.llms.hybrid.instrumentation import HybridUsageEventHandler, track_hybrid_usage
from llama_index.llms.hybrid.utils import LEDGER_KEY

__all__ = [
    "LEDGER_KEY",
    "HybridChatModel",
    "HybridLLMUsageEvent",
    "HybridUsageEventHandler",
    "track_hybrid_usage",
]
