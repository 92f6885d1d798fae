"""LangChain integration of hybrid-llm-adapters: token-level hybrid inference (on-device SLM + cloud LLM)."""

from __future__ import annotations

from langchain_hybrid_llm.callbacks import (
    HybridLedgerCallbackHandler,
    get_hybrid_callback,
    ledger_from_metadata,
)
from langchain_hybrid_llm.chat_models import HybridChatModel

__all__ = ["HybridChatModel", "HybridLedgerCallbackHandler", "get_hybrid_callback", "ledger_from_metadata"]
__version__ = "0.1.0"
