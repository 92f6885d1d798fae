"""HybridChatModel: token-level hybrid inference (on-device SLM + OpenAI-compatible cloud LLM) as a LangChain
chat model.

The adapter is thin. Messages become OpenAI-style dicts and go through the core's one renderer
(``prepare_chat``: the SLM's chat template, tools, forced tool prefix); the core's engine yields token events;
``finish_chat`` parses content and tool calls. All logic that sync and async share lives in
``_Request`` (one body, wrapped twice); the async paths run the decode in the core's worker thread
(``engine.astream``), so the event loop is never blocked by model compute or cloud calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env, secret_from_env
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from hybrid_llm_adapters import (
    CloudConfig,
    CloudError,
    EngineConfig,
    GenerationConfig,
    GenerationResult,
    HybridEngine,
    PriceTable,
    RouterConfig,
    TokenEvent,
    get_engine,
)
from hybrid_llm_adapters.accounting import cloud_only_cost
from hybrid_llm_adapters.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from hybrid_llm_adapters.chat_api import (
    PreparedChat,
    finish_chat,
    prepare_chat,
    tool_names,
    with_decision_points,
)
from hybrid_llm_adapters.config import (
    DEFAULT_CLOUD_BASE_URL,
    DEFAULT_CLOUD_MODEL,
    DEFAULT_SLM,
    ROUTERS,
    CloudMode,
    RouterKind,
    finite_threshold,
    positive_tokens,
    refuse_unknown_settings,
)

from ._convert import Delta, ToolCallStreamParser, normalize_tool_choice, to_chat_dicts

NAME_OPEN = '{"name": "'  # where a tool call's name starts (tagged or bare)
# per-call keyword arguments that map onto GenerationConfig
_GEN_KWARGS = {"temperature", "max_tokens", "top_p", "seed", "cloud_mode", "max_cost_ratio", "handoff"}
# keyword arguments LangChain tooling may pass that have no meaning here
_IGNORED_KWARGS = {"stream", "stream_options", "n", "logprobs", "user"}


class HybridChatModel(BaseChatModel):
    """A chat model whose every token is proposed by an on-device SLM and, when the router is unsure,
    supplied by a cloud LLM behind an OpenAI-compatible endpoint.

    Drop-in for ``ChatOpenAI`` in chains, agents, structured output, streaming and batch jobs::

        from langchain_hybrid_llm import HybridChatModel

        llm = HybridChatModel(
            model="qwen2.5-coder-0.5b-instruct",          # the on-device SLM (catalog name or folder)
            base_url="http://127.0.0.1:8765/v1",          # the cloud: any OpenAI-compatible endpoint
            cloud_model="qwen2.5-coder-1.5b-instruct",
            router="entropy", threshold=1.0,              # send a token to the cloud when entropy > 1 nat
            max_tokens=256,
        )
        msg = llm.invoke("Write a haiku about caches.")
        msg.usage_metadata                                 # input / output / total tokens
        msg.response_metadata["hybrid_ledger"]             # local/cloud tokens, calls, cost, cloud-only cost

    Models built with the same SLM share one loaded model (and equal settings one engine), so creating
    many instances is cheap; the SLM loads on the first call, not in the constructor.

    ``api_key`` precedence: the argument, then ``HYBRID_LLM_API_KEY``, then ``OPENAI_API_KEY``, then
    ``"EMPTY"`` (what a local vLLM accepts). It is a ``SecretStr``: never in ``repr``, serialization
    (``lc_secrets``) or traces.
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    # -- standard parameters ------------------------------------------------------------------------
    model_name: str = Field(default=DEFAULT_SLM, alias="model",
                            description="the on-device SLM: catalog name, local folder or HF id")
    temperature: float = 0.0
    max_tokens: int | None = Field(default=256, description="maximum new tokens per answer (>= 1)")
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = Field(default=None, gt=0, description="seconds per cloud request (None: 30)")
    max_retries: int = Field(default=2, ge=0, description="retries of transient cloud errors")
    api_key: SecretStr = Field(
        default_factory=secret_from_env(["HYBRID_LLM_API_KEY", "OPENAI_API_KEY"], default="EMPTY"),
        repr=False,
    )
    streaming: bool = False

    # -- hybrid parameters --------------------------------------------------------------------------
    base_url: str = Field(default_factory=from_env("HYBRID_LLM_CLOUD_URL", default=DEFAULT_CLOUD_BASE_URL),
                          alias="cloud_base_url", description="the cloud's OpenAI-compatible endpoint")
    cloud_model: str = Field(default_factory=from_env("HYBRID_LLM_CLOUD_MODEL", default=DEFAULT_CLOUD_MODEL),
                             description="the cloud LLM's model name at base_url")
    router: RouterKind = Field(default="entropy", description="who decides local vs cloud per token")
    threshold: float | None = Field(default=None, description="router threshold; None: the router's default")
    reward_head: str | None = Field(default=None, description="reward head file / separate RM (router 'reward')")
    on_cloud_failure: Literal["raise", "local"] = Field(
        default="raise", description="after retries: raise a CloudError, or continue on the device"
    )
    cloud_mode: CloudMode | None = Field(
        default=None, description="how the cloud helps (replace, verify, block_verify, lookahead, auto); "
        "None: the core's default"
    )
    max_cost_ratio: float | Literal["auto"] | None = Field(
        default="auto", description="cost guard: never above this multiple of the cloud-only cost (auto: 1.0 on a "
        "pay-per-token price table, off self-hosted; None: off)")
    handoff: Literal["auto", "on", "off"] = Field(
        default="auto", description="the cloud finishes the answer in one streamed call when the router flags "
        "densely (auto: on for a pay-per-token price table)")
    generation_options: dict[str, Any] = Field(
        default_factory=dict, description="further GenerationConfig fields, e.g. {'draft_tokens': 8}"
    )
    router_options: dict[str, Any] = Field(
        default_factory=dict, description="further RouterConfig fields, e.g. {'target_activation': 0.2}"
    )
    cloud_options: dict[str, Any] = Field(
        default_factory=dict, description="further CloudConfig fields, e.g. {'logprobs': 10}"
    )
    prices: PriceTable | None = Field(default=None, description="USD price table and cache rules for the "
                                      "ledger and the cost guard (None: the core's illustrative default; "
                                      "PriceTable.preset(...) for the shipped examples)")
    dtype: str = "bfloat16"

    _engine: HybridEngine | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, data: Any) -> Any:
        refuse_unknown_settings(data, cls)
        return data

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, v: float | None) -> float | None:
        return finite_threshold(v)

    @field_validator("max_tokens")
    @classmethod
    def _positive_tokens(cls, v: int | None) -> int | None:
        return positive_tokens(v)

    # -- LangChain plumbing -------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "hybrid-llm"

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_hybrid_llm", "chat_models"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "HYBRID_LLM_API_KEY"}

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "cloud_model": self.cloud_model,
            "base_url": self.base_url,
            "router": self.router,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "on_cloud_failure": self.on_cloud_failure,
            "cloud_mode": self.cloud_mode,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="hybrid_llm",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if ls_stop := stop or self.stop:
            params["ls_stop"] = ls_stop
        return params

    # -- the engine ---------------------------------------------------------------------------------
    def engine_config(self) -> EngineConfig:
        """The core configuration this model runs on (equal configs share one engine)."""
        cloud: dict[str, Any] = {
            "base_url": self.base_url,
            "model": self.cloud_model,
            "api_key": self.api_key,
            "max_retries": self.max_retries,
            "on_failure": self.on_cloud_failure,
        }
        if self.timeout is not None:
            cloud["timeout"] = self.timeout
        cloud.update(self.cloud_options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "threshold ignored by local router" is no news here
            router = RouterConfig(
                kind=self.router,
                threshold=self.threshold if ROUTERS[self.router].default_threshold is not None else None,
                reward_head=self.reward_head,
                **self.router_options,
            )
        return EngineConfig(slm=self.model_name, router=router, cloud=CloudConfig(**cloud), prices=self.prices or PriceTable(),
                            dtype=self.dtype)

    @property
    def engine(self) -> HybridEngine:
        """The shared engine (loaded on first use)."""
        if self._engine is None:
            self._engine = get_engine(self.engine_config())
        return self._engine

    async def _aengine(self) -> HybridEngine:
        if self._engine is None:  # loading takes seconds: keep it off the event loop
            await asyncio.to_thread(lambda: self.engine)
        assert self._engine is not None
        return self._engine

    # -- tools & structured output ------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (rendered by the SLM's chat template, Qwen-style ``<tool_call>`` output).

        ``tool_choice``: None/"auto" (the model decides), "none", "any"/"required"/True (some tool), a tool
        name or ``{"type": "function", "function": {"name": ...}}``. A forced choice starts the answer with
        the tool call's opening text (the core's forced prefix), so even a small SLM emits a valid call, and
        the answer ends after that call. ``parallel_tool_calls=False`` also ends every answer after its
        first call. ``strict`` is accepted for compatibility; the schema is rendered either way.
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        choice = normalize_tool_choice(tool_choice, tool_names(formatted))
        if choice is not None:
            kwargs["tool_choice"] = choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    # with_structured_output: BaseChatModel's implementation binds the schema as a tool with
    # tool_choice="any" (function calling) and parses the call; our forced prefix makes that reliable.
    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Structured output for pydantic classes, TypedDicts and JSON schemas.

        Every method runs as forced function calling (the schema rendered as a tool, the call forced by the
        core's prefix): the SLM has no constrained JSON decoding, so ``json_schema`` and ``json_mode`` are
        accepted and mean the same thing here.
        """
        if method not in ("function_calling", "json_schema", "json_mode"):
            raise ValueError(f"method={method!r} is not supported; use 'function_calling' (or 'json_schema').")
        return super().with_structured_output(schema, include_raw=include_raw, **kwargs)

    # -- generation ---------------------------------------------------------------------------------
    def _request(self, engine: HybridEngine, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> _Request:
        return _Request(self, engine, messages, stop, kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        req = self._request(self.engine, messages, stop, kwargs)
        prompt: list[int] | None = req.prepared.prompt_ids
        with req.keeping_partial_text():
            while prompt is not None:
                result = self.engine.generate(prompt, req.phase_config())
                prompt, _ = req.after_phase(result)
        return req.chat_result()

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        engine = await self._aengine()
        req = await asyncio.to_thread(self._request, engine, messages, stop, kwargs)
        prompt: list[int] | None = req.prepared.prompt_ids
        with req.keeping_partial_text():
            while prompt is not None:
                result = await engine.agenerate(prompt, req.phase_config())
                prompt, _ = await asyncio.to_thread(req.after_phase, result)
        return req.chat_result()

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        req = self._request(self.engine, messages, stop, kwargs)
        prompt: list[int] | None = req.prepared.prompt_ids
        while prompt is not None:
            gen = self.engine.stream(prompt, req.phase_config())
            for event in req.partial_on_error(gen):
                if (chunk := req.on_event(event)) is not None:
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            assert gen.result is not None
            prompt, chunk = req.after_phase(gen.result)
            if chunk is not None:
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        last = req.last_chunk()
        if run_manager:
            run_manager.on_llm_new_token(last.text, chunk=last)
        yield last

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        engine = await self._aengine()
        req = await asyncio.to_thread(self._request, engine, messages, stop, kwargs)
        prompt: list[int] | None = req.prepared.prompt_ids
        while prompt is not None:
            gen = engine.astream(prompt, req.phase_config())
            async for event in req.apartial_on_error(gen):
                if (chunk := req.on_event(event)) is not None:
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            assert gen.result is not None
            prompt, chunk = await asyncio.to_thread(req.after_phase, gen.result)
            if chunk is not None:
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        last = req.last_chunk()
        if run_manager:
            await run_manager.on_llm_new_token(last.text, chunk=last)
        yield last


class _Request:
    """One chat request: its prompt, decode settings, and the translation of the engine's output into
    LangChain messages and chunks. Shared by the sync and async paths."""

    def __init__(self, model: HybridChatModel, engine: HybridEngine, messages: list[BaseMessage],
                 stop: list[str] | None, kwargs: dict[str, Any]):
        self.model = model
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        parallel = kwargs.pop("parallel_tool_calls", None)
        gen_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _GEN_KWARGS}
        if "model" in kwargs and kwargs["model"] != model.model_name:
            raise ValueError(f"model={kwargs['model']!r} per call is not supported: the SLM is loaded on the "
                             "device; create another HybridChatModel for another SLM.")
        kwargs.pop("model", None)
        unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
        if unknown:
            warnings.warn(f"HybridChatModel ignores the call arguments {unknown}.", stacklevel=4)
        chat = to_chat_dicts(messages)
        self.prepared: PreparedChat = prepare_chat(engine.tokenizer, chat, tools, tool_choice)
        names = tool_names(self.prepared.tools)
        if tool_choice == "any" and len(names) > 1:  # let the SLM pick among the bound names only
            picked = pick_tool(engine, self.prepared.prompt_ids, names)
            self.prepared = prepare_chat(engine.tokenizer, chat, tools, picked)
        stops = list(stop if stop is not None else (model.stop or []))
        if self.prepared.tools and (self.prepared.forced_prefix or parallel is False):
            stops.append(TOOL_CALL_CLOSE)  # one call, then the answer is complete
        max_tokens = gen_kwargs.get("max_tokens", model.max_tokens)
        options = dict(model.generation_options)
        if (mode := gen_kwargs.get("cloud_mode", model.cloud_mode)) is not None:
            options["cloud_mode"] = mode
        for name in ("max_cost_ratio", "handoff"):  # a call argument, else generation_options, else the field
            if name in gen_kwargs or name not in options:
                options[name] = gen_kwargs.get(name, getattr(model, name))
        self.gen = GenerationConfig(
            **options,
            max_new_tokens=max_tokens if max_tokens is not None else 256,
            temperature=gen_kwargs.get("temperature", model.temperature),
            top_p=gen_kwargs.get("top_p", model.top_p),
            seed=gen_kwargs.get("seed", model.seed),
            stop=stops,
        )
        self.gen = with_decision_points(self.prepared, self.gen)
        self.engine = engine
        self.names = names
        # auto tool choice: stop where the model starts a call's name, and let the SLM pick a bound name
        self.name_stop = bool(names) and not self.prepared.forced_prefix and tool_choice != "none"
        self.max_new_tokens = self.gen.max_new_tokens
        self.text = ""  # the answer so far (all phases, with injected name text), after the forced prefix
        self.results: list[GenerationResult] = []
        self.parser = ToolCallStreamParser(names) if self.prepared.tools else None
        if self.parser is not None and self.prepared.forced_prefix:
            self._pending = self.parser.feed(self.prepared.forced_prefix)
        else:
            self._pending = []
        self._sources: list[str] = []

    # -- cloud errors -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def keeping_partial_text(self) -> Iterator[None]:
        """A CloudError in a later phase carries the whole answer so far, not just that phase's text."""
        try:
            yield
        except CloudError as e:
            e.partial_text = self.text + e.partial_text
            raise

    def partial_on_error(self, events: Iterable[TokenEvent]) -> Iterator[TokenEvent]:
        with self.keeping_partial_text():
            yield from events

    async def apartial_on_error(self, events: AsyncIterable[TokenEvent]) -> AsyncIterator[TokenEvent]:
        with self.keeping_partial_text():
            async for event in events:
                yield event

    # -- phases -------------------------------------------------------------------------------------
    def phase_config(self) -> GenerationConfig:
        """Decode settings of the next phase: the tokens left, and the name stop while it is active."""
        used = sum(r.ledger.generated_tokens for r in self.results)
        stop = [*self.gen.stop, NAME_OPEN] if self.name_stop else list(self.gen.stop)
        update: dict[str, Any] = {"max_new_tokens": max(1, self.max_new_tokens - used), "stop": stop}
        if self.results:  # a later phase continues the turn: its decision point is behind it
            update["decision_tokens"] = 0
        return self.gen.model_copy(update=update)

    def after_phase(self, result: GenerationResult) -> tuple[list[int] | None, ChatGenerationChunk | None]:
        """Record a finished phase; return the next phase's prompt (None: the answer is complete) and a
        chunk with the text injected between the phases (for streaming)."""
        self.results.append(result)
        self.text += result.text
        tok = self.engine.tokenizer
        decoded = tok.decode(result.token_ids, skip_special_tokens=True)
        hit = self.name_stop and result.finish_reason == "stop" and decoded[len(result.text):].startswith(NAME_OPEN)
        if not hit:
            return None, None
        head = self.text.rstrip()
        if not head or head.endswith(TOOL_CALL_OPEN):  # a call's name starts here: choose a bound tool
            prefix = tok.encode(self.prepared.forced_prefix + self.text + NAME_OPEN, add_special_tokens=False)
            name = self.names[0] if len(self.names) == 1 else pick_tool(
                self.engine, self.prepared.prompt_ids + prefix, self.names)
            injected = f'{NAME_OPEN}{name}", "arguments":'
        else:  # '{"name": "' inside ordinary text: carry on, without the stop
            injected = NAME_OPEN
            self.name_stop = False
        self.text += injected
        used = sum(r.ledger.generated_tokens for r in self.results)
        chunk = None
        deltas = self.parser.feed(injected) if self.parser else [Delta(text=injected)]
        if deltas:
            chunk = ChatGenerationChunk(message=self._chunk(deltas, []))
        if used >= self.max_new_tokens:
            return None, chunk
        # the next phase continues the same answer: the prompt, then everything written so far
        return self.prepared.prompt_ids + tok.encode(self.text, add_special_tokens=False), chunk

    def merged(self) -> GenerationResult:
        """One result for the whole answer: the phases' tokens, events and ledgers, counted once."""
        if len(self.results) == 1:
            return self.results[0]
        ledger = self.results[0].ledger
        for r in self.results[1:]:
            ledger = ledger + r.ledger
        n_prompt = len(self.prepared.prompt_ids)
        ledger = ledger.model_copy(update={
            "requests": 1, "prompt_tokens": n_prompt,
            "cloud_only_cost_usd": cloud_only_cost(self.engine.prices, n_prompt, ledger.generated_tokens)})
        return GenerationResult(
            text=self.text,
            token_ids=[t for r in self.results for t in r.token_ids],
            events=[e for r in self.results for e in r.events],
            ledger=ledger,
            finish_reason=self.results[-1].finish_reason,
            prompt_token_ids=list(self.prepared.prompt_ids),
        )

    # -- whole answers ------------------------------------------------------------------------------
    def response_metadata(self, result: GenerationResult, finish_reason: str) -> dict[str, Any]:
        return {
            "model_name": self.model.model_name,
            "model_provider": "hybrid_llm",
            "cloud_model_name": self.model.cloud_model if self.model.router != "local" else None,
            "finish_reason": finish_reason,
            "hybrid_ledger": result.ledger.as_dict(),
        }

    @staticmethod
    def usage(result: GenerationResult) -> UsageMetadata:
        n_in, n_out = result.ledger.prompt_tokens, result.ledger.generated_tokens
        return UsageMetadata(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out)

    def chat_result(self) -> ChatResult:
        result = self.merged()
        out = finish_chat(self.prepared, result)
        message = AIMessage(
            content=out.content,
            tool_calls=[{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"}
                        for c in out.tool_calls],
            usage_metadata=self.usage(result),
            response_metadata={**self.response_metadata(result, out.finish_reason),
                               "hybrid_token_sources": [e.source for e in result.events if not _is_release(e)]},
        )
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": out.finish_reason})],
                          llm_output={"model_name": self.model.model_name,
                                      "hybrid_ledger": result.ledger.as_dict()})

    # -- streaming ----------------------------------------------------------------------------------
    def _chunk(self, deltas: list[Any], sources: list[str], **extra: Any) -> AIMessageChunk:
        text = "".join(d.text for d in deltas if d.index is None)
        merged: dict[int, dict[str, Any]] = {}  # one tool_call_chunk per call in a chunk
        for d in deltas:
            if d.index is None:
                continue
            m = merged.setdefault(d.index, {"name": None, "args": "", "id": None})
            m["name"] = m["name"] or d.name
            m["id"] = m["id"] or d.id
            m["args"] += d.args or ""
        calls = [tool_call_chunk(index=i, **m) for i, m in merged.items()]
        return AIMessageChunk(content=text, tool_call_chunks=calls,
                              response_metadata={"hybrid_token_sources": sources, **extra.pop("meta", {})},
                              **extra)

    def on_event(self, event: TokenEvent) -> ChatGenerationChunk | None:
        """A chunk for this token event, or None while its text is held back (tool-call head, stop)."""
        if not _is_release(event):
            self._sources.append(event.source)
        deltas = self._pending + (self.parser.feed(event.text) if self.parser else
                                  ([Delta(text=event.text)] if event.text else []))
        self._pending = []
        if not deltas:
            return None
        sources, self._sources = self._sources, []
        return ChatGenerationChunk(message=self._chunk(deltas, sources))

    def last_chunk(self) -> ChatGenerationChunk:
        """The final chunk: what the parser still held, any call it missed, usage and the ledger."""
        result = self.merged()
        deltas = self._pending + (self.parser.flush() if self.parser else [])
        out = finish_chat(self.prepared, result)
        streamed = self.parser.calls if self.parser else 0
        for i, call in enumerate(out.tool_calls[streamed:], start=streamed):
            deltas.append(Delta(index=i, id=call.id, name=call.name,
                                args=json.dumps(call.arguments, ensure_ascii=False)))
        sources, self._sources = self._sources, []
        message = self._chunk(deltas, sources, usage_metadata=self.usage(result), chunk_position="last",
                              meta=self.response_metadata(result, out.finish_reason))
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": out.finish_reason})



def _is_release(event: TokenEvent) -> bool:
    """The engine's closing event that releases text held back for a possible stop sequence: it repeats
    the last token (no new token), so it adds no entry to the token sources."""
    return event.final_flush


def pick_tool(engine: HybridEngine, prompt_ids: list[int], names: list[str]) -> str:
    """The bound tool the SLM finds most likely after the forced ``{"name": "`` (a constrained choice).

    A small SLM left to write the name freely may invent one (seen: "hello" for two bound tools); scoring
    each bound name as the continuation, with the prompt's KV cache shared, costs a few single-token
    forwards per name. Runs on the device only; it is not part of the request's ledger.
    """
    import itertools

    import torch

    tok = engine.tokenizer
    state = engine.local.new_state(prompt_ids)
    base, _ = state.forward()
    base_lp = torch.log_softmax(base, dim=-1)
    n0 = len(state.ids)
    best, best_lp = names[0], float("-inf")
    try:
        for name in names:
            ids = tok.encode(name + '",', add_special_tokens=False)  # '",' is one token after a name
            total = float(base_lp[ids[0]])
            for prev, nxt in itertools.pairwise(ids):
                state.append(prev)
                logits, _ = state.forward()
                total += float(torch.log_softmax(logits, dim=-1)[nxt])
            state.truncate(n0)
            if total > best_lp:
                best, best_lp = name, total
    finally:
        state.close()
    return best
