"""hybrid_llm_adapters: token-level hybrid inference with an on-device SLM and an OpenAI-compatible cloud.

The core never imports LangChain or LlamaIndex; the adapters in ``integrations/`` build on this API.
"""

from __future__ import annotations

from .accounting import UsageLedger
from .config import CloudConfig, GenerationConfig, PriceTable, RouterConfig
from .engine import EngineConfig, Generation, HybridEngine, get_engine
from .errors import CloudError, CloudUnavailableError, ConfigError, HybridLLMError
from .events import GenerationResult, TokenEvent

__all__ = [
    "CloudConfig",
    "CloudError",
    "CloudUnavailableError",
    "ConfigError",
    "EngineConfig",
    "Generation",
    "GenerationConfig",
    "GenerationResult",
    "HybridEngine",
    "HybridLLMError",
    "PriceTable",
    "RouterConfig",
    "TokenEvent",
    "UsageLedger",
    "get_engine",
]

__version__ = "0.1.0"
