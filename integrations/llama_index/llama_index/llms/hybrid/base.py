"""``HybridChatModel``: a LlamaIndex ``FunctionCallingLLM`` over the hybrid engine.

The adapter is thin: messages go through the core's one prompt renderer (``prepare_chat``: the SLM's chat
template, tools in the template, forced tool calls), the core's engine decodes, and ``finish_chat`` parses
content and tool calls. Every request path (chat, complete, their streaming and async forms, tools) shares
``_begin`` / ``_finish`` / ``_StreamBuilder``, wrapped once for sync and once for async. The async forms run
the decode in a worker thread (``engine.astream``), so the event loop never blocks.

Models are shared: the engine comes from ``hybrid_llm_adapters.get_engine``, so a LlamaIndex and a
LangChain model with equal settings in one process use one engine and one loaded SLM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal

import llama_index.core.instrumentation as instrument
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from hybrid_llm_adapters import (
    CloudConfig,
    EngineConfig,
    GenerationConfig,
    GenerationResult,
    HybridEngine,
    PriceTable,
    RouterConfig,
    TokenEvent,
    get_engine,
)
from hybrid_llm_adapters.chat_api import (
    ChatOutput,
    PreparedChat,
    finish_chat,
    prepare_chat,
    with_decision_points,
)
from hybrid_llm_adapters.config import (
    DEFAULT_SLM,
    ROUTERS,
    CloudMode,
    FallbackPolicy,
    RouterKind,
    finite_threshold,
    positive_tokens,
    refuse_unknown_settings,
)

from .events import HybridLLMUsageEvent
from .utils import (
    LEDGER_KEY,
    assistant_message,
    raw_response,
    selections,
    to_openai_messages,
    to_openai_tools,
    tool_choice_name,
    visible_text,
)

logger = logging.getLogger(__name__)
dispatcher = instrument.get_dispatcher(__name__)

_GEN_KEYS = ("max_tokens", "temperature", "top_p", "seed", "stop", "cloud_mode", "max_cost_ratio", "handoff")
_TOOL_KEYS = ("tools", "tool_choice", "tool_required")


class HybridChatModel(FunctionCallingLLM):
    """Token-level hybrid chat model: an on-device SLM writes each token unless the router sends it to the
    cloud LLM (any OpenAI-compatible ``/v1/completions`` endpoint with logprobs, e.g. vLLM).

    Example:
        ```python
        from llama_index.llms.hybrid import HybridChatModel

        llm = HybridChatModel(
            model="qwen2.5-coder-0.5b-instruct",        # the on-device SLM (catalog name or folder)
            base_url="http://127.0.0.1:8765/v1",        # the cloud: any OpenAI-compatible endpoint
            cloud_model="qwen2.5-coder-1.5b-instruct",
            router="entropy", threshold=1.0,            # cloud when the SLM's entropy > 1 nat
            max_tokens=256,
        )
        resp = llm.chat([ChatMessage(role="user", content="Say hi")])
        resp.additional_kwargs["hybrid_ledger"]   # tokens local/cloud, cloud calls, cost vs cloud-only
        ```

    ``api_key`` precedence: this argument, then ``HYBRID_LLM_API_KEY``, then ``OPENAI_API_KEY``, then
    ``"EMPTY"`` (what a local vLLM accepts). It is a ``SecretStr``, excluded from ``repr``, ``to_dict`` /
    ``to_json`` and every instrumentation payload.
    """

    # The constructor takes the same names as langchain_hybrid_llm.HybridChatModel, so one dict of settings
    # builds both (and equal settings share one engine).
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    # -- the engine ---------------------------------------------------------------------------------
    model: str = Field(DEFAULT_SLM, description="the on-device SLM: catalog name, local folder or HF id")
    base_url: str | None = Field(None, alias="cloud_base_url", description="the cloud's OpenAI-compatible "
                                 "endpoint; None = $HYBRID_LLM_CLOUD_URL or http://127.0.0.1:8765/v1")
    cloud_model: str | None = Field(None, description="the cloud model's name; None = $HYBRID_LLM_CLOUD_MODEL "
                                    "or qwen2.5-coder-1.5b-instruct")
    api_key: SecretStr | None = Field(None, exclude=True, repr=False, description="cloud API key (secret)")
    router: RouterKind = Field("entropy", description="reward | entropy | max_prob | perturbation | local | cloud")
    threshold: float | None = Field(None, description="router threshold; None = the router's default")
    reward_head: str | None = Field(None, description="reward head file or separate reward-model folder")
    timeout: float = Field(30.0, gt=0, description="seconds per cloud HTTP request")
    max_retries: int = Field(2, ge=0, description="retries of transient cloud errors")
    on_cloud_failure: FallbackPolicy = Field("raise", description="after retries: 'raise' or continue 'local'")
    prices: PriceTable = Field(default_factory=PriceTable, description="USD per million tokens, per call, and "
                               "the provider's cache rules (PriceTable.preset(...) for the shipped examples)")
    cloud_mode: CloudMode | None = Field(None, description="how the cloud helps (replace, verify, block_verify, "
                                         "lookahead, auto); None: the core's default")
    max_cost_ratio: float | Literal["auto"] | None = Field(
        "auto", description="cost guard: never above this multiple of the cloud-only cost (auto: 1.0 on a "
        "pay-per-token price table, off self-hosted; None: off)")
    handoff: Literal["auto", "on", "off"] = Field(
        "auto", description="the cloud finishes the answer in one streamed call when the router flags densely "
        "(auto: on for a pay-per-token price table)")
    dtype: str = Field("bfloat16", description="SLM dtype")
    # -- decoding defaults (per call: the same names; ``max_new_tokens`` is accepted for ``max_tokens``) ---
    max_tokens: int = Field(256, description="maximum new tokens per answer (>= 1)")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None)
    stop: list[str] = Field(default_factory=list)
    context_window: int | None = Field(
        None, description="prompt + answer tokens; None = the SLM's max positions. Set it to the smaller of the "
        "SLM's and the cloud server's limit (e.g. vLLM --max-model-len) for RAG prompt packing.")

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
    def _positive_tokens(cls, v: int) -> int:
        return positive_tokens(v)  # type: ignore[return-value]

    @classmethod
    def class_name(cls) -> str:
        return "HybridChatModel"

    # -- configuration ------------------------------------------------------------------------------
    @property
    def engine_config(self) -> EngineConfig:
        """The core config built from this model's fields (equal fields => equal config => shared engine)."""
        cloud: dict[str, Any] = {"timeout": self.timeout, "max_retries": self.max_retries,
                                 "on_failure": self.on_cloud_failure}
        if self.base_url is not None:
            cloud["base_url"] = self.base_url
        if self.cloud_model is not None:
            cloud["model"] = self.cloud_model
        if self.api_key is not None:
            cloud["api_key"] = self.api_key
        threshold = self.threshold if ROUTERS[self.router].default_threshold is not None else None  # as the LangChain model
        return EngineConfig(
            slm=self.model,
            router=RouterConfig(kind=self.router, threshold=threshold, reward_head=self.reward_head),
            cloud=CloudConfig(**cloud),
            prices=self.prices,
            dtype=self.dtype,
        )

    @property
    def engine(self) -> HybridEngine:
        """The shared engine (loaded on first use)."""
        if self._engine is None:
            self._engine = get_engine(self.engine_config)
        return self._engine

    @property
    def model_name(self) -> str:
        slm = self.model.rstrip("/").rsplit("/", 1)[-1]
        if self.router == "local":
            return f"hybrid/{slm}"
        return f"hybrid/{slm}+{self.cloud_model or CloudConfig().model}"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window or self._slm_context_window(),
            num_output=self.max_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model_name,
        )

    def _slm_context_window(self) -> int:
        config = self.engine.local.model.config
        return int(getattr(config, "max_position_embeddings", 0) or 2048)

    def _generation_config(self, kwargs: dict[str, Any]) -> GenerationConfig:
        values: dict[str, Any] = {k: getattr(self, k) for k in _GEN_KEYS}
        if kwargs.get("max_new_tokens") is not None:
            values["max_tokens"] = kwargs["max_new_tokens"]
        values.update({k: kwargs[k] for k in _GEN_KEYS if kwargs.get(k) is not None})
        ignored = set(kwargs) - set(_GEN_KEYS) - set(_TOOL_KEYS) - {"max_new_tokens"}
        if ignored:
            logger.debug("HybridChatModel ignores call arguments %s", sorted(ignored))
        values["max_new_tokens"] = values.pop("max_tokens")
        if values["cloud_mode"] is None:
            del values["cloud_mode"]  # the core's default
        return GenerationConfig(**values)

    # -- one request, shared by every path ----------------------------------------------------------
    def _begin(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[PreparedChat, GenerationConfig]:
        tools = kwargs.get("tools") or None
        if tools and not isinstance(tools[0], dict):  # BaseTool objects passed straight to chat()
            tools = to_openai_tools(tools)
        choice = tool_choice_name(kwargs.get("tool_choice"), bool(kwargs.get("tool_required"))) if tools else None
        prepared = prepare_chat(self.engine.tokenizer, to_openai_messages(messages), tools, choice)
        return prepared, with_decision_points(prepared, self._generation_config(kwargs))

    def _finish(self, prepared: PreparedChat, result: GenerationResult) -> tuple[ChatOutput, dict[str, Any]]:
        output = finish_chat(prepared, result)
        raw = raw_response(output, self.model_name)
        dispatcher.event(HybridLLMUsageEvent(
            model_name=self.model_name, ledger=result.ledger, finish_reason=output.finish_reason,
            tool_calls=[c.name for c in output.tool_calls],
        ))
        return output, raw

    def _chat_response(self, prepared: PreparedChat, result: GenerationResult) -> ChatResponse:
        output, raw = self._finish(prepared, result)
        return ChatResponse(message=assistant_message(output.content, output.tool_calls), raw=raw,
                            additional_kwargs=_extras(raw))

    def _completion_response(self, prepared: PreparedChat, result: GenerationResult) -> CompletionResponse:
        output, raw = self._finish(prepared, result)
        return CompletionResponse(text=output.content, raw=raw, additional_kwargs=_extras(raw))

    def _prompt_messages(self, prompt: str) -> list[ChatMessage]:
        """``complete`` renders the prompt as a user turn of the chat template (the SLM is a chat model)."""
        messages = [ChatMessage(role=MessageRole.USER, content=prompt)]
        if self.system_prompt:
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt))
        return messages

    # -- chat -------------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        prepared, gen = self._begin(messages, kwargs)
        return self._chat_response(prepared, self.engine.generate(prepared.prompt_ids, gen))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        prepared, gen = await asyncio.to_thread(self._begin, messages, kwargs)  # may load the SLM
        return self._chat_response(prepared, await self.engine.agenerate(prepared.prompt_ids, gen))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        prepared, gen = self._begin(messages, kwargs)

        def stream() -> ChatResponseGen:
            builder = _StreamBuilder(prepared)
            generation = self.engine.stream(prepared.prompt_ids, gen)
            for event in generation:
                if (chunk := builder.chunk(event)) is not None:
                    yield chunk
            assert generation.result is not None
            yield builder.final(self._chat_response(prepared, generation.result))

        return stream()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        prepared, gen = await asyncio.to_thread(self._begin, messages, kwargs)

        async def stream() -> ChatResponseAsyncGen:
            builder = _StreamBuilder(prepared)
            generation = self.engine.astream(prepared.prompt_ids, gen)
            async for event in generation:
                if (chunk := builder.chunk(event)) is not None:
                    yield chunk
            assert generation.result is not None
            yield builder.final(self._chat_response(prepared, generation.result))

        return stream()

    # -- complete ---------------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        prepared, gen = self._begin(self._prompt_messages(prompt), kwargs)
        return self._completion_response(prepared, self.engine.generate(prepared.prompt_ids, gen))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        prepared, gen = await asyncio.to_thread(self._begin, self._prompt_messages(prompt), kwargs)
        return self._completion_response(prepared, await self.engine.agenerate(prepared.prompt_ids, gen))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        prepared, gen = self._begin(self._prompt_messages(prompt), kwargs)

        def stream() -> CompletionResponseGen:
            builder = _StreamBuilder(prepared)
            generation = self.engine.stream(prepared.prompt_ids, gen)
            for event in generation:
                if (chunk := builder.chunk(event)) is not None:
                    yield _as_completion(chunk)
            assert generation.result is not None
            yield _as_completion(builder.final(self._chat_response(prepared, generation.result)))

        return stream()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        prepared, gen = await asyncio.to_thread(self._begin, self._prompt_messages(prompt), kwargs)

        async def stream() -> CompletionResponseAsyncGen:
            builder = _StreamBuilder(prepared)
            generation = self.engine.astream(prepared.prompt_ids, gen)
            async for event in generation:
                if (chunk := builder.chunk(event)) is not None:
                    yield _as_completion(chunk)
            assert generation.result is not None
            yield _as_completion(builder.final(self._chat_response(prepared, generation.result)))

        return stream()

    # -- function calling ------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Tools as OpenAI function schemas (rendered by the chat template); ``tool_required`` or a named
        ``tool_choice`` forces the call by starting the answer with the tool-call opening."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        return {
            "messages": messages,
            "tools": to_openai_tools(tools) or None,
            "tool_choice": tool_choice,
            "tool_required": tool_required,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[Any],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        if not allow_parallel_tool_calls:  # keep only the first call, as llama-index-llms-openai does
            blocks, seen = [], False
            for block in response.message.blocks:
                if isinstance(block, ToolCallBlock):
                    if seen:
                        continue
                    seen = True
                blocks.append(block)
            response.message.blocks = blocks
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = selections(response.message)
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"Expected at least one tool call, but got none; the model answered {response.message.content!r}. "
                "Pass tool_required=True (or a tool_choice) to force a call."
            )
        return calls


