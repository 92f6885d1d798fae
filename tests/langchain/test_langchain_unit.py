"""Unit tests of the LangChain adapter on tiny random models and a scripted engine (no real models, seconds).

Real-model behaviour (tool calling quality, the real cloud) is in test_langchain_integration.py and the
standard suites in test_standard.py.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.load import dumpd, dumps
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.tools import tool
from langchain_hybrid_llm import HybridChatModel, get_hybrid_callback, ledger_from_metadata
from langchain_hybrid_llm._convert import to_chat_dicts
from loop_probe import loop_ticks_during
from pydantic import BaseModel, Field

from hybrid_llm_adapters import GenerationConfig, PriceTable, UsageLedger
from hybrid_llm_adapters.aio import AsyncGeneration
from hybrid_llm_adapters.chat import parse_tool_calls
from hybrid_llm_adapters.chat_api import resolve_tool_choice
from hybrid_llm_adapters.engine import Generation
from hybrid_llm_adapters.events import GenerationResult, TokenEvent
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.tool_stream import ToolCallStreamParser, parse_untagged_tool_calls

SECRET = "sk-test-do-not-leak-1234"


@pytest.fixture
def tiny(tiny_model_dir: Path) -> HybridChatModel:
    return HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=12, api_key=SECRET)


# -- the streaming tool-call parser ------------------------------------------------------------------

NAMES = ["add", "f", "g"]
# untagged calls as the real pair writes them, with the content and calls a whole answer must give
UNTAGGED = [
    ('{"name": "add", "arguments": {"a": 1, "b": 2}}', "", [("add", {"a": 1, "b": 2})]),  # the 0.5B SLM
    (' {"name": "add", "arguments": {"a": 1}}\nDone.', "Done.", [("add", {"a": 1})]),
    # the 1.5B cloud: prose, then the call as a fenced JSON block, then more prose
    (('To add them, I will use the `add` function.\n\n```json\n{\n  "name": "add",\n  "arguments": {\n    "a": 4441,'
     '\n    "b": 3917\n  }\n}\n```\n\nThis returns the sum.'),
     "To add them, I will use the `add` function.\n\nThis returns the sum.", [("add", {"a": 4441, "b": 3917})]),
    ("Here's the JSON response:\n\n{\"name\": \"f\", \"arguments\": {}}", "Here's the JSON response:", [("f", {})]),
    ('```json\n{"name": "g", "arguments": {"s": "x"}}\n```', "", [("g", {"s": "x"})]),
    ('Use:\n```python\nprint({"a": 1})\n```', 'Use:\n```python\nprint({"a": 1})\n```', []),  # code, no call
    ('```json\n{"name": "Ada", "age": 36}\n```', '```json\n{"name": "Ada", "age": 36}\n```', []),  # not a tool
    ("if (x) { return {}; } and ``` alone", "if (x) { return {}; } and ``` alone", []),
    ('{"name": "unknown", "arguments": {}} is JSON, not a call', ('{"name": "unknown", "arguments": {}} is JSON, '
     'not a call'), []),
]
SAMPLES = [
    "Just text, no tools.",
    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
    'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": {"c": "}{\\"x"}}}\n</tool_call>',
    ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": '
     '{"s": "你好"}}\n</tool_call>'),
    '<tool_call>\n{"arguments": {"a": 1}, "name": "add"}\n</tool_call>',  # other key order
    '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 5}"}\n</tool_call>',  # arguments as a string
    '<tool_call>\n{"name": "add", "arguments": {"a": 1}}',  # cut off before the closing tag
    "a < b and <tool but not a call",
    '{"a": 1} is JSON, not a call',
    '{"a": 1',
    '<tool_call>\n{"name": "add", "arguments": {"a": "こんにちは"}\n</tool_call>',  # the call's '}' missing
    *[text for text, _, _ in UNTAGGED],
]


def _stream_parse(text: str, pieces: list[str]) -> tuple[str, list[dict[str, Any]]]:
    parser = ToolCallStreamParser(NAMES)
    deltas = [d for p in pieces for d in parser.feed(p)] + parser.flush()
    content = "".join(d.text for d in deltas if d.index is None)
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        if d.index is None:
            continue
        c = calls.setdefault(d.index, {"name": "", "args": "", "ids": set()})
        c["name"] += d.name or ""
        c["args"] += d.args or ""
        if d.id:
            c["ids"].add(d.id)
    out = []
    for c in calls.values():
        assert len(c["ids"]) == 1
        out.append({"name": c["name"], "args": json.loads(c["args"])})
    return content, out


@pytest.mark.parametrize("text", SAMPLES)
def test_stream_parser_matches_core_parser(text: str) -> None:
    content, calls = parse_tool_calls(text)
    if not calls:
        content, calls = parse_untagged_tool_calls(text, NAMES)
    expected = [{"name": c.name, "args": c.arguments} for c in calls]
    rng = random.Random(0)
    for trial in range(20):
        if trial == 0:
            pieces = [text]
        elif trial == 1:
            pieces = list(text)
        else:
            cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12))))
            pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        got_content, got_calls = _stream_parse(text, pieces)
        assert got_calls == expected, pieces
        assert got_content == content, pieces


@pytest.mark.parametrize(("text", "content", "calls"), UNTAGGED)
def test_untagged_calls_naming_a_bound_tool_count_anywhere(text: str, content: str, calls: list) -> None:
    got_content, got_calls = parse_untagged_tool_calls(text, NAMES)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got_calls] == calls


def test_untagged_calls_need_bound_tools() -> None:
    text = '```json\n{"name": "add", "arguments": {"a": 1}}\n```'
    assert parse_untagged_tool_calls(text, []) == (text, [])


def test_stream_parser_releases_arguments_incrementally() -> None:
    parser = ToolCallStreamParser()
    deltas = parser.feed('<tool_call>\n{"name": "add", "arguments": {"a": ')
    assert [d.name for d in deltas if d.name] == ["add"] and {d.index for d in deltas} == {0}
    assert "".join(d.args or "" for d in deltas) == '{"a": '
    deltas = parser.feed("12")
    assert [d.args for d in deltas] == ["12"]


# -- message and tool_choice translation -------------------------------------------------------------

def test_to_chat_dicts() -> None:
    msgs = [
        SystemMessage("sys"),
        HumanMessage([{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}], name="bob"),
        AIMessage([{"type": "text", "text": "calling"}, {"type": "tool_use", "id": "1", "name": "add",
                                                         "input": {"a": 1}}],
                  tool_calls=[{"name": "add", "args": {"a": 1}, "id": "1", "type": "tool_call"}]),
        ToolMessage("missing b", tool_call_id="1", name="add", status="error"),
    ]
    out = to_chat_dicts(msgs)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool"]
    assert out[1]["content"] == "hi there"
    assert out[2]["content"] == "calling"
    assert out[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1}}
    assert out[3]["content"] == "Error: missing b" and out[3]["name"] == "add"


def test_resolve_tool_choice() -> None:
    names = ["add", "mul"]
    assert resolve_tool_choice(None, names) is None
    assert resolve_tool_choice(True, names) == "any"
    assert resolve_tool_choice("required", names) == "any"
    assert resolve_tool_choice({"type": "function", "function": {"name": "mul"}}, names) == "mul"
    with pytest.raises(ValueError, match="names no bound tool"):
        resolve_tool_choice("div", names)


# -- secrets ------------------------------------------------------------------------------------------

def test_api_key_never_shown(tiny: HybridChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tiny.api_key.get_secret_value() == SECRET
    for text in (repr(tiny), str(tiny), dumps(tiny), json.dumps(dumpd(tiny)), repr(tiny.engine_config()),
                 str(tiny._identifying_params), tiny.model_dump_json()):
        assert SECRET not in text
    assert dumpd(tiny)["kwargs"]["api_key"] == {"lc": 1, "type": "secret", "id": ["HYBRID_LLM_API_KEY"]}
    monkeypatch.setenv("HYBRID_LLM_API_KEY", "from-env")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-env")
    assert HybridChatModel().api_key.get_secret_value() == "from-env"
    monkeypatch.delenv("HYBRID_LLM_API_KEY")
    assert HybridChatModel().api_key.get_secret_value() == "openai-env"


# -- engine sharing -----------------------------------------------------------------------------------

def test_instances_share_one_engine_and_one_model(tiny_model_dir: Path) -> None:
    a = HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=5)
    b = HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=9, temperature=0.5)
    c = HybridChatModel(model=str(tiny_model_dir), router="entropy", threshold=2.0,
                        base_url="http://127.0.0.1:9/v1")
    assert a.engine is b.engine  # generation settings are per request, not per engine
    assert c.engine is not a.engine and c.engine.local is a.engine.local  # one loaded SLM
    assert a.engine.local is load_local_model(tiny_model_dir)  # the same one LlamaIndex would get


# -- generation on the tiny model ---------------------------------------------------------------------

def test_invoke_usage_and_metadata(tiny: HybridChatModel) -> None:
    msg = tiny.invoke("Hello")
    assert isinstance(msg, AIMessage)
    ledger = ledger_from_metadata(msg.response_metadata)
    assert ledger is not None and ledger.requests == 1
    assert msg.usage_metadata == {"input_tokens": ledger.prompt_tokens, "output_tokens": ledger.generated_tokens,
                                  "total_tokens": ledger.prompt_tokens + ledger.generated_tokens}
    assert msg.response_metadata["model_name"] == tiny.model_name
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert len(msg.response_metadata["hybrid_token_sources"]) == ledger.generated_tokens
    assert set(msg.response_metadata["hybrid_token_sources"]) == {"local"}


def test_stream_usage_on_exactly_one_chunk(tiny: HybridChatModel) -> None:
    chunks = list(tiny.stream("Hello"))
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].chunk_position == "last"
    assert all(c.response_metadata["hybrid_token_sources"] for c in chunks[:-1])  # every chunk says its source
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    ledger = ledger_from_metadata(full.response_metadata)
    assert ledger is not None
    assert full.usage_metadata["output_tokens"] == ledger.generated_tokens
    assert len(full.response_metadata["hybrid_token_sources"]) == ledger.generated_tokens
    assert full.content == tiny.invoke("Hello").content  # greedy: stream == invoke


async def test_sync_async_parity(tiny: HybridChatModel) -> None:
    sync = await asyncio.to_thread(tiny.invoke, "Hi there")
    amsg = await tiny.ainvoke("Hi there")
    assert amsg.content == sync.content and amsg.usage_metadata == sync.usage_metadata
    full: AIMessageChunk | None = None
    async for chunk in tiny.astream("Hi there"):
        full = chunk if full is None else full + chunk
    assert full is not None and full.content == sync.content
    assert full.usage_metadata == sync.usage_metadata


async def test_async_does_not_block_event_loop(tiny_model_dir: Path) -> None:
    model = HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=40)
    await model.ainvoke("warm up", max_tokens=2)

    async def work() -> None:
        await model.ainvoke("Write a long story")
        async for _ in model.astream("Write a long story"):
            pass

    ticks, elapsed = await loop_ticks_during(work, 0.005)
    assert ticks >= max(3, 0.3 * elapsed / 0.005), (ticks, elapsed)


def test_stop_and_per_call_overrides(tiny: HybridChatModel) -> None:
    full = tiny.invoke("Hello", max_tokens=20).content
    assert isinstance(full, str)
    cut = next((full[i:i + 2] for i in range(3, len(full) - 2) if full[i:i + 2].strip()), None)
    if cut is None:
        pytest.skip("tiny model produced no usable stop text")
    msg = tiny.invoke("Hello", max_tokens=20, stop=[cut])
    assert msg.content == full[: full.index(cut)]
    assert msg.response_metadata["finish_reason"] == "stop"
    assert tiny.invoke("Hello", max_tokens=3).usage_metadata["output_tokens"] <= 3
    with pytest.raises(ValueError, match="per call is not supported"):
        tiny.invoke("Hello", model="another-model")


def test_cloud_tokens_are_marked(tiny_model_dir: Path, tiny_cloud_dir: Path) -> None:
    from doubles import TransformersCloud

    model = HybridChatModel(model=str(tiny_model_dir), router="cloud", max_tokens=6,
                            base_url="http://test.invalid/v1")
    model.engine.cloud = TransformersCloud(load_local_model(tiny_cloud_dir))
    chunks = list(model.stream("Hello"))
    assert {s for c in chunks for s in c.response_metadata["hybrid_token_sources"]} == {"cloud"}
    ledger = ledger_from_metadata(chunks[-1].response_metadata)
    assert ledger is not None and ledger.cloud_calls >= 1 and ledger.cloud_tokens >= 1


# -- tool calls through a scripted engine -------------------------------------------------------------

class ScriptedEngine:
    """An engine whose answers are fixed text (one per decode call, one event per piece of ``step`` chars),
    honouring stop sequences like the real one: exercises the adapter's translation exactly."""

    def __init__(self, tiny_dir: Path, answers: list[str], step: int = 3):
        self.local = load_local_model(tiny_dir)
        self.tokenizer = self.local.tokenizer
        self.prices = PriceTable()
        self.answers = list(answers)
        self.step = step
        self.configs: list[GenerationConfig] = []
        self.prompts: list[list[int]] = []

    def stream(self, prompt_ids: list[int], config: GenerationConfig) -> Generation:
        self.configs.append(config)
        self.prompts.append(list(prompt_ids))
        answer = self.answers[(len(self.configs) - 1) % len(self.answers)]  # one answer per request, cycling
        hits = [(i, st) for st in config.stop if (i := answer.find(st)) >= 0]
        text, finish, ids_text = answer, "stop", answer
        if hits:
            i, st = min(hits)
            text, ids_text = answer[:i], answer[: i + len(st)]
        pieces = [text[i:i + self.step] for i in range(0, len(text), self.step)]
        gen = Generation(iter(()))

        def events() -> Any:
            evs = []
            for i, p in enumerate(pieces):
                ev = TokenEvent(p, i, "cloud" if i % 2 else "local", 0.1, 0.01)
                evs.append(ev)
                yield ev
            n = len(pieces)
            ledger = UsageLedger(requests=1, prompt_tokens=len(prompt_ids), local_tokens=(n + 1) // 2,
                                 cloud_tokens=n // 2, cloud_calls=n // 2)
            gen.result = GenerationResult(text, self.tokenizer.encode(ids_text), evs, ledger, finish,
                                          list(prompt_ids))

        gen._events = events()
        return gen

    def generate(self, prompt_ids: list[int], config: GenerationConfig) -> GenerationResult:
        gen = self.stream(prompt_ids, config)
        for _ in gen:
            pass
        assert gen.result is not None
        return gen.result

    def astream(self, prompt_ids: list[int], config: GenerationConfig) -> AsyncGeneration:
        return AsyncGeneration(self.stream(prompt_ids, config))

    async def agenerate(self, prompt_ids: list[int], config: GenerationConfig) -> GenerationResult:
        return self.generate(prompt_ids, config)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _scripted(tiny_model_dir: Path, *answers: str) -> tuple[HybridChatModel, ScriptedEngine]:
    model = HybridChatModel(model=str(tiny_model_dir), router="local")
    engine = ScriptedEngine(tiny_model_dir, list(answers))
    model._engine = engine  # type: ignore[assignment]
    return model, engine


async def test_tool_calls_invoke_stream_and_async(tiny_model_dir: Path) -> None:
    answer = 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 40}}\n</tool_call>'
    model, _ = _scripted(tiny_model_dir, answer)
    bound = model.bind_tools([add])
    msg = bound.invoke("2+40?")
    assert msg.content == "Sure."
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 2, "b": 40})]
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(bound.stream("2+40?"))
    assert sum(1 for c in chunks if c.tool_call_chunks) > 2  # arguments arrive in pieces
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == "Sure."
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 2, "b": 40})]
    assert any(b["type"] == "tool_call" for b in full.content_blocks)
    afull = None
    async for c in bound.astream("2+40?"):
        afull = c if afull is None else afull + c
    assert afull is not None and afull.tool_calls[0]["args"] == {"a": 2, "b": 40}
    amsg = await bound.ainvoke("2+40?")
    assert amsg.tool_calls[0]["args"] == {"a": 2, "b": 40}


