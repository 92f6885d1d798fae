"""Error hierarchy: every message names the bad value and the fix."""

from __future__ import annotations

from typing import Any


class HybridLLMError(Exception):
    """Base class for every error raised by hybrid_llm_adapters."""


class ConfigError(HybridLLMError, ValueError):
    """A configuration value is invalid or contradicts another one."""


class ModelIntegrityError(HybridLLMError):
    """A downloaded model file does not match its pinned sha256."""


class ModelNotFoundError(HybridLLMError, FileNotFoundError):
    """A model source is neither installed, a local folder, nor a reachable hub id."""


class ModelMismatchError(HybridLLMError):
    """A reward head or separate model was built for a different SLM / cloud pair or tokenizer."""


class CloudError(HybridLLMError):
    """The cloud endpoint failed after retries.

    ``partial_text`` and ``partial_token_ids`` carry what was generated before the fault, so a cloud
    failure never loses text; ``ledger`` (a ``UsageLedger``, when raised from a request) what it had used.
    """

    def __init__(self, message: str, *, partial_text: str = "", partial_token_ids: list[int] | None = None):
        super().__init__(message)
        self.partial_text = partial_text
        self.partial_token_ids = list(partial_token_ids or [])
        self.ledger: Any = None


class CloudUnavailableError(CloudError):
    """The cloud was not asked: its circuit breaker is open after repeated failures (``retry_in_s``: seconds
    until one probe request may try it again)."""

    def __init__(self, message: str, *, retry_in_s: float = 0.0, partial_text: str = "",
                 partial_token_ids: list[int] | None = None):
        super().__init__(message, partial_text=partial_text, partial_token_ids=partial_token_ids)
        self.retry_in_s = retry_in_s


class CloudServerError(HybridLLMError):
    """The local vLLM cloud server could not be installed, started or stopped."""
