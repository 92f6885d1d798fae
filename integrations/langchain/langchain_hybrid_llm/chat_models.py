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
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
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
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from hybrid_llm_adapters import EngineConfig, GenerationResult, HybridEngine, PriceTable, get_engine
from hybrid_llm_adapters.chat_api import ChatChunk, ChatOutput, ChatRequest, resolve_tool_choice, tool_names
from hybrid_llm_adapters.config import (
    DEFAULT_CLOUD_BASE_URL,
    DEFAULT_CLOUD_MODEL,
    DEFAULT_SLM,
    CloudMode,
    RouterKind,
    refuse_unknown_settings,
)
from hybrid_llm_adapters.settings import PER_CALL, HybridSettings

from ._convert import to_chat_dicts

# per-call keyword arguments that map onto the decode settings (stop comes as its own argument)
_GEN_KWARGS = set(PER_CALL) - {"stop"}
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
            router="entropy", threshold=0.27,             # send a token to the cloud when entropy > 0.27 nats
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
    timeout: float = Field(default=120.0, gt=0, description="seconds per cloud HTTP request")
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

    @model_validator(mode="after")
    def _valid_settings(self) -> Any:
        self.settings()  # the core's settings model checks every value (one set of rules for all entry points)
        return self

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
    def settings(self) -> HybridSettings:
        """This model's settings in the core's one settings model (the LlamaIndex model and the CLIs use it
        too, so a setting has one meaning and one default)."""
        return HybridSettings.of(self, renames={"model": "model_name"})

    def engine_config(self) -> EngineConfig:
        """The core configuration this model runs on (equal configs share one engine)."""
        return self.settings().engine_config()

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
        choice = resolve_tool_choice(tool_choice, tool_names(formatted))
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
                 kwargs: dict[str, Any]) -> ChatRequest:
        """The core's chat request for LangChain messages and call arguments (the only translation here)."""
        kwargs = dict(kwargs)
        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        parallel = kwargs.pop("parallel_tool_calls", None)
        calls = {k: kwargs.pop(k) for k in list(kwargs) if k in _GEN_KWARGS}
        if "model" in kwargs and kwargs["model"] != self.model_name:
            raise ValueError(f"model={kwargs['model']!r} per call is not supported: the SLM is loaded on the "
                             "device; create another HybridChatModel for another SLM.")
        kwargs.pop("model", None)
        unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
        if unknown:
            warnings.warn(f"HybridChatModel ignores the call arguments {unknown}.", stacklevel=4)
        if stop is not None:
            calls["stop"] = stop
        gen = self.settings().generation_config(**calls)
        return ChatRequest(engine, to_chat_dicts(messages), gen, tools, tool_choice, parallel)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._chat_result(self._request(self.engine, messages, stop, kwargs).run())

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        engine = await self._aengine()
        req = await asyncio.to_thread(self._request, engine, messages, stop, kwargs)
        return self._chat_result(await req.arun())

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        stream = self._request(self.engine, messages, stop, kwargs).stream()
        for piece in stream:
            chunk = self._chunk(piece)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        engine = await self._aengine()
        stream = (await asyncio.to_thread(self._request, engine, messages, stop, kwargs)).astream()
        async for piece in stream:
            chunk = self._chunk(piece)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # -- translation of the core's answer -------------------------------------------------------------
    def _response_metadata(self, output: ChatOutput) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "hybrid_llm",
            "cloud_model_name": self.cloud_model if self.router != "local" else None,
            "finish_reason": output.finish_reason,
            "hybrid_ledger": output.result.ledger.as_dict(),
        }

    @staticmethod
    def _usage(result: GenerationResult) -> UsageMetadata:
        n_in, n_out = result.ledger.prompt_tokens, result.ledger.generated_tokens
        return UsageMetadata(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out)

    def _chat_result(self, out: ChatOutput) -> ChatResult:
        result = out.result
        message = AIMessage(
            content=out.content,
            tool_calls=[{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"}
                        for c in out.tool_calls],
            usage_metadata=self._usage(result),
            response_metadata={**self._response_metadata(out),
                               "hybrid_token_sources": [e.source for e in result.events if not e.final_flush]},
        )
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": out.finish_reason})],
                          llm_output={"model_name": self.model_name, "hybrid_ledger": result.ledger.as_dict()})

    def _chunk(self, piece: ChatChunk) -> ChatGenerationChunk:
        """A LangChain chunk for the core's chunk; the last one carries usage, ledger and finish reason."""
        merged: dict[int, dict[str, Any]] = {}  # one tool_call_chunk per call in a chunk
        for d in piece.tool_calls:
            m = merged.setdefault(d.index, {"name": None, "args": "", "id": None})  # type: ignore[arg-type]
            m["name"] = m["name"] or d.name
            m["id"] = m["id"] or d.id
            m["args"] += d.args or ""
        calls = [tool_call_chunk(index=i, **m) for i, m in merged.items()]
        meta: dict[str, Any] = {"hybrid_token_sources": piece.sources}
        extra: dict[str, Any] = {}
        info = None
        if (output := piece.output) is not None:
            meta.update(self._response_metadata(output))
            extra = {"usage_metadata": self._usage(output.result), "chunk_position": "last"}
            info = {"finish_reason": output.finish_reason}
        message = AIMessageChunk(content=piece.text, tool_call_chunks=calls, response_metadata=meta, **extra)
        return ChatGenerationChunk(message=message, generation_info=info)
