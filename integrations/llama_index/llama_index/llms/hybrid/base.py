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
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    model_validator,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from hybrid_llm_adapters import CloudConfig, EngineConfig, HybridEngine, PriceTable
from hybrid_llm_adapters.chat_api import ChatChunk, ChatOutput, ChatRequest
from hybrid_llm_adapters.config import (
    DEFAULT_SLM,
    CloudMode,
    FallbackPolicy,
    RouterKind,
    refuse_unknown_settings,
)
from hybrid_llm_adapters.engine import get_engine
from hybrid_llm_adapters.settings import PER_CALL, HybridSettings

from .events import HybridLLMUsageEvent
from .utils import (
    LEDGER_KEY,
    assistant_message,
    raw_response,
    selections,
    to_openai_messages,
    to_openai_tools,
)

logger = logging.getLogger(__name__)
dispatcher = instrument.get_dispatcher(__name__)

_TOOL_KEYS = ("tools", "tool_choice", "tool_required", "allow_parallel_tool_calls")


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
            router="entropy", threshold=0.27,           # cloud when the SLM's entropy > 0.27 nats
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
    timeout: float = Field(120.0, gt=0, description="seconds per cloud HTTP request")
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
    generation_options: dict[str, Any] = Field(default_factory=dict, description="further GenerationConfig "
                                               "fields, e.g. {'draft_tokens': 8}")
    router_options: dict[str, Any] = Field(default_factory=dict, description="further RouterConfig fields, e.g. "
                                           "{'target_activation': 0.2}")
    cloud_options: dict[str, Any] = Field(default_factory=dict, description="further CloudConfig fields, e.g. "
                                          "{'logprobs': 10}")
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

    @model_validator(mode="after")
    def _valid_settings(self) -> Any:
        self.settings()  # the core's settings model checks every value (one set of rules for all entry points)
        return self

    @classmethod
    def class_name(cls) -> str:
        return "HybridChatModel"

    # -- configuration ------------------------------------------------------------------------------
    def settings(self) -> HybridSettings:
        """This model's settings in the core's one settings model (shared with the LangChain model and the
        CLIs: one meaning and one default per setting)."""
        return HybridSettings.of(self)

    @property
    def engine_config(self) -> EngineConfig:
        """The core config built from this model's fields (equal fields => equal config => shared engine)."""
        return self.settings().engine_config()

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

    # -- one request, shared by every path ----------------------------------------------------------
    def _request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatRequest:
        """The core's chat request for LlamaIndex messages and call arguments (the only translation here)."""
        calls = {k: kwargs[k] for k in PER_CALL if kwargs.get(k) is not None}
        if kwargs.get("max_new_tokens") is not None:
            calls.setdefault("max_tokens", kwargs["max_new_tokens"])
        ignored = set(kwargs) - set(PER_CALL) - set(_TOOL_KEYS) - {"max_new_tokens"}
        if ignored:
            logger.debug("HybridChatModel ignores call arguments %s", sorted(ignored))
        tools = kwargs.get("tools") or None
        if tools and not isinstance(tools[0], dict):  # BaseTool objects passed straight to chat()
            tools = to_openai_tools(tools)
        parallel = kwargs.get("allow_parallel_tool_calls")
        return ChatRequest(self.engine, to_openai_messages(messages), self.settings().generation_config(**calls),
                           tools, kwargs.get("tool_choice"), parallel_tool_calls=parallel,
                           tool_required=bool(kwargs.get("tool_required")))

    def _finish(self, output: ChatOutput) -> dict[str, Any]:
        raw = raw_response(output, self.model_name)
        dispatcher.event(HybridLLMUsageEvent(
            model_name=self.model_name, ledger=output.result.ledger, finish_reason=output.finish_reason,
            tool_calls=[c.name for c in output.tool_calls],
        ))
        return raw

    def _chat_response(self, output: ChatOutput) -> ChatResponse:
        raw = self._finish(output)
        return ChatResponse(message=assistant_message(output.content, output.tool_calls), raw=raw,
                            additional_kwargs=_extras(raw))

    def _completion_response(self, output: ChatOutput) -> CompletionResponse:
        raw = self._finish(output)
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
        return self._chat_response(self._request(messages, kwargs).run())

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = await asyncio.to_thread(self._request, messages, kwargs)  # may load the SLM
        return self._chat_response(await request.arun())

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        request = self._request(messages, kwargs)

        def stream() -> ChatResponseGen:
            builder = _StreamBuilder()
            for piece in request.stream():
                yield builder.chunk(piece, self)

        return stream()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        request = await asyncio.to_thread(self._request, messages, kwargs)

        async def stream() -> ChatResponseAsyncGen:
            builder = _StreamBuilder()
            async for piece in request.astream():
                yield builder.chunk(piece, self)

        return stream()

    # -- complete ---------------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion_response(self._request(self._prompt_messages(prompt), kwargs).run())

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        request = await asyncio.to_thread(self._request, self._prompt_messages(prompt), kwargs)
        return self._completion_response(await request.arun())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        request = self._request(self._prompt_messages(prompt), kwargs)

        def stream() -> CompletionResponseGen:
            builder = _StreamBuilder()
            for piece in request.stream():
                yield _as_completion(builder.chunk(piece, self))

        return stream()

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        request = await asyncio.to_thread(self._request, self._prompt_messages(prompt), kwargs)

        async def stream() -> CompletionResponseAsyncGen:
            builder = _StreamBuilder()
            async for piece in request.astream():
                yield _as_completion(builder.chunk(piece, self))

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
            "allow_parallel_tool_calls": allow_parallel_tool_calls,
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
    """Turns the core's ``ChatChunk``s into cumulative ``ChatResponse`` chunks: the content so far, and the tool
    calls so far as ``ToolCallBlock``s whose arguments grow as they stream (a JSON prefix until complete)."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: dict[int, dict[str, Any]] = {}

    def chunk(self, piece: ChatChunk, llm: HybridChatModel) -> ChatResponse:
        self.text += piece.text
        for d in piece.tool_calls:
            call = self.calls.setdefault(d.index, {"id": d.id, "name": d.name, "args": ""})  # type: ignore[arg-type]
            call["args"] += d.args or ""
        if piece.output is not None:  # the last chunk: the whole message (parsed calls), usage and ledger
            response = llm._chat_response(piece.output)
            response.delta = piece.text
            return response
        blocks: list[Any] = [TextBlock(text=self.text)] if self.text or not self.calls else []
        blocks += [ToolCallBlock(tool_call_id=c["id"], tool_name=c["name"], tool_kwargs=c["args"])
                   for c in self.calls.values()]
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks), delta=piece.text,
                            raw={"sources": piece.sources})


def _extras(raw: dict[str, Any]) -> dict[str, Any]:
    return {LEDGER_KEY: raw[LEDGER_KEY], "finish_reason": raw["finish_reason"], "usage": raw["usage"]}


def _as_completion(chunk: ChatResponse) -> CompletionResponse:
    return CompletionResponse(text=chunk.message.content or "", delta=chunk.delta, raw=chunk.raw,
                              additional_kwargs=chunk.additional_kwargs)
