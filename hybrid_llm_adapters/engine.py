"""HybridEngine: the token-level decode loop. Framework-free; adapters consume its token events.

For each step the SLM proposes a candidate; the router scores it; a kept candidate stays local, a rejected
one is replaced by the cloud's token (the reward paper's rule). The SLM's KV cache is never recomputed:
a candidate fed for a trunk reward score is rolled back by one token when the cloud replaces it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from .accounting import UsageLedger, call_cost, cloud_only_cost
from .chat import render_chat
from .cloud.client import CloudClient, CloudToken
from .config import CloudConfig, GenerationConfig, PriceTable, RouterConfig
from .errors import CloudError, ConfigError
from .events import FinishReason, GenerationResult, TokenEvent, TokenSource
from .local.sampling import choose
from .local.slm import LocalModel, SLMState, load_local_model
from .routing import Router, RouterStep, build_router
from .stopping import find_stop, releasable_length


class EngineConfig(BaseModel):
    """Everything that defines an engine: the local SLM, the router, the cloud and the price table."""

    model_config = ConfigDict(extra="forbid")

    slm: str = Field("qwen2.5-coder-0.5b-instruct", description="catalog name, local folder or HF id")
    router: RouterConfig = Field(default_factory=RouterConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    prices: PriceTable = Field(default_factory=PriceTable)
    dtype: str = "bfloat16"

    def cache_key(self) -> str:
        """Identity for sharing engines; includes a hash of the key, never the key itself."""
        import hashlib

        data = self.model_dump(mode="json", exclude={"cloud": {"api_key"}})
        secret = hashlib.sha256(self.cloud.api_key.get_secret_value().encode()).hexdigest()[:16]
        return f"{data}|{secret}"


class Generation:
    """An iterator of ``TokenEvent``; after it is exhausted, ``result`` holds the whole request."""

    def __init__(self, events: Iterator[TokenEvent]):
        self._events = events
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        return self._events


class HybridEngine:
    """The decode loop over a local SLM, a router and (optionally) a cloud client."""

    def __init__(
        self,
        local: LocalModel,
        router: Router,
        cloud: CloudClient | None = None,
        prices: PriceTable | None = None,
    ):
        self.local = local
        self.router = router
        self.cloud = cloud
        self.prices = prices or PriceTable()
        if cloud is None and router.name != "local":
            raise ConfigError(f"router {router.name!r} can send tokens to the cloud, but no cloud was configured; "
                              "pass a CloudConfig or use router kind 'local'.")

    def __repr__(self) -> str:
        return f"HybridEngine(slm={self.local.path.name!r}, router={self.router.describe()}, cloud={self.cloud!r})"

    @classmethod
    def from_config(cls, config: EngineConfig) -> HybridEngine:
        from .models import resolve_model

        local = load_local_model(resolve_model(config.slm), config.dtype)
        router = build_router(config.router, local.tokenizer, local.hidden_size)
        cloud = CloudClient(config.cloud) if config.router.kind != "local" else None
        return cls(local, router, cloud, config.prices)

    @property
    def tokenizer(self) -> Any:
        return self.local.tokenizer

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               assistant_prefix: str = "") -> list[int]:
        return render_chat(self.tokenizer, messages, tools, assistant_prefix)

    def generate(self, prompt: list[int] | str, config: GenerationConfig | None = None,
                 router: Router | None = None) -> GenerationResult:
        gen = self.stream(prompt, config, router)
        for _ in gen:
            pass
        assert gen.result is not None
        return gen.result

    def astream(self, prompt: list[int] | str, config: GenerationConfig | None = None,
                router: Router | None = None) -> Any:
        """Async form of :meth:`stream` (the decode runs in a worker thread); see ``aio.AsyncGeneration``."""
        from .aio import AsyncGeneration

        return AsyncGeneration(self.stream(prompt, config, router))

    async def agenerate(self, prompt: list[int] | str, config: GenerationConfig | None = None,
                        router: Router | None = None) -> GenerationResult:
        gen = self.astream(prompt, config, router)
        async for _ in gen:
            pass
        assert gen.result is not None
        return gen.result

    def stream(self, prompt: list[int] | str, config: GenerationConfig | None = None,
               router: Router | None = None) -> Generation:
        """Start a request; iterate the returned ``Generation`` for token events."""
        config = config or GenerationConfig()
        if isinstance(prompt, str):
            prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            prompt_ids = list(prompt)
        if not prompt_ids:
            raise ConfigError("the prompt is empty; pass text or at least one token id.")
        generation = Generation(iter(()))
        generation._events = self._decode(prompt_ids, config, router or self.router, generation)
        return generation

    # -- the loop -------------------------------------------------------------------------------------

    def _decode(self, prompt_ids: list[int], gen: GenerationConfig, router: Router,
                out: Generation) -> Iterator[TokenEvent]:
        state = self.local.new_state(prompt_ids)
        n_prompt = len(prompt_ids)
        eos = self.local.eos_token_ids
        rng = torch.Generator().manual_seed(gen.seed) if gen.seed is not None else None
        scorer_state = router.new_scorer_state()
        use_ids = self.cloud.shares_tokenizer(self.tokenizer) if self.cloud is not None else True
        ledger = UsageLedger(requests=1, prompt_tokens=n_prompt)
        events: list[TokenEvent] = []
        text = ""
        released = 0
        cloud_down = False
        finish: FinishReason = "length"

        for step in range(gen.max_new_tokens):
            t0 = time.perf_counter()
            candidate: int | None = None
            score: float | None = None
            fed = False
            want_cloud = True
            if router.needs_slm:
                logits, _ = state.forward()
                candidate = choose(logits, gen, rng)
                hidden = None
                if router.needs_hidden:
                    state.append(candidate)
                    fed = True
                    _, hidden = state.forward(need_hidden=True)
                ids_with_candidate = state.ids if fed else state.ids + [candidate]
                rstep = RouterStep(logits, candidate, ids_with_candidate, hidden, scorer_state)
                score = router.score(rstep)
                want_cloud = router.use_cloud(score, rstep)
            local_s = time.perf_counter() - t0
            source: TokenSource = "local"
            new_ids: list[int]
            cloud_s = 0.0

            if want_cloud and not cloud_down:
                prefix_len = len(state.ids) - (1 if fed else 0)
                try:
                    reply = self._ask_cloud(state, prefix_len, n_prompt, use_ids, gen, step)
                except CloudError as e:
                    ledger.failed_cloud_calls += 1
                    if self.cloud is None or self.cloud.config.on_failure == "raise":
                        raise CloudError(str(e), partial_text=text,
                                         partial_token_ids=state.ids[n_prompt:prefix_len]) from e
                    cloud_down = True  # no more round trips that would each time out
                    reply = None
                if reply is not None:
                    cloud_s = reply.latency_s
                    ledger.cloud_calls += 1
                    ledger.billed_prompt_tokens += reply.usage.prompt_tokens
                    ledger.billed_completion_tokens += reply.usage.completion_tokens
                    ledger.cached_prompt_tokens += reply.usage.cached_tokens
                    ledger.cost_usd += call_cost(self.prices, reply.usage.prompt_tokens,
                                                 reply.usage.completion_tokens, reply.usage.cached_tokens)
                    ledger.cloud_seconds += cloud_s
                    agrees = fed and use_ids and reply.token_id == candidate
                    if fed and not agrees:
                        state.truncate(prefix_len)  # the one-token rollback
                    new_ids = [candidate] if agrees else self._cloud_ids(reply, state, n_prompt, use_ids)
                    if not new_ids or new_ids[-1] in eos:
                        if agrees:
                            state.truncate(prefix_len)
                        finish = "stop"
                        ledger.local_seconds += local_s
                        router.update(True, False)
                        break
                    if not agrees:
                        state.append(new_ids)
                    source = "cloud"
                    router.update(True, candidate == new_ids[0])
            if source != "cloud":
                if candidate is None:  # always-cloud router with the cloud down: ask the SLM now
                    logits, _ = state.forward()
                    candidate = choose(logits, gen, rng)
                if want_cloud:
                    source = "fallback"
                if candidate in eos:
                    if fed:
                        state.truncate(len(state.ids) - 1)
                    finish = "stop"
                    ledger.local_seconds += time.perf_counter() - t0 - cloud_s
                    break
                if not fed:
                    state.append(candidate)
                new_ids = [candidate]
                router.update(False, True)

            ledger.local_seconds += time.perf_counter() - t0 - cloud_s
            if source == "cloud":
                ledger.cloud_tokens += 1
            else:
                ledger.local_tokens += 1
                ledger.fallback_tokens += source == "fallback"

            text = self.tokenizer.decode(state.ids[n_prompt:], skip_special_tokens=True)
            stop_at = find_stop(text, gen.stop, max(0, released - max((len(s) for s in gen.stop), default=0)))
            if stop_at is not None:
                text = text[:stop_at]
                finish = "stop"
            release_to = len(text) if stop_at is not None else releasable_length(text, gen.stop)
            piece = text[released:release_to] if release_to > released else ""
            released = max(released, release_to)
            event = TokenEvent(piece, new_ids[-1], source, score, time.perf_counter() - t0, candidate)
            events.append(event)
            yield event
            if stop_at is not None:
                break

        if released < len(text):  # release what was held back for a possible stop sequence
            last = events[-1]
            tail = TokenEvent(text[released:], last.token_id, last.source, None, 0.0)
            events.append(tail)
            yield tail
        ledger.cloud_only_cost_usd = cloud_only_cost(self.prices, n_prompt, ledger.generated_tokens)
        out.result = GenerationResult(
            text=text,
            token_ids=state.ids[n_prompt:],
            events=events,
            ledger=ledger,
            finish_reason=finish,
            prompt_token_ids=list(prompt_ids),
        )

    def _ask_cloud(self, state: SLMState, prefix_len: int, n_prompt: int, use_ids: bool,
                   gen: GenerationConfig, step: int) -> CloudToken:
        assert self.cloud is not None
        prefix = state.ids[:prefix_len]
        prompt: list[int] | str = prefix if use_ids else self.tokenizer.decode(prefix, skip_special_tokens=False)
        seed = gen.seed + step if gen.seed is not None else None
        return self.cloud.next_token(prompt, gen, seed)

    def _cloud_ids(self, reply: CloudToken, state: SLMState, n_prompt: int, use_ids: bool) -> list[int]:
        """SLM token ids for the cloud's reply; [] or [eos] means the cloud ended the answer.

        Text hand-over (different tokenizers): the generated text plus the cloud's piece is re-tokenized,
        the SLM's ids are rolled back to the common prefix, and the differing tail is returned.
        """
        eos = self.local.eos_token_ids
        if use_ids and reply.token_id is not None:
            return [reply.token_id]
        if reply.finish_reason == "stop" and not reply.text:
            return [next(iter(eos))] if eos else []
        if not reply.text:
            return []
        generated = state.ids[n_prompt:]
        old_text = self.tokenizer.decode(generated, skip_special_tokens=False)
        new_ids = self.tokenizer.encode(old_text + reply.text, add_special_tokens=False)
        common = 0
        for a, b in zip(generated, new_ids):
            if a != b:
                break
            common += 1
        state.truncate(n_prompt + common)
        return new_ids[common:]


_ENGINES: dict[str, HybridEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(config: EngineConfig) -> HybridEngine:
    """The shared engine for ``config``: equal configs get the same engine, and every engine on the same
    SLM folder shares one loaded model (so LangChain and LlamaIndex models in one process load it once)."""
    key = config.cache_key()
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = HybridEngine.from_config(config)
        return _ENGINES[key]

