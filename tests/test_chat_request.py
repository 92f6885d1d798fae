"""The core chat layer (``ChatRequest``) on the real decode loop with a tiny random SLM: the in-loop tool-name
choice, streaming that matches the whole answer, and the guard against repeated tool calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_llm_adapters import GenerationConfig, HybridEngine
from hybrid_llm_adapters.chat import NAME_OPEN, TOOL_CALL_OPEN
from hybrid_llm_adapters.chat_api import ANSWER_FROM_RESULTS, ChatRequest, answered_calls, resolve_tool_choice
from hybrid_llm_adapters.decoding.tool_names import NAME_CLOSE, ToolNameChoice
from hybrid_llm_adapters.errors import ConfigError
from hybrid_llm_adapters.events import GenerationResult
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import AlwaysLocalRouter


def fn(name: str, **props: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"the {name} tool", "parameters": {
        "type": "object", "properties": {k: {"type": v} for k, v in props.items()}, "required": list(props)}}}


TOOLS = [fn("get_weather", city="string"), fn("get_time", zone="string"), fn("add", a="integer", b="integer")]
NAMES = ["get_weather", "get_time", "add"]


@pytest.fixture()
def engine(tiny_model_dir: Path) -> HybridEngine:
    return HybridEngine(load_local_model(tiny_model_dir), AlwaysLocalRouter())


def test_name_choice_is_due_only_where_a_call_name_opens(engine: HybridEngine) -> None:
    tok = engine.tokenizer
    prompt = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    choice = ToolNameChoice(NAMES, tok, len(prompt))

    def due(text: str) -> str | None:
        return choice.due(prompt + tok.encode(text, add_special_tokens=False))

    assert due(f"{TOOL_CALL_OPEN}\n{NAME_OPEN}") == ""
    assert due(f"Sure.\n{TOOL_CALL_OPEN}\n{NAME_OPEN}get_") == "get_"  # a partial name: finish a bound one
    assert due(NAME_OPEN) == ""  # a bare call at the start of the answer
    assert due(f'{TOOL_CALL_OPEN}\n{NAME_OPEN}get_time", "arguments": {{') is None  # written already
    assert due(f"{TOOL_CALL_OPEN}\n{NAME_OPEN}hello") is None  # none of ours: the model's own text stands
    assert due(f'Use JSON like {NAME_OPEN}') is None  # ordinary text, not a call
    assert ToolNameChoice([], tok, len(prompt)).due(prompt + tok.encode(NAME_OPEN)) is None


def test_forced_any_call_gets_a_bound_name_in_one_decode(engine: HybridEngine) -> None:
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    req = ChatRequest(engine, messages, GenerationConfig(max_new_tokens=40), TOOLS, tool_choice="any")
    assert req.prepared.forced_prefix.endswith(NAME_OPEN)  # the prompt ends where the name opens
    calls = []
    original = engine.stream

    def counting(prompt_ids, config=None, router=None):  # type: ignore[no-untyped-def]
        calls.append(list(prompt_ids))
        return original(prompt_ids, config, router)

    engine.stream = counting  # type: ignore[method-assign]
    out = req.run()
    assert len(calls) == 1 and calls[0] == req.prepared.prompt_ids  # one decode: the prompt prefilled once
    name = out.result.text.split('"', 1)[0]
    assert name in NAMES and out.result.text.startswith(name + NAME_CLOSE)
    assert out.result.ledger.local_tokens == out.result.ledger.generated_tokens  # the chosen name is local


def test_name_choice_keeps_the_slm_state(engine: HybridEngine) -> None:
    tok = engine.tokenizer
    prompt = engine.render([{"role": "user", "content": "hi"}]) + tok.encode(f"{TOOL_CALL_OPEN}\n{NAME_OPEN}")
    state = engine.local.new_state(list(prompt))
    try:
        before, _ = state.forward()
        ids = ToolNameChoice(NAMES, tok, len(prompt)).choose(state, "")
        assert state.ids == prompt  # every scored name rolled back
        after, _ = state.forward()
        assert (before == after).all()
    finally:
        state.close()
    assert tok.decode(ids).split('"', 1)[0] in NAMES and tok.decode(ids).endswith(NAME_CLOSE)


@pytest.mark.parametrize("tool_choice", [None, "none"])
def test_stream_gives_the_same_answer_as_run(engine: HybridEngine, tool_choice: str | None) -> None:
    messages = [{"role": "user", "content": "add 2 and 3"}]
    gen = GenerationConfig(max_new_tokens=20)
    tools = TOOLS if tool_choice else None
    whole = ChatRequest(engine, messages, gen, tools, tool_choice).run()
    stream = ChatRequest(engine, messages, gen, tools, tool_choice).stream()
    chunks = list(stream)
    assert chunks[-1].output is stream.result and sum(c.last for c in chunks) == 1
    assert stream.result.result.text == whole.result.text and whole.result.text
    assert "".join(c.text for c in chunks) == whole.content
    assert sum(len(c.sources) for c in chunks) == whole.result.ledger.generated_tokens


def test_resolve_tool_choice_takes_every_framework_form() -> None:
    assert resolve_tool_choice(None, NAMES) is None and resolve_tool_choice(False, NAMES) is None
    assert resolve_tool_choice(True, NAMES) == resolve_tool_choice("required", NAMES) == "any"
    assert resolve_tool_choice(None, NAMES, required=True) == "any"  # LlamaIndex's tool_required
    assert resolve_tool_choice({"type": "function", "function": {"name": "add"}}, NAMES) == "add"
    with pytest.raises(ConfigError, match="names no bound tool"):
        resolve_tool_choice("div", NAMES)


def history(args: dict) -> list[dict]:
    return [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}]},
        {"role": "tool", "content": "Oslo: 4 C, light rain.", "tool_call_id": "c1"},
    ]


def test_answered_calls_are_keyed_by_name_and_arguments() -> None:
    keys = answered_calls(history({"city": "Oslo"}))
    assert len(keys) == 1
    assert answered_calls(history({"city": "Oslo"})[:2]) == set()  # called but not answered yet


class ScriptedStream:
    """Wraps the engine: the first decode's text is replaced by a fixed answer (a repeated call), later
    decodes run for real, so the guard's second decode is the real loop."""

    def __init__(self, engine: HybridEngine, first: str):
        self.engine, self.first, self.prompts = engine, first, []

    def __call__(self, prompt_ids, config=None, router=None):  # type: ignore[no-untyped-def]
        self.prompts.append((list(prompt_ids), config))
        gen = HybridEngine.stream(self.engine, prompt_ids, config, router)
        if len(self.prompts) > 1:
            return gen
        real = gen._events

        def events():  # type: ignore[no-untyped-def]
            for _ in real:
                pass
            r = gen.result
            gen.result = GenerationResult(self.first, r.token_ids, r.events, r.ledger, "stop", r.prompt_token_ids)
            return
            yield

        gen._events = events()
        return gen


