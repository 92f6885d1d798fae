"""HybridEngine: the token-level decode loop. Framework-free; adapters consume its token events.

For each step the SLM proposes a candidate; the router scores it; a kept candidate stays local, a rejected
one is replaced by the cloud's token (the reward paper's rule). The SLM's KV cache is never recomputed:
a candidate fed for a trunk reward score is rolled back by one token when the cloud replaces it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .chat import render_chat
from .cloud.client import CloudClient
from .config import DEFAULT_SLM, CloudConfig, GenerationConfig, PriceTable, RouterConfig
from .errors import ConfigError
from .events import GenerationResult, TokenEvent
from .local.slm import LocalModel, load_local_model
from .local.threads import apply_slm_threads
from .routing import Router, build_router


class EngineConfig(BaseModel):
    """Everything that defines an engine: the local SLM, the router, the cloud and the price table."""

    model_config = ConfigDict(extra="forbid")

    slm: str = Field(DEFAULT_SLM, description="catalog name, local folder or HF id")
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

    def close(self) -> None:
        """Stop the request early (a cancelled stream): its SLM row leaves the batch at once."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


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
        cloud = CloudClient(config.cloud) if config.router.kind != "local" else None
        apply_slm_threads(cloud.config.base_url if cloud else None)
        router = build_router(config.router, local.tokenizer, local.hidden_size, config.prices,
                              cloud.config.model if cloud else None)
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
        ctx = self.local.context_length
        if len(prompt_ids) >= ctx:
            raise ConfigError(
                f"the prompt is {len(prompt_ids)} tokens, but the SLM {self.local.path.name!r} holds {ctx} "
                "(prompt + answer). Fix: shorten the prompt (fewer turns or retrieved chunks), or use an SLM "
                "with a longer context."
            )
        generation = Generation(iter(()))
        generation._events = self._decode(prompt_ids, config, router or self.router, generation)
        return generation

    def _decode(self, prompt_ids: list[int], gen: GenerationConfig, router: Router,
                out: Generation) -> Iterator[TokenEvent]:
        from .decoding import DecodeContext, RequestDecoder

        return RequestDecoder(DecodeContext(self.local, self.cloud, self.prices), prompt_ids, gen, router).run(out)


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