class _StreamBuilder:
    """Turns token events into cumulative ``ChatResponse`` chunks; holds back tool-call text."""

    def __init__(self, prepared: PreparedChat):
        self.prepared = prepared
        self.text = ""
        self.shown = ""

    def chunk(self, event: TokenEvent) -> ChatResponse | None:
        self.text += event.text
        visible = visible_text(self.prepared.forced_prefix + self.text, bool(self.prepared.tools))
        if len(visible) <= len(self.shown):
            return None
        delta, self.shown = visible[len(self.shown):], visible
        return ChatResponse(
            message=assistant_message(visible),
            delta=delta,
            raw={"token_id": event.token_id, "source": event.source, "score": event.score},
        )

    def final(self, response: ChatResponse) -> ChatResponse:
        """The last chunk: the whole message (with tool calls), the usage and the ledger."""
        content = response.message.content or ""
        response.delta = content[len(self.shown):] if content.startswith(self.shown) else ""
        return response


def _extras(raw: dict[str, Any]) -> dict[str, Any]:
    return {LEDGER_KEY: raw[LEDGER_KEY], "finish_reason": raw["finish_reason"], "usage": raw["usage"]}


def _as_completion(chunk: ChatResponse) -> CompletionResponse:
    return CompletionResponse(text=chunk.message.content or "", delta=chunk.delta, raw=chunk.raw,
                              additional_kwargs=chunk.additional_kwargs)