def test_forced_tool_choice_uses_prefix_and_stops_after_call(tiny_model_dir: Path) -> None:
    # with tool_choice naming the tool, the core forces '<tool_call>\n{"name": "add", "arguments": '
    model, engine = _scripted(tiny_model_dir, '{"a": 1, "b": 2}}\n')
    bound = model.bind_tools([add, {"type": "function", "function": {"name": "noop", "parameters": {}}}],
                             tool_choice="add")
    msg = bound.invoke("go")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert "</tool_call>" in engine.configs[-1].stop
    full = None
    for c in bound.stream("go"):
        full = c if full is None else full + c
    assert full is not None and [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 1, "b": 2})]


def test_structured_output_pydantic_typeddict_schema(tiny_model_dir: Path) -> None:
    class Joke(BaseModel):
        """Joke to tell user."""

        setup: str = Field(description="question")
        punchline: str = Field(description="answer")

    model, _ = _scripted(tiny_model_dir, '{"setup": "Why?", "punchline": "Because."}}')
    assert model.with_structured_output(Joke).invoke("joke") == Joke(setup="Why?", punchline="Because.")
    streamed = list(model.with_structured_output(Joke).stream("joke"))
    assert streamed[-1] == Joke(setup="Why?", punchline="Because.")
    schema = Joke.model_json_schema()
    assert model.with_structured_output(schema, method="json_schema").invoke("joke") == {
        "setup": "Why?", "punchline": "Because."}
    raw = model.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert raw["parsed"] == Joke(setup="Why?", punchline="Because.") and raw["parsing_error"] is None


