"""Chat requests on top of the engine, shared by every adapter so that the same messages give the same
text, tool calls and ledger in LangChain and LlamaIndex.

``prepare_chat`` renders messages (and tools) through the SLM's chat template, forcing a tool call when
``tool_choice`` asks for one; ``finish_chat`` parses the answer into content and tool calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .chat import ParsedToolCall, forced_tool_prefix, parse_bare_tool_call, parse_tool_calls, render_chat
from .config import GenerationConfig
from .events import GenerationResult


@dataclass
class PreparedChat:
    prompt_ids: list[int]
    forced_prefix: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ChatOutput:
    content: str
    tool_calls: list[ParsedToolCall]
    result: GenerationResult

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else self.result.finish_reason


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [t.get("function", t)["name"] for t in tools or []]


def no_argument_tools(tools: list[dict[str, Any]] | None) -> frozenset[str]:
    """Names of the tools whose parameters schema declares no properties."""
    out = set()
    for tool in tools or []:
        fn = tool.get("function", tool)
        if not (fn.get("parameters") or {}).get("properties"):
            out.add(fn["name"])
    return frozenset(out)


def prepare_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                 tool_choice: str | None = None) -> PreparedChat:
    """Render a chat request. ``tools`` are OpenAI function schemas ({"type": "function", "function": {...}}).

    ``tool_choice="none"`` means no call, as in OpenAI's API: the tools are not offered to the model and its
    answer is never parsed for calls (both adapters get this from here)."""
    if tool_choice == "none":
        tools = None
    prefix = forced_tool_prefix(tool_choice, tool_names(tools), no_argument_tools(tools)) if tools else ""
    ids = render_chat(tokenizer, messages, tools, assistant_prefix=prefix)
    return PreparedChat(ids, prefix, list(tools or []))


def with_decision_points(prepared: PreparedChat, gen: GenerationConfig) -> GenerationConfig:
    """The request's decode settings with its decision points resolved: when tools are offered and the choice
    is open, the first token of the turn (a tool call or an answer) is the cloud's, whatever the router says.

    Seen on the real pair: with a lookup tool's result in context, the SLM confidently called the same tool
    again, turn after turn, where the cloud answers from the result.
    """
    if gen.decision_tokens is not None:
        return gen
    open_choice = bool(prepared.tools) and not prepared.forced_prefix
    return gen.model_copy(update={"decision_tokens": 1 if open_choice else 0})


def finish_chat(prepared: PreparedChat, result: GenerationResult) -> ChatOutput:
    """Content and tool calls of a finished request (tool calls only parsed when tools were offered; an
    answer that is just ``{"name": <bound tool>, "arguments": ...}`` without the tags counts as a call)."""
    full = prepared.forced_prefix + result.text
    if not prepared.tools:
        return ChatOutput(result.text, [], result)
    content, calls = parse_tool_calls(full)
    if not calls:  # a call without its <tool_call> tags
        content, calls = parse_bare_tool_call(full, tool_names(prepared.tools))
    return ChatOutput(content, calls, result)
