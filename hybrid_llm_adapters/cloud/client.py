"""OpenAI-compatible cloud client for token-level assistance.

Three request shapes, all on ``/v1/completions``:

- next tokens: ``max_tokens=m`` (1 for the reward paper's rule, m for lookahead) with ``logprobs``;
- block scoring: ``echo=True`` + ``logprobs`` + ``max_tokens=1`` on prefix + k drafted tokens, which returns
  the cloud's distribution at every drafted position and one bonus token in a single round trip;
- a streamed completion (``max_tokens`` = what is left of the answer) for a hand-off: the cloud finishes the
  answer in one call; a fault mid-stream keeps the tokens that arrived;
- the capability probe, run once per endpoint (token-id prompts, token ids in responses, echo alignment,
  the largest ``logprobs``, whether the endpoint tokenizes like the SLM).

The prompt is a list of token ids when SLM and cloud share a tokenizer, else text. Transient errors
(connection, timeout, 429, 5xx, a malformed reply) are retried with tenacity, bounded in attempts
(``max_retries``) and in time (``max_retry_s``), honouring a 429's ``Retry-After`` up to
``retry_after_max_s``, and re-raised at the end as ``CloudError``; the engine then raises or continues
locally. The openai SDK's own retries are off so that one policy governs. Every call passes the endpoint's
circuit breaker (``breaker.py``), so a dead endpoint is skipped at once instead of costing every request its
retries.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
import openai
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from ..config import CloudConfig, GenerationConfig
from ..errors import CloudError, CloudUnavailableError
from .breaker import CircuitBreaker, breaker_for
from .replies import (
    BlockScore,
    CloudReply,
    CloudStream,
    CloudToken,
    EndpointCapabilities,
    MalformedResponseError,
    parse_tokens,
    parse_usage,
)

PROBE_TEXT = "def f(x):\n    return x  # héllo 你好"

logger = logging.getLogger(__name__)



TRANSIENT_ERRORS = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
    MalformedResponseError,
)
_BACKOFF = wait_exponential(multiplier=0.2, max=2.0)


def is_outage(error: CloudError) -> bool:
    """The endpoint could not answer (down, overloaded, timed out, garbled, or skipped by its breaker), as
    opposed to an answer that refused the request."""
    return isinstance(error, CloudUnavailableError) or isinstance(error.__cause__, TRANSIENT_ERRORS)


def retry_after_s(error: BaseException | None) -> float | None:
    """Seconds a 429/503 answer asked us to wait (``Retry-After``: seconds or an HTTP date), else None."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None

_PROBES: dict[tuple[str, str], EndpointCapabilities] = {}
_PROBES_LOCK = threading.Lock()


