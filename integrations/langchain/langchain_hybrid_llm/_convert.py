"""Translation between LangChain objects and the core's OpenAI-style dicts.

Nothing here renders a prompt: messages become plain dicts and go to the core's ``ChatRequest`` (the one
renderer, the SLM's own chat template).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

_CHAT_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "ai": "assistant",
               "tool": "tool", "developer": "system"}


# blocks that restate what other fields carry (tool calls) or that are not re-sent (reasoning): dropped
_DROPPED_BLOCKS = {"tool_use", "tool_call", "tool_call_chunk", "function_call", "thinking", "reasoning"}


def _text_of(content: str | list[Any]) -> str:
    """The text of a message's content. Media blocks (images, audio, files) are refused: the SLM reads text
    only, and silently dropping them would answer a different question."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in _DROPPED_BLOCKS:
            continue
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ValueError(f"HybridChatModel takes text content only; got a {kind!r} block. Fix: remove "
                             "non-text blocks (images, audio, files) or describe them in text.")
    return "".join(parts)


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> OpenAI-style dicts for ``prepare_chat``."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_of(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_of(m.content)})
        elif isinstance(m, AIMessage):
            d: dict[str, Any] = {"role": "assistant", "content": _text_of(m.content)}
            if m.tool_calls:
                d["tool_calls"] = [
                    {"id": tc.get("id"), "type": "function",
                     "function": {"name": tc["name"], "arguments": tc.get("args") or {}}}
                    for tc in m.tool_calls
                ]
            out.append(d)
        elif isinstance(m, ToolMessage):
            content = _text_of(m.content)
            if m.status == "error" and not content.lower().startswith("error"):
                content = f"Error: {content}"
            d = {"role": "tool", "content": content, "tool_call_id": m.tool_call_id}
            if m.name:
                d["name"] = m.name
            out.append(d)
        elif isinstance(m, FunctionMessage):
            out.append({"role": "tool", "content": _text_of(m.content), "name": m.name})
        elif isinstance(m, ChatMessage):
            role = _CHAT_ROLES.get(m.role)
            if role is None:
                raise ValueError(f"ChatMessage role {m.role!r} has no counterpart in the chat template; "
                                 f"use one of {sorted(_CHAT_ROLES)}.")
            out.append({"role": role, "content": _text_of(m.content)})
        else:
            raise TypeError(f"message type {type(m).__name__} is not supported; use System/Human/AI/Tool "
                            "messages.")
    return out
