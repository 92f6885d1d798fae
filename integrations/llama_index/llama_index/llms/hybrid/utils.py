"""Translation between LlamaIndex types and the core's OpenAI-style dicts, in one place.

Messages go in as OpenAI chat dicts (the core renders them with the SLM's own chat template); results come
out as ``ChatMessage`` with ``TextBlock`` / ``ToolCallBlock`` blocks, LlamaIndex 0.14's native form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ContentBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms.llm import ToolSelection

from hybrid_llm_adapters import UsageLedger
from hybrid_llm_adapters.chat import ParsedToolCall
from hybrid_llm_adapters.chat_api import ChatOutput

LEDGER_KEY = "hybrid_ledger"
"""Key of the request's ``UsageLedger`` (as a dict) in ``ChatResponse.additional_kwargs`` and ``raw``."""

_ROLE_MAP = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def _text_of(blocks: Sequence[ContentBlock]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, (ToolCallBlock, ThinkingBlock)):
            continue  # tool calls are rendered from their own field; thinking is not re-sent
        else:
            raise ValueError(  # noqa: TRY004 - LlamaIndex raises ValueError for unsupported blocks
                f"HybridChatModel takes text only; got a {type(block).__name__}. "
                "Remove non-text blocks or describe them in text."
            )
    return "\n".join(parts)


def _tool_calls_of(message: ChatMessage) -> list[dict[str, Any]]:
    """Tool calls of an assistant message: ToolCallBlocks, or OpenAI dicts in additional_kwargs (legacy)."""
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, ToolCallBlock):
            args = block.tool_kwargs
            if isinstance(args, str):
                args = json.loads(args or "{}")
            calls.append({"id": block.tool_call_id, "type": "function",
                          "function": {"name": block.tool_name, "arguments": args}})
    if not calls:
        for call in message.additional_kwargs.get("tool_calls") or []:
            if isinstance(call, ToolSelection):
                calls.append({"id": call.tool_id, "type": "function",
                              "function": {"name": call.tool_name, "arguments": call.tool_kwargs}})
            else:  # OpenAI dict or object
                data = call if isinstance(call, dict) else call.model_dump()
                calls.append(data)
    return calls


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex messages as OpenAI chat dicts, the core's input format."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = _ROLE_MAP.get(message.role)
        if role is None:
            raise ValueError(f"message role {message.role!r} has no chat-template role; use user/assistant/system/tool.")
        entry: dict[str, Any] = {"role": role, "content": _text_of(message.blocks)}
        if role == "assistant":
            calls = _tool_calls_of(message)
            if calls:
                entry["tool_calls"] = calls
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if message.additional_kwargs.get(key):
                    entry[key] = message.additional_kwargs[key]
        out.append(entry)
    return out


def to_openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI function schemas of LlamaIndex tools (``BaseTool``)."""
    return [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]


def usage_dict(ledger: UsageLedger) -> dict[str, int]:
    """OpenAI-style usage, the form LlamaIndex's ``TokenCountingHandler`` reads from ``raw["usage"]``."""
    return {
        "prompt_tokens": ledger.prompt_tokens,
        "completion_tokens": ledger.generated_tokens,
        "total_tokens": ledger.prompt_tokens + ledger.generated_tokens,
    }


def raw_response(output: ChatOutput, model: str) -> dict[str, Any]:
    """An OpenAI-like raw body: usage, finish_reason, the model and the hybrid ledger."""
    return {
        "model": model,
        "usage": usage_dict(output.result.ledger),
        "finish_reason": output.finish_reason,
        LEDGER_KEY: output.result.ledger.model_dump(),
    }


def tool_call_blocks(calls: Sequence[ParsedToolCall]) -> list[ToolCallBlock]:
    return [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in calls]


def assistant_message(content: str, calls: Sequence[ParsedToolCall] = ()) -> ChatMessage:
    blocks: list[ContentBlock] = []
    if content or not calls:
        blocks.append(TextBlock(text=content))
    blocks.extend(tool_call_blocks(calls))
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)


def selections(message: ChatMessage) -> list[ToolSelection]:
    """``ToolSelection``s of the ToolCallBlocks in ``message``."""
    return [
        ToolSelection(
            tool_id=block.tool_call_id or "",
            tool_name=block.tool_name,
            tool_kwargs=_kwargs(block.tool_kwargs),
        )
        for block in message.blocks
        if isinstance(block, ToolCallBlock)
    ]


def _kwargs(value: Any) -> dict[str, Any]:
    """A call's arguments: a dict, or (while streaming) JSON text that may still be incomplete."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value or "{}")
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