class CloudClient:
    """Requests to one OpenAI-compatible endpoint."""

    def __init__(self, config: CloudConfig):
        self.config = config
        with _PROBES_LOCK:
            self.capabilities = _PROBES.setdefault((config.base_url, config.model), EndpointCapabilities())
        self.breaker: CircuitBreaker = breaker_for(config.base_url, config.breaker_failures,
                                                   config.breaker_reset_s)
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            timeout=config.timeout,
            max_retries=0,
        )

    def __repr__(self) -> str:  # never show the key
        return f"CloudClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    # -- capabilities -----------------------------------------------------------------------------------

    def shares_tokenizer(self, tokenizer: Any) -> bool:
        """True when the endpoint tokenizes like ``tokenizer`` (its tokenization of a probe string is fetched
        once through vLLM's /tokenize; an endpoint without it counts as not sharing: text hand-over)."""
        if self.config.send_token_ids is not None:
            return self.config.send_token_ids
        caps = self.capabilities
        if caps.remote_probe_ids is None:
            if self.breaker.retry_in() > 0:
                return False  # the endpoint is down: this request hands over text; a later one probes again
            root = self.config.base_url.removesuffix("/v1")
            try:
                resp = httpx.post(
                    f"{root}/tokenize",
                    json={"model": self.config.model, "prompt": PROBE_TEXT, "add_special_tokens": False},
                    timeout=self.config.timeout,
                    headers={"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"},
                )
                if resp.status_code in (401, 403, 429) or resp.status_code >= 500:
                    return False  # not an answer about /tokenize: ask again next request
                caps.remote_probe_ids = list(resp.json().get("tokens") or []) if resp.status_code == 200 else []
            except httpx.HTTPError:
                return False  # unreachable now: not cached, so a recovered endpoint is probed again
            except ValueError:
                caps.remote_probe_ids = []
        shared = bool(caps.remote_probe_ids) and caps.remote_probe_ids == tokenizer.encode(
            PROBE_TEXT, add_special_tokens=False)
        caps.shared_tokenizer = shared
        return shared

    def probe(self, tokenizer: Any) -> EndpointCapabilities:
        """Detect, once per endpoint, what it supports; the engine picks its cloud mode from this."""
        caps = self.capabilities
        self.shares_tokenizer(tokenizer)
        if caps.max_logprobs is None:
            found = None
            for k in (20, 5):
                try:
                    self._create({"model": self.config.model, "prompt": [0] if caps.shared_tokenizer else "a",
                                  "max_tokens": 1, "temperature": 0, "logprobs": k})
                    found = k
                    break
                except CloudError as e:
                    if is_outage(e):
                        raise  # a probe the endpoint was down for proves nothing: asked again once it is back
            caps.max_logprobs = found or self.config.logprobs
        if caps.echo_logprobs is None:
            caps.echo_logprobs = bool(caps.shared_tokenizer) and self._echo_is_aligned(tokenizer)
        logger.info("cloud endpoint %s capabilities: %s", self.config.base_url, caps)
        return caps

    def _echo_is_aligned(self, tokenizer: Any) -> bool:
        """Echoed prompt logprobs must be those of each token given the tokens before it (llama.cpp's
        server is off by one): the greedy next token, echoed back, must be the argmax at its position."""
        ids = tokenizer.encode("def add(a, b):\n    return", add_special_tokens=False)
        try:
            nxt = self.next_tokens(ids, GenerationConfig(max_new_tokens=1), 1).first.token_id
            if nxt is None:
                return False
            block = self.score_block(ids, [nxt], GenerationConfig(max_new_tokens=1))
        except CloudError as e:
            if is_outage(e):
                raise
            return False
        top = block.positions[0]
        return bool(top) and max(top, key=top.__getitem__) == nxt

    # -- requests ---------------------------------------------------------------------------------------

    def next_token(self, prompt: list[int] | str, gen: GenerationConfig, seed: int | None = None,
                   logprobs: int | None = None) -> CloudReply:
        """The next token after ``prompt``; raises ``CloudError`` after the retries are spent."""
        return self.next_tokens(prompt, gen, 1, seed, logprobs)

    def next_tokens(self, prompt: list[int] | str, gen: GenerationConfig, n: int, seed: int | None = None,
                    logprobs: int | None = None) -> CloudReply:
        """Up to ``n`` tokens after ``prompt`` in one round trip (lookahead when n > 1)."""
        params = self._params(prompt, gen, n, seed, logprobs)
        start = time.perf_counter()
        response = self._create(params, require_logprobs=logprobs is not None)
        latency = time.perf_counter() - start
        choice = response.choices[0]
        tokens = parse_tokens(choice.logprobs, 0) if choice.logprobs is not None else []
        if not tokens and choice.text:
            tokens = [CloudToken(choice.text, None, choice.finish_reason)]
        if tokens:
            tokens[-1].finish_reason = choice.finish_reason
        return CloudReply(tokens, parse_usage(response), latency, choice.finish_reason, choice.text or "")

    def stream_tokens(self, prompt: list[int] | str, gen: GenerationConfig, n: int,
                      seed: int | None = None, prompt_tokens: int | None = None) -> CloudStream:
        """Up to ``n`` tokens after ``prompt`` in one streamed call (a hand-off). Opening the stream is retried
        like any call; a fault after the first token is not (the tokens received are kept, see CloudStream)."""
        params = self._params(prompt, gen, n, seed, 1)
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        start = time.perf_counter()
        chunks = self._create(params)
        if prompt_tokens is None:
            prompt_tokens = len(prompt) if isinstance(prompt, list) else 0
        return CloudStream(chunks, prompt_tokens, start, self.breaker.record_failure)

    def score_block(self, prefix: list[int], drafts: list[int], gen: GenerationConfig,
                    seed: int | None = None, logprobs: int | None = None) -> BlockScore:
        """One ``echo`` call: the cloud's top-k logprobs at each drafted position and one bonus token."""
        params = self._params(prefix + drafts, gen, 1, seed, logprobs)
        params["echo"] = True
        start = time.perf_counter()
        response = self._create(params, require_logprobs=True)
        latency = time.perf_counter() - start
        choice = response.choices[0]
        tokens = parse_tokens(choice.logprobs, 0)
        n = len(prefix) + len(drafts)
        if len(tokens) < n + 1 and not (len(tokens) == n and choice.finish_reason == "stop"):
            raise CloudError(f"echo returned {len(tokens)} token logprobs for a {n}-token prompt; this endpoint "
                             "cannot verify blocks. Use cloud_mode='replace'.")
        positions = [t.top_logprobs for t in tokens[len(prefix):n]]
        bonus = tokens[n] if len(tokens) > n else CloudToken("", None, "stop")
        bonus.finish_reason = choice.finish_reason
        return BlockScore(positions, bonus, parse_usage(response), latency,
                          [t.logprob for t in tokens[len(prefix):n]])

    # -- plumbing ---------------------------------------------------------------------------------------

    def _params(self, prompt: list[int] | str, gen: GenerationConfig, n: int, seed: int | None,
                logprobs: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.config.model,
            "prompt": prompt,
            "max_tokens": n,
            "temperature": gen.temperature,
            "logprobs": logprobs or self.config.logprobs or None,
        }
        if not gen.greedy:
            params["top_p"] = gen.top_p
            if seed is not None:
                params["seed"] = seed
        return params

    def _create(self, params: dict[str, Any], require_logprobs: bool = False) -> Any:
        """One completion call through the breaker, with bounded retries of transient faults."""
        cfg = self.config
        probe = self.breaker.before_call()  # raises CloudUnavailableError while the breaker is open
        start = time.monotonic()
        retrying = Retrying(
            stop=stop_after_attempt(cfg.max_retries + 1) | stop_after_delay(cfg.max_retry_s),
            wait=self._wait,
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = self._create_once(params, require_logprobs)
        except RetryError as e:
            last = e.last_attempt.exception()
            self.breaker.record_failure()
            n = e.last_attempt.attempt_number
            logger.warning("cloud endpoint %s failed %d time(s): %s", cfg.base_url, n, type(last).__name__)
            raise CloudError(
                f"cloud endpoint {cfg.base_url} failed {n} time(s) in {time.monotonic() - start:.1f} s: "
                f"{type(last).__name__}: {str(last).rstrip('.')}. Check that the server is up (`hybrid-llm cloud status`), "
                "raise `timeout`/`max_retries`/`max_retry_s`, or set on_failure='local' to continue on the device."
            ) from last
        except openai.APIStatusError as e:
            self.breaker.record_success()  # the server answered: a request problem, not an outage
            raise self._rejected(e) from e
        except openai.APIError as e:
            if probe:
                self.breaker.release_probe()
            raise CloudError(f"cloud endpoint {cfg.base_url} failed: {type(e).__name__}: {e}.") from e
        except BaseException:
            if probe:
                self.breaker.release_probe()
            raise
        self.breaker.record_success()
        return response

    def _wait(self, state: RetryCallState) -> float:
        """Honour a 429/503 ``Retry-After`` (capped by retry_after_max_s), else exponential back-off; never
        past the call's ``max_retry_s``."""
        error = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after_s(error)
        wait = min(asked, self.config.retry_after_max_s) if asked is not None else _BACKOFF(state)
        left = self.config.max_retry_s - state.seconds_since_start
        return max(0.0, min(wait, left))

    def _rejected(self, e: openai.APIStatusError) -> CloudError:
        """A clear error for a non-transient refusal: wrong key, unknown model, bad request."""
        cfg = self.config
        if e.status_code in (401, 403):
            return CloudError(
                f"cloud endpoint {cfg.base_url} refused the API key ({e.status_code} {type(e).__name__}). Fix: pass "
                "the endpoint's key as api_key=..., or set HYBRID_LLM_API_KEY (then OPENAI_API_KEY); a local vLLM "
                "started without --api-key accepts any key."
            )
        if e.status_code == 404:
            served = self._served_models()
            listed = f"; it serves {served}" if served else ""
            return CloudError(
                f"cloud endpoint {cfg.base_url} does not serve model {cfg.model!r} (404{listed}). Fix: set the "
                "cloud model name (cloud_model=... in the adapters, CloudConfig.model, $HYBRID_LLM_CLOUD_MODEL) "
                "to one the server serves, or check base_url."
            )
        return CloudError(
            f"cloud endpoint {cfg.base_url} rejected the request: {type(e).__name__}: {e}. "
            f"Check the cloud model name ({cfg.model!r}) and the API key."
        )

    def _served_models(self) -> list[str]:
        try:
            return [m.id for m in self._client.models.list()]
        except (openai.APIError, ValueError):
            return []

    def _create_once(self, params: dict[str, Any], require_logprobs: bool = False) -> Any:
        try:
            if self.capabilities.token_ids_in_response:
                try:
                    response = self._client.completions.create(
                        **params, extra_body={"return_tokens_as_token_ids": True})
                    return response if params.get("stream") else self._checked(response, require_logprobs)
                except openai.BadRequestError as e:
                    if "return_tokens_as_token_ids" not in str(e):
                        raise
                    self.capabilities.token_ids_in_response = False
            response = self._client.completions.create(**params)
            return response if params.get("stream") else self._checked(response, require_logprobs)
        except ValueError as e:  # the SDK's json.loads on a body that is not JSON
            raise MalformedResponseError(f"the reply is not valid JSON ({e})") from e

    @staticmethod
    def _checked(response: Any, require_logprobs: bool) -> Any:
        """A reply the decoder can use: at least one choice, with logprobs when the request asked for them
        (a reply without them cannot verify a draft; ``replace`` mode asks without requiring them)."""
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise MalformedResponseError(f"the reply has no completion choices (got {str(response)[:120]!r})")
        if require_logprobs and getattr(choices[0], "logprobs", None) is None:
            raise MalformedResponseError("the reply has no logprobs, which verifying a draft needs")
        return response
