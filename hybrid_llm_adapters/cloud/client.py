"""OpenAI-compatible cloud client for token-level assistance.

One call asks ``/v1/completions`` for the next token (``max_tokens=1`` with ``logprobs``). The prompt is a
list of token ids when SLM and cloud share a tokenizer, else text. Transient errors (connection, timeout,
429, 5xx) are retried with tenacity and re-raised at the end as ``CloudError``; the engine then raises or
continues locally. The openai SDK's own retries are off so that one policy governs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from tenacity import RetryError, retry_if_exception_type, stop_after_attempt, wait_exponential, Retrying

from ..config import CloudConfig, GenerationConfig
from ..errors import CloudError

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
)

TOKEN_ID_PREFIX = "token_id:"


@dataclass(frozen=True)
class CallUsage:
    """What one call billed, as the server reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class CloudToken:
    """The cloud's answer for one position."""

    text: str
    token_id: int | None
    finish_reason: str | None
    top_logprobs: dict[str, float] = field(default_factory=dict)
    logprob: float | None = None
    usage: CallUsage = field(default_factory=CallUsage)
    latency_s: float = 0.0


@dataclass
class EndpointCapabilities:
    """What an endpoint was found to support; probed lazily, once per client."""

    token_ids_in_response: bool = True  # vLLM's return_tokens_as_token_ids
    shared_tokenizer: bool | None = None


class CloudClient:
    """Next-token requests to one OpenAI-compatible endpoint."""

    def __init__(self, config: CloudConfig):
        self.config = config
        self.capabilities = EndpointCapabilities()
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            timeout=config.timeout,
            max_retries=0,
        )
        self.calls = 0

    def __repr__(self) -> str:  # never show the key
        return f"CloudClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def shares_tokenizer(self, tokenizer: Any, probe: str = "def f(x):\n    return x  # héllo 你好") -> bool:
        """True when the endpoint tokenizes like ``tokenizer`` (checked once through vLLM's /tokenize)."""
        if self.config.send_token_ids is not None:
            return self.config.send_token_ids
        if self.capabilities.shared_tokenizer is None:
            root = self.config.base_url.removesuffix("/v1")
            try:
                resp = httpx.post(
                    f"{root}/tokenize",
                    json={"model": self.config.model, "prompt": probe, "add_special_tokens": False},
                    timeout=self.config.timeout,
                    headers={"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"},
                )
                remote = resp.json().get("tokens") if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                remote = None
            local = tokenizer.encode(probe, add_special_tokens=False)
            self.capabilities.shared_tokenizer = remote == local
            logger.info("cloud endpoint %s shares the SLM tokenizer: %s", self.config.base_url,
                        self.capabilities.shared_tokenizer)
        return bool(self.capabilities.shared_tokenizer)

    def next_token(self, prompt: list[int] | str, gen: GenerationConfig, seed: int | None = None) -> CloudToken:
        """Ask for one token after ``prompt``; raises ``CloudError`` after the retries are spent."""
        params: dict[str, Any] = {
            "model": self.config.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": gen.temperature,
            "logprobs": self.config.logprobs or None,
        }
        if not gen.greedy:
            params["top_p"] = gen.top_p
            if seed is not None:
                params["seed"] = seed
        start = time.perf_counter()
        response = self._create(params)
        latency = time.perf_counter() - start
        return self._parse(response, latency)

    def _create(self, params: dict[str, Any]) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self.calls += 1
                    return self._create_once(params)
        except RetryError as e:
            last = e.last_attempt.exception()
            raise CloudError(
                f"cloud endpoint {self.config.base_url} failed {self.config.max_retries + 1} time(s): "
                f"{type(last).__name__}: {last}. Check that the server is up (`hybrid-llm cloud status`), "
                "raise `timeout`/`max_retries`, or set on_failure='local' to continue on the device."
            ) from last
        except openai.APIError as e:
            raise CloudError(
                f"cloud endpoint {self.config.base_url} rejected the request: {type(e).__name__}: {e}. "
                f"Check the cloud model name ({self.config.model!r}) and the API key."
            ) from e
        raise AssertionError("unreachable")

    def _create_once(self, params: dict[str, Any]) -> Any:
        if self.capabilities.token_ids_in_response:
            try:
                return self._client.completions.create(
                    **params, extra_body={"return_tokens_as_token_ids": True}
                )
            except openai.BadRequestError as e:
                if "return_tokens_as_token_ids" not in str(e):
                    raise
                self.capabilities.token_ids_in_response = False
        return self._client.completions.create(**params)

    @staticmethod
    def _parse(response: Any, latency: float) -> CloudToken:
        choice = response.choices[0]
        token_id: int | None = None
        logprob: float | None = None
        top: dict[str, float] = {}
        lp = choice.logprobs
        if lp is not None and lp.tokens:
            token = lp.tokens[0]
            if token.startswith(TOKEN_ID_PREFIX):
                token_id = int(token[len(TOKEN_ID_PREFIX):])
            if lp.token_logprobs:
                logprob = lp.token_logprobs[0]
            if lp.top_logprobs and lp.top_logprobs[0]:
                top = dict(lp.top_logprobs[0])
        usage = response.usage
        cached = 0
        if usage is not None and getattr(usage, "prompt_tokens_details", None) is not None:
            cached = getattr(usage.prompt_tokens_details, "cached_tokens", 0) or 0
        return CloudToken(
            text=choice.text or "",
            token_id=token_id,
            finish_reason=choice.finish_reason,
            top_logprobs=top,
            logprob=logprob,
            usage=CallUsage(
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cached_tokens=cached,
            ),
            latency_s=latency,
        )