# -- cost tracking ------------------------------------------------------------------------------------

def test_hybrid_callback_sums_every_call_in_chains(tiny: HybridChatModel) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")])
    chain = RunnablePassthrough.assign(a=prompt | tiny) | RunnablePassthrough.assign(
        b=(lambda d: [HumanMessage(str(d["a"].content)[:20] or "x")]) | tiny)
    usage_cb = UsageMetadataCallbackHandler()
    with get_hybrid_callback() as cb:
        out = chain.invoke({"q": "hello"}, config={"callbacks": [usage_cb]})
        batch = tiny.batch(["one", "two"])
        streamed = None
        for c in tiny.stream("three"):
            streamed = c if streamed is None else streamed + c
    tiny.invoke("outside the block")  # not counted
    messages = [out["a"], out["b"], *batch, streamed]
    ledgers = [ledger_from_metadata(m.response_metadata) for m in messages]
    assert all(ledger is not None for ledger in ledgers)
    expected = sum(ledgers[1:], ledgers[0])  # type: ignore[arg-type]
    assert cb.total.requests == 5 and len(cb.ledgers) == 5
    assert cb.total.model_dump() == pytest.approx(expected.model_dump())
    assert cb.by_model[tiny.model_name].requests == 5
    # LangChain's own handler counts our usage_metadata too
    usage = usage_cb.usage_metadata[tiny.model_name]
    assert usage["output_tokens"] == ledgers[0].generated_tokens + ledgers[1].generated_tokens  # type: ignore
    assert "Hybrid requests: 5" in repr(cb)


@tool
def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def test_name_in_ordinary_text_is_not_a_call(tiny_model_dir: Path) -> None:
    model, engine = _scripted(tiny_model_dir, 'Use JSON like {"name": "Bob"} here.')
    msg = model.bind_tools([add]).invoke("json?")
    assert msg.content == 'Use JSON like {"name": "Bob"} here.' and not msg.tool_calls
    assert len(engine.configs) == 1 and engine.configs[0].tool_names == ["add"]  # one decode, names bound
