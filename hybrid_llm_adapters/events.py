"""What the engine yields: one event per generated token, and the request's final result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .accounting import UsageLedger

TokenSource = Literal["local", "verified", "cloud", "fallback"]
"""local: the SLM's token, unchecked; verified: the SLM's draft, accepted by the cloud; cloud: supplied by the
cloud (a replacement, a correction or a bonus token); fallback: the SLM's token because the cloud failed."""
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TokenEvent:
    """One generated token.

    ``text`` is the newly decodable text (may be empty while a multi-byte character is incomplete).
    ``score`` is the router's score of the SLM candidate (reward, entropy or max-prob), None if unscored.
    ``candidate_id`` is the SLM's proposal; it differs from ``token_id`` when the cloud replaced it.
    """

    text: str
    token_id: int
    source: TokenSource
    score: float | None
    latency_s: float
    candidate_id: int | None = None
    final_flush: bool = False  # the text held back for a possible stop sequence, released as the answer ends


@dataclass
class GenerationResult:
    """Everything one request produced."""

    text: str
    token_ids: list[int]
    events: list[TokenEvent]
    ledger: UsageLedger
    finish_reason: FinishReason
    prompt_token_ids: list[int] = field(default_factory=list)