@pytest.mark.parametrize("streaming", [False, True])
def test_a_repeated_tool_call_is_decoded_again_without_tools(engine: HybridEngine, streaming: bool) -> None:
    repeat = f'{TOOL_CALL_OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}\n</tool_call>'
    scripted = ScriptedStream(engine, repeat)
    engine.stream = scripted  # type: ignore[method-assign]
    req = ChatRequest(engine, history({"city": "Oslo"}), GenerationConfig(max_new_tokens=6), TOOLS)
    if streaming:
        stream = req.stream()
        chunks = list(stream)
        out = stream.result
        assert not any(c.tool_calls for c in chunks)  # the repeated call was held back, never streamed
    else:
        out = req.run()
    assert len(scripted.prompts) == 2
    (first, gen1), (second, gen2) = scripted.prompts
    assert gen1.tool_names == NAMES and gen2.tool_names == []  # the tools are withheld from the second decode
    assert ANSWER_FROM_RESULTS in engine.tokenizer.decode(second)  # and the answer is asked for
    assert not out.tool_calls
    ledger = out.result.ledger
    assert ledger.repeated_tool_calls == 1 and ledger.requests == 1
    assert ledger.prompt_tokens == len(first) + len(second)  # both decodes are in the ledger


def test_a_new_call_is_not_a_repeat(engine: HybridEngine) -> None:
    other = f'{TOOL_CALL_OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Bergen"}}}}\n</tool_call>'
    scripted = ScriptedStream(engine, other)
    engine.stream = scripted  # type: ignore[method-assign]
    out = ChatRequest(engine, history({"city": "Oslo"}), GenerationConfig(max_new_tokens=6), TOOLS).run()
    assert len(scripted.prompts) == 1 and out.tool_calls[0].arguments == {"city": "Bergen"}
    assert out.result.ledger.repeated_tool_calls == 0


def test_decision_markers_send_the_rest_of_the_line() -> None:
    from hybrid_llm_adapters.decoding.tool_names import DecisionMarkers

    m = DecisionMarkers(["Action:", "Action Input:"], window=4)
    text = ""
    active = []
    for piece in ["Thought: x\n", "Action", ":", " look", "up", "\n", "Action", " Input", ":", " {", "a", "b", "c",
                  "d", "e"]:
        active.append(m.active())  # asked before the token is chosen
        text += piece
        m.update(text)
    # cloud for ' look', 'up', '\n' (the line ends), then for ' {', 'a', 'b', 'c' (the window of 4)
    assert active == [False, False, False, True, True, True, False, False, False, True, True, True, True, False, False]
    assert not DecisionMarkers([], 4).active()
