"""What the cloud answers, as records: tokens, usage, block scores, endpoint capabilities, and a streamed
completion (``CloudStream``); and the parsing of the OpenAI completion shapes into them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from ..errors import CloudError


class MalformedResponseError(Exception):
    """The endpoint answered 200 with a body that is not a completion (bad JSON, no choices, no logprobs
    where they are needed): a broken proxy or server, retried like a 5xx."""


TOKEN_ID_PREFIX = "token_id:"


@dataclass(frozen=True)
class CallUsage:
    """What one call billed, as the server reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class CloudToken:
    """One token the cloud produced, with its top-k alternatives (keyed by token id when known)."""

    text: str
    token_id: int | None
    finish_reason: str | None
    top_logprobs: dict[int, float] = field(default_factory=dict)
    logprob: float | None = None


@dataclass
class CloudReply:
    """One call's answer: the tokens, what it billed, and how long it took."""

    tokens: list[CloudToken]
    usage: CallUsage = field(default_factory=CallUsage)
    latency_s: float = 0.0
    finish_reason: str | None = None
    text: str = ""

    @property
    def first(self) -> CloudToken:
        return self.tokens[0] if self.tokens else CloudToken("", None, self.finish_reason)


@dataclass
class BlockScore:
    """The cloud's view of k drafted tokens: its top-k logprobs at each drafted position, plus the token it
    generates after the whole block (the 'bonus')."""

    positions: list[dict[int, float]]
    bonus: CloudToken
    usage: CallUsage
    latency_s: float
    draft_logprobs: list[float | None] = field(default_factory=list)  # the cloud's logprob of each draft


@dataclass
class EndpointCapabilities:
    """What an endpoint was found to support; probed lazily, once per client."""

    token_ids_in_response: bool = True  # vLLM's return_tokens_as_token_ids
    remote_probe_ids: list[int] | None = None  # the endpoint's tokenization of PROBE_TEXT ([] = unknown)
    shared_tokenizer: bool | None = None  # for the SLM most recently checked
    echo_logprobs: bool | None = None  # echo + logprobs returns correctly aligned prompt logprobs
    max_logprobs: int | None = None

    def best_mode(self) -> str:
        """The cheapest lossless mode this endpoint allows: block verification when echo works."""
        if self.shared_tokenizer and self.token_ids_in_response and self.echo_logprobs:
            return "block_verify"
        return "replace"


def token_id(token: str) -> int | None:
    """The id in vLLM's ``token_id:123`` token form (``return_tokens_as_token_ids``), else None."""
    return int(token[len(TOKEN_ID_PREFIX):]) if token.startswith(TOKEN_ID_PREFIX) else None


def parse_tokens(lp: Any, start: int) -> list[CloudToken]:
    """A completion's logprobs block as tokens (ids when the server gave them) from position ``start``."""
    out = []
    tokens = lp.tokens or []
    for i in range(start, len(tokens)):
        top: dict[int, float] = {}
        if lp.top_logprobs and i < len(lp.top_logprobs) and lp.top_logprobs[i]:
            for key, value in lp.top_logprobs[i].items():
                tid = token_id(key)
                if tid is not None:
                    top[tid] = value
        logprob = lp.token_logprobs[i] if lp.token_logprobs and i < len(lp.token_logprobs) else None
        tid = token_id(tokens[i])
        out.append(CloudToken(tokens[i] if tid is None else "", tid, None, top, logprob))
    return out


def parse_usage(response: Any) -> CallUsage:
    """What a response (or a stream's last chunk) says it billed."""
    usage = response.usage
    if usage is None:
        return CallUsage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return CallUsage(usage.prompt_tokens, usage.completion_tokens, cached)


class CloudStream:
    """A streamed completion: its tokens as they arrive, then what it billed.

    Iterating yields one ``CloudReply`` per chunk (its tokens and text). A fault mid-stream ends the iteration early with the tokens that arrived
    kept and ``error`` set; ``close()`` (a stop sequence or the caller's limit) aborts it. ``usage`` is the
    server's report when the stream ended normally, else an estimate: the prompt plus the tokens received
    (``usage_reported`` says which).
    """

    def __init__(self, chunks: Any, prompt_tokens: int, start: float, on_fault: Any):
        self._chunks = chunks
        self._start = start
        self._on_fault = on_fault
        self.received = 0
        self.usage = CallUsage(prompt_tokens, 0, 0)
        self.usage_reported = False
        self.finish_reason: str | None = None
        self.error: CloudError | None = None
        self.latency_s = 0.0

    def __iter__(self) -> Iterator[CloudReply]:
        try:
            for chunk in self._chunks:
                if getattr(chunk, "usage", None) is not None:
                    self.usage = parse_usage(chunk)
                    self.usage_reported = True
                for choice in chunk.choices or []:
                    tokens = parse_tokens(choice.logprobs, 0) if choice.logprobs is not None else []
                    if not tokens and choice.text:
                        tokens = [CloudToken(choice.text, None, None)]
                    if choice.finish_reason:
                        self.finish_reason = choice.finish_reason
                    if tokens:
                        self.received += len(tokens)
                        yield CloudReply(tokens, text=choice.text or "")
            if self.finish_reason is None:
                raise MalformedResponseError("the stream ended without a finish reason")
        except (openai.APIError, httpx.HTTPError, ValueError, MalformedResponseError) as e:
            self.error = CloudError(f"the cloud's stream broke after {self.received} token(s): "
                                    f"{type(e).__name__}: {e}")
            self._on_fault()
        finally:
            self.latency_s = time.perf_counter() - self._start
            if not self.usage_reported:
                self.usage = CallUsage(self.usage.prompt_tokens, self.received, 0)

    def close(self) -> None:
        """Stop reading (the server aborts the request); ``usage`` becomes the estimate."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        if not self.usage_reported:
            self.usage = CallUsage(self.usage.prompt_tokens, self.received, 0)
        self.latency_s = self.latency_s or time.perf_counter() - self._start
