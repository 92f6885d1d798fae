"""Ledger booking, in one place: what a cloud call and a produced token add to a request's ``UsageLedger``."""

from __future__ import annotations

from ..accounting import UsageLedger, call_cost
from ..cloud.client import BlockScore, CloudReply
from ..config import PriceTable
from ..events import TokenSource


def book_call(ledger: UsageLedger, reply: CloudReply | BlockScore, prices: PriceTable) -> None:
    """One answered cloud call: the tokens the server billed (cached ones as it reported them) and its time."""
    usage = reply.usage
    ledger.cloud_calls += 1
    ledger.billed_prompt_tokens += usage.prompt_tokens
    ledger.billed_completion_tokens += usage.completion_tokens
    ledger.cached_prompt_tokens += usage.cached_tokens
    ledger.cost_usd += call_cost(prices, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    ledger.cloud_seconds += reply.latency_s


def book_token(ledger: UsageLedger, source: TokenSource) -> None:
    """One token of the answer, by where it came from (verified drafts and fallbacks count as local)."""
    if source == "cloud":
        ledger.cloud_tokens += 1
    else:
        ledger.local_tokens += 1
        ledger.fallback_tokens += source == "fallback"
