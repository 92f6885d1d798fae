"""Chat requests on top of the engine: the one chat layer both adapters translate to and from, so that the
same messages give the same text, tool calls and ledger in LangChain and LlamaIndex.

``ChatRequest`` owns a chat turn: rendering (``prepare_chat``: the SLM's chat template, tools, the forced
tool-call prefix), the decode settings a chat adds (stops, decision points, the bound names for the in-loop
tool-name choice), streaming (``ChatChunk``: content and tool-call deltas from one incremental parser), the
final answer (``ChatOutput``) and the guard against repeated tool calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .chat import (
    TOOL_CALL_CLOSE,
    ParsedToolCall,
    forced_tool_prefix,
    parse_tool_calls,
    render_chat,
)
from .config import TOOL_TURN_DECISION_TOKENS, GenerationConfig
from .errors import ConfigError
from .events import GenerationResult, TokenEvent
from .tool_stream import Delta, ToolCallStreamParser, parse_untagged_tool_calls


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


@dataclass
class ChatChunk:
    """A streamed piece of the answer: content text, tool-call deltas, and the sources of the tokens behind
    it. The last chunk of a stream carries what the parser still held and the whole answer (``output``)."""

    text: str = ""
    tool_calls: list[Delta] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    output: ChatOutput | None = None  # set on the last chunk only

    @property
    def last(self) -> bool:
        return self.output is not None


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


def resolve_tool_choice(tool_choice: Any, names: list[str], required: bool = False) -> str | None:
    """Every framework's ``tool_choice`` form -> the core's (None, "auto", "none", "any" or a bound name).

    Takes None/False, True, "auto", "none", "any", "required", a tool name, or OpenAI's
    ``{"type": "function", "function": {"name": ...}}``; ``required`` (LlamaIndex's ``tool_required``) turns an
    open choice into "any"."""
    if tool_choice is None or tool_choice is False:
        tool_choice = None
    elif tool_choice is True:
        tool_choice = "any"
    elif isinstance(tool_choice, dict):
        tool_choice = tool_choice.get("function", tool_choice).get("name")
        if not tool_choice:
            raise ConfigError("tool_choice names no function; pass a tool name, 'any', 'auto' or 'none'.")
    elif not isinstance(tool_choice, str):
        raise ConfigError(f"tool_choice={tool_choice!r} is not supported; pass a tool name, 'any', 'auto' or "
                          "'none'.")
    if tool_choice == "required" or (required and tool_choice in (None, "auto")):
        return "any"
    if tool_choice not in (None, "auto", "none", "any") and tool_choice not in names:
        raise ConfigError(f"tool_choice={tool_choice!r} names no bound tool; bound tools: {names}.")
    return tool_choice


def prepare_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                 tool_choice: str | None = None) -> PreparedChat:
    """Render a chat request. ``tools`` are OpenAI function schemas ({"type": "function", "function": {...}}).

    ``tool_choice="none"`` means no call, as in OpenAI's API: the tools are not offered to the model and its
    answer is never parsed for calls."""
    if tool_choice == "none":
        tools = None
    prefix = forced_tool_prefix(tool_choice, tool_names(tools), no_argument_tools(tools)) if tools else ""
    ids = render_chat(tokenizer, messages, tools, assistant_prefix=prefix)
    return PreparedChat(ids, prefix, list(tools or []))


def with_decision_points(prepared: PreparedChat, gen: GenerationConfig) -> GenerationConfig:
    """The request's decode settings with its decision points resolved: when tools are offered and the choice
    is open, the turn's first ``TOOL_TURN_DECISION_TOKENS`` tokens (a tool call or an answer) are the cloud's,
    written in one call, whatever the router says.

    Seen on the real pair: with a lookup tool's result in context, the SLM confidently called the same tool
    again, turn after turn, where the cloud answers from the result; and with only the first token from the
    cloud ("To"), the SLM wrote the rest of the opening ("To compute exactly <result>, you can use multiply")
    and multiplied the result again.
    """
    if gen.decision_tokens is not None:
        return gen
    open_choice = bool(prepared.tools) and not prepared.forced_prefix
    return gen.model_copy(update={"decision_tokens": TOOL_TURN_DECISION_TOKENS if open_choice else 0})


def finish_chat(prepared: PreparedChat, result: GenerationResult) -> ChatOutput:
    """Content and tool calls of a finished request (tool calls only parsed when tools were offered; without
    any ``<tool_call>`` tags, a JSON object naming a bound tool, bare or fenced, counts as a call)."""
    full = prepared.forced_prefix + result.text
    if not prepared.tools:
        return ChatOutput(result.text, [], result)
    content, calls = parse_tool_calls(full)
    if not calls:
        content, calls = parse_untagged_tool_calls(full, tool_names(prepared.tools))
    return ChatOutput(content, calls, result)


def answered_calls(messages: list[dict[str, Any]]) -> set[str]:
    """Keys (name + arguments) of the tool calls in ``messages`` that a later tool message answered."""
    answered, pending = set(), []
    for m in messages:
        if m.get("role") == "assistant":
            pending = [_call_key(c.get("function", c)) for c in m.get("tool_calls") or []]
        elif m.get("role") == "tool" and pending:
            answered.update(pending)
    return answered


def _call_key(fn: dict[str, Any]) -> str:
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except json.JSONDecodeError:
            pass
    return json.dumps([fn.get("name"), args], sort_keys=True, ensure_ascii=False)


ANSWER_FROM_RESULTS = "Answer my question from the tool results above, in plain words."


class ChatRequest:
    """One chat turn on an engine. ``run()`` / ``arun()`` give the whole answer; ``stream()`` /
    ``astream()`` give ``ChatChunk``s, then the answer in the stream's ``result``.

    ``parallel_tool_calls=False`` (and any forced call) ends the answer after its first call. When the answer
    repeats a tool call the messages already answered (same name, same arguments), the turn is decoded again
    with the tools withheld and a closing request to answer from the results, so the model answers from the
    result it has: seen on the real pair, the SLM and
    the cloud alike called a lookup tool again and again with its result in context. The ledger counts it
    (``repeated_tool_calls``) and includes both decodes.
    """

    def __init__(self, engine: Any, messages: list[dict[str, Any]], gen: GenerationConfig,
                 tools: list[dict[str, Any]] | None = None, tool_choice: Any = None,
                 parallel_tool_calls: bool | None = None, tool_required: bool = False):
        self.engine = engine
        self.messages = messages
        self.tool_choice = resolve_tool_choice(tool_choice, tool_names(tools), tool_required) if tools else None
        self.prepared = prepare_chat(engine.tokenizer, messages, tools, self.tool_choice)
        self.parallel_tool_calls = parallel_tool_calls
        self.gen = self._settings(self.prepared, gen)
        self.answered = answered_calls(messages) if self.prepared.tools and self.tool_choice != "none" else set()

    def _settings(self, prepared: PreparedChat, gen: GenerationConfig) -> GenerationConfig:
        stops = list(gen.stop)
        if prepared.tools and (prepared.forced_prefix or self.parallel_tool_calls is False):
            stops.append(TOOL_CALL_CLOSE)  # one call, then the answer is complete
        update = {"stop": stops, "tool_names": tool_names(prepared.tools)}
        return with_decision_points(prepared, gen.model_copy(update=update))

    def _repeats(self, output: ChatOutput) -> bool:
        return any(_call_key({"name": c.name, "arguments": c.arguments}) in self.answered for c in output.tool_calls)

    def _without_tools(self) -> tuple[PreparedChat, GenerationConfig]:
        """The turn again, tools withheld and one closing user turn that asks for the answer (seen on the real
        pair: without it the SLM wrote the same call again as plain JSON text; with it, SLM, cloud and hybrid
        answered from the result)."""
        messages = [*self.messages, {"role": "user", "content": ANSWER_FROM_RESULTS}]
        prepared = prepare_chat(self.engine.tokenizer, messages, None, "none")
        return prepared, self._settings(prepared, self.gen.model_copy(update={"decision_tokens": None}))

    @staticmethod
    def _merged(first: GenerationResult, output: ChatOutput) -> ChatOutput:
        """The answer of the second decode, with the first decode's usage in its ledger."""
        ledger = (first.ledger + output.result.ledger).model_copy(update={
            "requests": 1, "repeated_tool_calls": first.ledger.repeated_tool_calls + 1,
            "cloud_only_cost_usd": output.result.ledger.cloud_only_cost_usd})
        output.result.ledger = ledger
        return output

    # -- whole answers ----------------------------------------------------------------------------------
    def run(self) -> ChatOutput:
        stream = self.stream()  # one path for whole and streamed answers (the repeated-call guard included)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    async def arun(self) -> ChatOutput:
        stream = self.astream()
        async for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    # -- streaming --------------------------------------------------------------------------------------
    def stream(self) -> ChatStream:
        return ChatStream(self)

    def astream(self) -> Any:
        """Async form of :meth:`stream` (the decode runs in a worker thread); ``result`` after the end."""
        from .aio import AsyncGeneration

        return AsyncGeneration(self.stream())


class ChatStream:
    """Iterator of ``ChatChunk``; ``result`` (the ``ChatOutput``) is set once it is exhausted."""

    def __init__(self, request: ChatRequest):
        self.request = request
        self.result: ChatOutput | None = None
        self._generation: Any = None
        self._chunks = self._run()

    def __iter__(self) -> Iterator[ChatChunk]:
        return self._chunks

    def close(self) -> None:
        """Stop early (a cancelled stream): the decode's SLM row leaves the batch at once."""
        if self._generation is not None:
            self._generation.close()
        self._chunks.close()

    def _decode(self, prepared: PreparedChat, gen: GenerationConfig, hold_calls: bool
                ) -> Iterator[ChatChunk | ChatOutput]:
        """One decode as chunks, then its ``ChatOutput``; with ``hold_calls`` tool-call deltas are kept until
        the end (the answer may be a repeated call that is decoded again)."""
        parser = ToolCallStreamParser(tool_names(prepared.tools)) if prepared.tools else None
        held = parser.feed(prepared.forced_prefix) if parser else []
        sources: list[str] = []
        self._generation = self.request.engine.stream(prepared.prompt_ids, gen)
        for event in self._generation:
            if not event.final_flush:
                sources.append(event.source)
            deltas = held + _feed(parser, event)
            held = [d for d in deltas if d.index is not None] if hold_calls else []
            text = "".join(d.text for d in deltas if d.index is None)
            calls = [] if hold_calls else [d for d in deltas if d.index is not None]
            if text or calls:
                yield ChatChunk(text, calls, sources)
                sources = []
        result = self._generation.result
        assert result is not None
        output = finish_chat(prepared, result)
        tail = held + (parser.flush() if parser else [])
        streamed = parser.calls if parser else 0
        for i, call in enumerate(output.tool_calls[streamed:], start=streamed):  # a call the parser missed
            tail.append(Delta(index=i, id=call.id, name=call.name,
                              args=json.dumps(call.arguments, ensure_ascii=False)))
        self._tail = ChatChunk("".join(d.text for d in tail if d.index is None),
                               [d for d in tail if d.index is not None], sources)
        yield output

    def _run(self) -> Iterator[ChatChunk]:
        req = self.request
        output: ChatOutput | None = None
        for item in self._decode(req.prepared, req.gen, hold_calls=bool(req.answered)):
            if isinstance(item, ChatOutput):
                output = item
            else:
                yield item
        assert output is not None
        if req._repeats(output):
            first = output.result
            prepared, gen = req._without_tools()
            for item in self._decode(prepared, gen, hold_calls=False):
                if isinstance(item, ChatOutput):
                    output = req._merged(first, item)
                else:
                    yield item
        self.result = self._tail.output = output
        yield self._tail


def _feed(parser: ToolCallStreamParser | None, event: TokenEvent) -> list[Delta]:
    if parser is not None:
        return parser.feed(event.text)
    return [Delta(text=event.text)] if event.text else []
