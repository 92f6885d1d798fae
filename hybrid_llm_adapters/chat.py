"""The one prompt renderer: chat messages (OpenAI dict form) through the SLM's own chat template, and the
parser for the model's tool-call output. Both framework adapters call these and nothing else."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
NAME_OPEN = '{"name": "'  # where a tool call's name starts (tagged or bare)
_ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class ParsedToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def _normalize(message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role not in _ROLES:
        raise ConfigError(f"message role {role!r} is not one of {sorted(_ROLES)}; map it before rendering.")
    out = {"role": role, "content": message.get("content") or ""}
    if isinstance(out["content"], list):  # OpenAI content parts: text only (the SLM reads nothing else)
        parts = []
        for b in out["content"]:
            if isinstance(b, str) or (isinstance(b, dict) and b.get("type", "text") == "text"):
                parts.append(b if isinstance(b, str) else str(b.get("text", "")))
            else:
                kind = b.get("type") if isinstance(b, dict) else type(b).__name__
                raise ConfigError(f"message content holds a {kind!r} part; the SLM takes text only. Fix: remove "
                                  "non-text parts (images, audio, files) or describe them in text.")
        out["content"] = "".join(parts)
    elif not isinstance(out["content"], str):
        raise ConfigError(f"message content is a {type(out['content']).__name__}; pass a string or a list of "
                          "text parts.")
    if message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            fn = call.get("function", call)
            args = fn.get("arguments", {})
            if isinstance(args, str):
                args = json.loads(args or "{}")
            calls.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
        out["tool_calls"] = calls
    if role == "tool" and message.get("name"):
        out["name"] = message["name"]
    return out


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    assistant_prefix: str = "",
) -> list[int]:
    """Token ids of ``messages`` (and ``tools``, OpenAI function schemas) rendered by the chat template,
    ending with the assistant turn's opening and ``assistant_prefix`` (text forced at the answer's start)."""
    if not messages:
        raise ConfigError("messages is empty; pass at least one user message.")
    rendered = tokenizer.apply_chat_template(
        [_normalize(m) for m in messages],
        tools=tools or None,
        add_generation_prompt=True,
        tokenize=False,
    )
    return tokenizer.encode(rendered + assistant_prefix, add_special_tokens=False)


def forced_tool_prefix(tool_choice: str | None, tool_names: list[str], no_argument_tools: frozenset[str] = frozenset()
                       ) -> str:
    """Text that starts the answer so the model must call a tool.

    ``tool_choice``: None/"auto"/"none" (no forcing), "any"/"required" (some tool), or a tool name. A forced
    tool that takes no arguments gets them written too (``{}``): there is nothing for the SLM to decide, and a
    0.5B SLM left to write them has copied the tool's schema instead.
    """
    if tool_choice in (None, "auto", "none"):
        return ""
    if tool_choice in ("any", "required"):
        if len(tool_names) == 1:
            tool_choice = tool_names[0]
        else:
            return f'{TOOL_CALL_OPEN}\n{{"name": "'
    if tool_choice not in tool_names:
        raise ConfigError(f"tool_choice={tool_choice!r} names no bound tool; bound tools: {tool_names}.")
    if tool_choice in no_argument_tools:
        return f'{TOOL_CALL_OPEN}\n{{"name": "{tool_choice}", "arguments": {{}}}}'
    # no space after the colon: the SLM's tokenizer writes ' {"' as one token, and a prompt ending in ' '
    # pushes a small model off that token (seen: Qwen2.5-Coder-0.5B then emits '{}').
    return f'{TOOL_CALL_OPEN}\n{{"name": "{tool_choice}", "arguments":'


def tool_call_from(obj: dict[str, Any]) -> ParsedToolCall:
    """One parsed call object; arguments may come as ``arguments`` or ``parameters``, as a dict or as a JSON
    string (a string that is not JSON is kept whole under ``input``).

    A call whose arguments are the call itself again (``{"name": T, "arguments": {"name": T, "arguments":
    {...}}}``) is unwrapped: after a forced prefix that ends at ``"arguments":``, the 0.5B SLM has been seen to
    write the whole call object once more (LlamaIndex ``structured_predict``)."""
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = {"input": args}
    if (isinstance(args, dict) and set(args) == {"name", "arguments"} and args["name"] == obj["name"]
            and isinstance(args["arguments"], dict)):
        args = args["arguments"]
    return ParsedToolCall(name=str(obj["name"]), arguments=args if isinstance(args, dict) else {})


def parse_tool_calls(text: str) -> tuple[str, list[ParsedToolCall]]:
    """Split model output into plain content and the ``<tool_call>{json}</tool_call>`` blocks in it.

    A block cut off by the token limit, or without its closing tag, is parsed if its JSON is complete.
    """
    calls: list[ParsedToolCall] = []
    decoder = json.JSONDecoder()
    content_parts: list[str] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            content_parts.append(text[pos:])
            break
        content_parts.append(text[pos:start])
        body_start = text.find("{", start)
        if body_start < 0:
            break
        try:
            obj, end = decoder.raw_decode(text, body_start)
        except json.JSONDecodeError:
            # small SLMs often close the arguments but not the call object: '{"name": .., "arguments": {..}'
            close_at = text.find(TOOL_CALL_CLOSE, body_start)
            stop_at = close_at if close_at >= 0 else len(text)
            try:
                obj = json.loads(text[body_start:stop_at].rstrip() + "}")
            except json.JSONDecodeError:
                break
            end = stop_at
        if isinstance(obj, dict) and "name" in obj:
            calls.append(tool_call_from(obj))
        close = text.find(TOOL_CALL_CLOSE, end)
        pos = close + len(TOOL_CALL_CLOSE) if close >= 0 and text[end:close].strip() == "" else end
    content = "".join(content_parts).strip() if calls else "".join(content_parts)
    return content, calls
