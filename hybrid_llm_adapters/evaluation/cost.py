"""Cost and time of a run in two deployments, from what the run counted.

- A pay-per-token API (``PriceTable``: input, cached input, output per million tokens). The hybrid's calls
  each re-send the prefix, billed as input unless the provider caches it.
- A self-hosted server with prefix caching (``SelfHostedPrices``): a call pays prefill only for the tokens
  appended since the request's previous call, plus its decode. With an ideal prefix cache a request's
  uncached prompt tokens are at most its final length (prompt + generated), so that bound is used.

``RemoteCloud`` projects wall time for a cloud that does not share this machine's cores: measured local
time, plus per call a round trip, the prefill of new tokens and the decode of returned tokens.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..accounting import UsageLedger
from ..config import PriceTable


class SelfHostedPrices(BaseModel):
    """Marginal USD per million tokens on one's own server (illustrative: decode dominates; prefill is
    cheap and a prefix-cache hit nearly free)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill_per_mtok: float = Field(0.02, ge=0)
    cached_prefill_per_mtok: float = Field(0.002, ge=0)
    decode_per_mtok: float = Field(0.20, ge=0)
    per_call: float = Field(0.0, ge=0)


class RemoteCloud(BaseModel):
    """A cloud reached over a network: round-trip time and the server's own speed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rtt_s: float = Field(0.08, ge=0, description="network round trip plus request overhead, per call")
    decode_tokens_per_s: float = Field(60.0, gt=0)
    prefill_tokens_per_s: float = Field(4000.0, gt=0)


class Deployments(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api: PriceTable = Field(default_factory=PriceTable)
    self_hosted: SelfHostedPrices = Field(default_factory=SelfHostedPrices)
    remote: RemoteCloud = Field(default_factory=RemoteCloud)


def uncached_prompt_tokens(ledger: UsageLedger) -> int:
    """Prompt tokens an ideal prefix cache would still compute for one request's calls."""
    return min(ledger.billed_prompt_tokens, ledger.prompt_tokens + ledger.generated_tokens)


def api_cost(ledger: UsageLedger, prices: PriceTable) -> float:
    """What the API bills for one request's calls (cached input at the cached price, as the server reported)."""
    uncached = ledger.billed_prompt_tokens - ledger.cached_prompt_tokens
    return (uncached * prices.input_per_mtok + ledger.cached_prompt_tokens * prices.cached_input_per_mtok
            + ledger.billed_completion_tokens * prices.output_per_mtok) / 1e6 + prices.per_call * ledger.cloud_calls


def self_hosted_cost(ledger: UsageLedger, prices: SelfHostedPrices, server_cache: bool = False) -> float:
    """``server_cache``: prefill only what the server reported it did not serve from its prefix cache (a cache
    shared across requests, e.g. an agent's turns and tasks that re-send one system prompt and tool schemas);
    otherwise each request computes its own prefix once (the ideal in-request bound)."""
    uncached = (ledger.billed_prompt_tokens - ledger.cached_prompt_tokens if server_cache
                and ledger.cache_basis == "server" else uncached_prompt_tokens(ledger))
    cached = ledger.billed_prompt_tokens - uncached
    return (uncached * prices.prefill_per_mtok + cached * prices.cached_prefill_per_mtok
            + ledger.billed_completion_tokens * prices.decode_per_mtok) / 1e6 + prices.per_call * ledger.cloud_calls


def remote_seconds(ledger: UsageLedger, remote: RemoteCloud) -> float:
    """Projected wall time of one request against a remote cloud: the measured local time plus, per call,
    the round trip, prefill of the appended tokens and decode of the returned ones."""
    cloud = (ledger.cloud_calls * remote.rtt_s
             + uncached_prompt_tokens(ledger) * (ledger.cloud_calls > 0) / remote.prefill_tokens_per_s
             + ledger.billed_completion_tokens / remote.decode_tokens_per_s)
    return ledger.local_seconds + cloud
