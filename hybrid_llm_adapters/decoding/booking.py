"""Ledger booking, in one place: what a cloud call and a produced token add to a request's ``UsageLedger``."""

from __future__ import annotations

from ..accounting import UsageLedger, call_cost
from ..cloud.replies import BlockScore, CallUsage, CloudReply
from ..config import PriceTable
from ..events import TokenSource


def cached_tokens(prices: PriceTable, usage: CallUsage, shared_prefix: int) -> int:
    """The prompt tokens billed as cached: as the server reported them, or as the price table's rules say the
    provider would cache them (``shared_prefix``: tokens this request sent before)."""
    if prices.cached_from == "rules":
        return prices.cached_by_rules(usage.prompt_tokens, shared_prefix)
    return usage.cached_tokens


def book_call(ledger: UsageLedger, reply: CloudReply | BlockScore, prices: PriceTable,
              shared_prefix: int = 0) -> None:
    """One answered cloud call: the tokens the server billed (cached ones per ``cached_tokens``) and its time."""
    usage = reply.usage
    cached = cached_tokens(prices, usage, shared_prefix)
    ledger.cloud_calls += 1
    ledger.billed_prompt_tokens += usage.prompt_tokens
    ledger.billed_completion_tokens += usage.completion_tokens
    ledger.cached_prompt_tokens += cached
    ledger.cache_basis = prices.cached_from
    ledger.cost_usd += call_cost(prices, usage.prompt_tokens, usage.completion_tokens, cached)
    ledger.cloud_seconds += reply.latency_s


def book_token(ledger: UsageLedger, source: TokenSource) -> None:
    """One token of the answer, by where it came from (verified drafts and fallbacks count as local)."""
    if source == "cloud":
        ledger.cloud_tokens += 1
    else:
        ledger.local_tokens += 1
        ledger.fallback_tokens += source == "fallback"
