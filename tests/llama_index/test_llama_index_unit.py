"""LlamaIndex adapter on tiny random models: interface, streaming, async, usage, events, secrets, tools.

The tool-calling tests use ``ScriptedCloud``: an always-cloud engine whose 'cloud' replies with scripted
text token by token, so the whole adapter (template, forced tool prefix, parser, FunctionAgent loop) runs
for real without a large model. Real-model behaviour is in ``test_llama_index_real.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import pytest
from doubles import FaultyServer, TransformersCloud
from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent
from llama_index.core.tools import FunctionTool
from llama_index.llms.hybrid import HybridChatModel, HybridLLMUsageEvent, track_hybrid_usage
from llama_index.llms.hybrid.base import _StreamBuilder
from llama_index.llms.hybrid.utils import LEDGER_KEY, to_openai_messages
from loop_probe import loop_ticks_during
from pydantic import BaseModel

from hybrid_llm_adapters import GenerationConfig, HybridEngine
from hybrid_llm_adapters.chat import render_chat
from hybrid_llm_adapters.cloud.replies import CallUsage, CloudReply, CloudToken
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import AlwaysCloudRouter, Router

TIMING = {"local_seconds", "cloud_seconds"}
SECRET = "sk-test-DO-NOT-LEAK-4242"


def ledger_fields(ledger: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ledger.items() if k not in TIMING}


class EveryThirdRouter(Router):
    """Cloud on every third step: a deterministic local/cloud mix on random weights."""

    name = "every_third"

    def __init__(self) -> None:
        self.step = 0

    def use_cloud(self, score: float | None, step: Any) -> bool:
        self.step += 1
        return self.step % 3 == 0


class ScriptedCloud(TransformersCloud):
    """A 'cloud' that types out one scripted reply per request, then ends it (the tiny-model double's
    interface, with scripted tokens instead of a model's)."""

    def __init__(self, local: Any, replies: list[str]):
        super().__init__(local)
        tok = local.tokenizer
        self.eos = next(iter(local.eos_token_ids))
        self.replies = [tok.encode(r, add_special_tokens=False) + [self.eos] for r in replies]
        self.pos = 0

    def next_tokens(self, prompt: list[int] | str, gen: GenerationConfig, n: int, seed: int | None = None,
                    logprobs: int | None = None) -> CloudReply:
        tokens: list[CloudToken] = []
        finish = "length"
        for _ in range(n):
            token = self.replies[0][self.pos]
            self.pos += 1
            tokens.append(CloudToken(self.local.tokenizer.decode([token], skip_special_tokens=True), token, None,
                                     {token: 0.0}))
            if token == self.eos:
                finish, self.pos = "stop", 0
                self.replies = self.replies[1:] or self.replies
                break
        usage = CallUsage(prompt_tokens=len(self._ids(prompt)), completion_tokens=len(tokens))
        return CloudReply(tokens, usage, 0.0, finish, "".join(t.text for t in tokens))


@pytest.fixture()
def llm(tiny_model_dir: Path) -> HybridChatModel:
    return HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=10)


@pytest.fixture()
def hybrid_llm(tiny_model_dir: Path, tiny_cloud_dir: Path) -> HybridChatModel:
    """The tiny SLM with a tiny transformers 'cloud' every third token: a real mix of local and cloud tokens."""
    model = HybridChatModel(model=str(tiny_model_dir), router="entropy", max_tokens=12)
    local = load_local_model(tiny_model_dir)
    model._engine = HybridEngine(local, EveryThirdRouter(), TransformersCloud(load_local_model(tiny_cloud_dir)))
    return model


def scripted_llm(tiny_model_dir: Path, replies: list[str]) -> HybridChatModel:
    model = HybridChatModel(model=str(tiny_model_dir), router="cloud", max_tokens=80)
    local = load_local_model(tiny_model_dir)
    model._engine = HybridEngine(local, AlwaysCloudRouter(), ScriptedCloud(local, replies))  # type: ignore[arg-type]
    return model


MSGS = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="add 3 and 5")]


# -- interface ------------------------------------------------------------------------------------------

def test_metadata(llm: HybridChatModel) -> None:
    meta = llm.metadata
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.num_output == 10
    assert meta.context_window == 4096  # the tiny SLM's max_position_embeddings
    assert meta.model_name.startswith("hybrid/")
    assert HybridChatModel(model="x", context_window=2048).metadata.context_window == 2048  # no engine load


def test_rendered_through_chat_template(llm: HybridChatModel) -> None:
    prepared = llm._request(MSGS, {}).prepared
    dicts = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add 3 and 5"}]
    assert prepared.prompt_ids == render_chat(llm.engine.tokenizer, dicts)


def test_message_conversion_tools_and_errors() -> None:
    msgs = [
        ChatMessage(role="user", content="status of A-1?"),
        ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="status",
                                                            tool_kwargs={"order": "A-1"})]),
        ChatMessage(role="tool", content="shipped", additional_kwargs={"tool_call_id": "c1"}),
        ChatMessage(role=MessageRole.DEVELOPER, content="dev"),
    ]
    out = to_openai_messages(msgs)
    assert out[1]["tool_calls"][0]["function"] == {"name": "status", "arguments": {"order": "A-1"}}
    assert out[2] == {"role": "tool", "content": "shipped", "tool_call_id": "c1"}
    assert out[3]["role"] == "system"
    from llama_index.core.base.llms.types import ImageBlock

    with pytest.raises(ValueError, match="text only"):
        to_openai_messages([ChatMessage(role="user", blocks=[ImageBlock(url="http://x/y.png")])])


def test_sync_async_stream_complete_agree(llm: HybridChatModel) -> None:
    chat = llm.chat(MSGS)
    chunks = list(llm.stream_chat(MSGS))
    assert "".join(c.delta or "" for c in chunks) == chat.message.content == chunks[-1].message.content
    assert chunks[-1].raw["usage"] == chat.raw["usage"]

    async def run() -> tuple[Any, Any, Any]:
        a = await llm.achat(MSGS)
        last = None
        async for last in await llm.astream_chat(MSGS):
            pass
        comp = None
        async for comp in await llm.astream_complete("add 3 and 5"):
            pass
        return a, last, comp

    a, last, comp = asyncio.run(run())
    assert a.message.content == last.message.content == chat.message.content
    assert ledger_fields(a.additional_kwargs[LEDGER_KEY]) == ledger_fields(chat.additional_kwargs[LEDGER_KEY])
    sync_comp = llm.complete("add 3 and 5")
    assert comp.text == sync_comp.text == "".join(c.delta or "" for c in llm.stream_complete("add 3 and 5"))
    assert asyncio.run(llm.acomplete("add 3 and 5")).text == sync_comp.text


def test_async_does_not_block_the_loop(tiny_model_dir: Path) -> None:
    slow = HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=60)

    ticks, elapsed = asyncio.run(loop_ticks_during(lambda: slow.achat(MSGS, max_tokens=60), 0.001))
    assert (ticks if elapsed > 0.02 else 10**6) > 5


def test_per_call_overrides(llm: HybridChatModel) -> None:
    r = llm.chat(MSGS, max_tokens=3)
    assert r.additional_kwargs[LEDGER_KEY]["local_tokens"] <= 3
    assert llm.chat(MSGS, max_tokens=4).raw["usage"]["completion_tokens"] <= 4


# -- usage, ledger, events ---------------------------------------------------------------------------------

def test_token_counting_handler_matches_ledger(hybrid_llm: HybridChatModel) -> None:
    counter = TokenCountingHandler()
    hybrid_llm.callback_manager = CallbackManager([counter])
    with track_hybrid_usage() as usage:
        hybrid_llm.chat(MSGS)
        list(hybrid_llm.stream_chat(MSGS))
        hybrid_llm.complete("add 3 and 5")
    led = usage.ledger
    assert led.requests == 3 and len(usage.events) == 3
    assert led.cloud_tokens > 0 and led.local_tokens > 0, "the fixture should mix local and cloud tokens"
    assert counter.prompt_llm_token_count == led.prompt_tokens
    assert counter.completion_llm_token_count == led.generated_tokens
    assert counter.total_llm_token_count == led.prompt_tokens + led.generated_tokens
    assert "Cloud calls:" in usage.report() and usage.report() == usage.ledger.summary()


def test_instrumentation_events(llm: HybridChatModel) -> None:
    seen: list[Any] = []

    class Collect(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            seen.append(event)

    root = get_dispatcher()
    handler = Collect()
    root.add_event_handler(handler)
    try:
        r = llm.chat(MSGS)
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not handler]
    kinds = [type(e) for e in seen]
    assert LLMChatStartEvent in kinds and LLMChatEndEvent in kinds and HybridLLMUsageEvent in kinds
    usage_event = next(e for e in seen if isinstance(e, HybridLLMUsageEvent))
    assert usage_event.ledger.model_dump() == r.additional_kwargs[LEDGER_KEY]


# -- secrets -------------------------------------------------------------------------------------------------

def test_api_key_never_shown(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRID_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    m = HybridChatModel(model=str(tiny_model_dir), router="local", api_key=SECRET)
    texts = [repr(m), str(m), json.dumps(m.to_dict(), default=str), m.to_json(), m.model_dump_json(),
             str(m.to_payload()), repr(m.engine_config), str(m.engine_config.cache_key())]
    assert not any(SECRET in t for t in texts)
    assert m.engine_config.cloud.api_key.get_secret_value() == SECRET
    # precedence: explicit, then HYBRID_LLM_API_KEY, then OPENAI_API_KEY
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    assert HybridChatModel(model="x").engine_config.cloud.api_key.get_secret_value() == "from-openai"
    monkeypatch.setenv("HYBRID_LLM_API_KEY", "from-hybrid")
    assert HybridChatModel(model="x").engine_config.cloud.api_key.get_secret_value() == "from-hybrid"


def test_api_key_sent_but_not_logged(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FaultyServer("error") as server, caplog.at_level(logging.DEBUG):
        m = HybridChatModel(model=str(tiny_model_dir), router="cloud", api_key=SECRET, cloud_base_url=server.base_url,
                            max_retries=0, timeout=5, on_cloud_failure="local", max_tokens=3)
        r = m.chat(MSGS)
    assert any(SECRET in h for h in server.auth_headers), "the key must reach the server"
    assert SECRET not in caplog.text
    assert r.additional_kwargs[LEDGER_KEY]["failed_cloud_calls"] >= 1
    assert r.additional_kwargs[LEDGER_KEY]["fallback_tokens"] >= 1


def test_engine_shared_between_models(tiny_model_dir: Path) -> None:
    a = HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=5)
    b = HybridChatModel(model=str(tiny_model_dir), router="local", max_tokens=50, temperature=0.7)
    assert a.engine is b.engine  # decoding settings are per request, not per engine
    c = HybridChatModel(model=str(tiny_model_dir), router="entropy", threshold=2.0, cloud_base_url="http://h.invalid/v1")
    assert c.engine is not a.engine and c.engine.local is a.engine.local  # one loaded SLM per folder


# -- tools -----------------------------------------------------------------------------------------------------

def test_stream_builder_streams_tool_calls_incrementally() -> None:
    from llama_index.core.base.llms.types import ToolCallBlock
    from llama_index.llms.hybrid.utils import selections

    from hybrid_llm_adapters.chat_api import ChatChunk
    from hybrid_llm_adapters.tool_stream import Delta

    builder = _StreamBuilder()
    first = builder.chunk(ChatChunk(tool_calls=[Delta(index=0, id="c1", name="f", args='{"a": ')]), None)
    second = builder.chunk(ChatChunk(tool_calls=[Delta(index=0, args="1}")]), None)
    assert not first.message.content and first.delta == ""  # no call text leaks into the content
    blocks = [b for b in second.message.blocks if isinstance(b, ToolCallBlock)]
    assert [(b.tool_call_id, b.tool_name, b.tool_kwargs) for b in blocks] == [("c1", "f", '{"a": 1}')]
    assert selections(first.message)[0].tool_kwargs == {}  # incomplete JSON: no arguments yet
    assert selections(second.message)[0].tool_kwargs == {"a": 1}


def order_status(order_id: str) -> str:
    """Look up the shipping status of an order."""
    return f"Order {order_id} shipped; tracking code ZX-77."


def test_chat_with_tools_forced_and_parsed(tiny_model_dir: Path) -> None:
    llm = scripted_llm(tiny_model_dir, ['{"order_id": "A-1"}}\n</tool_call>'])
    tool = FunctionTool.from_defaults(order_status)
    resp = llm.chat_with_tools([tool], user_msg="Status of A-1?", tool_required=True)
    calls = llm.get_tool_calls_from_response(resp)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("order_status", {"order_id": "A-1"})]
    assert resp.raw["finish_reason"] == "tool_calls"
    out = llm.predict_and_call([tool], user_msg="Status of A-1?", tool_required=True)
    assert "ZX-77" in out.response


def test_no_tool_call_raises_when_required(tiny_model_dir: Path) -> None:
    llm = scripted_llm(tiny_model_dir, ["I do not know."])
    resp = llm.chat_with_tools([FunctionTool.from_defaults(order_status)], user_msg="hi")
    assert resp.message.content == "I do not know."
    assert llm.get_tool_calls_from_response(resp, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(resp)


def test_stream_chat_with_tools_content_then_call(tiny_model_dir: Path) -> None:
    reply = 'Let me check.\n<tool_call>\n{"name": "order_status", "arguments": {"order_id": "B-2"}}\n</tool_call>'
    llm = scripted_llm(tiny_model_dir, [reply])
    chunks = list(llm.stream_chat_with_tools([FunctionTool.from_defaults(order_status)], user_msg="B-2?"))
    streamed = "".join(c.delta or "" for c in chunks)
    assert "<tool_call" not in streamed and streamed.startswith("Let me check.")
    final = chunks[-1]
    assert [c.tool_kwargs for c in llm.get_tool_calls_from_response(final)] == [{"order_id": "B-2"}]
    assert [c.tool_name for c in llm.get_tool_calls_from_response(chunks[0], error_on_no_tool_call=False)] == []


class Person(BaseModel):
    """A person."""

    name: str
    age: int


def test_structured_predict_and_structured_llm(tiny_model_dir: Path) -> None:
    from llama_index.core.prompts import PromptTemplate

    llm = scripted_llm(tiny_model_dir, ['{"name": "Ada", "age": 36}}\n</tool_call>'])
    person = llm.structured_predict(Person, PromptTemplate("Extract the person: {text}"), text="Ada, 36")
    assert person == Person(name="Ada", age=36)
    sllm = llm.as_structured_llm(Person)
    resp = sllm.chat([ChatMessage(role="user", content="Ada is 36.")])
    assert resp.raw == Person(name="Ada", age=36)


def test_function_agent_loop(tiny_model_dir: Path) -> None:
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    llm = scripted_llm(tiny_model_dir, ['{"order_id": "A-1"}}\n</tool_call>', "The tracking code is ZX-77."])
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(order_status)], llm=llm,
                          initial_tool_choice="order_status")

    async def run() -> tuple[str, list[Any]]:
        handler = agent.run("Tracking code of A-1?")
        calls = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        return str(await handler), calls

    answer, calls = asyncio.run(run())
    assert [c.tool_name for c in calls] == ["order_status"] and "ZX-77" in calls[0].tool_output.content
    assert "ZX-77" in answer


def test_pickle_roundtrip_keeps_settings(llm: HybridChatModel) -> None:
    clone = pickle.loads(pickle.dumps(llm))
    assert clone.model == llm.model and clone.max_tokens == 10
    assert isinstance(MSGS[0].blocks[0], TextBlock)


def test_react_agent_loop(tiny_model_dir: Path) -> None:
    from llama_index.core.agent.workflow import ReActAgent, ToolCallResult

    replies = ['Thought: I need the status.\nAction: order_status\nAction Input: {"order_id": "A-1"}',
               "Thought: I can answer without using any more tools.\nAnswer: The tracking code is ZX-77."]
    llm = scripted_llm(tiny_model_dir, replies)
    agent = ReActAgent(tools=[FunctionTool.from_defaults(order_status)], llm=llm)

    async def run() -> tuple[str, list[Any]]:
        handler = agent.run("Tracking code of A-1?")
        calls = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        return str(await handler), calls

    answer, calls = asyncio.run(run())
    assert [c.tool_kwargs for c in calls] == [{"order_id": "A-1"}]
    assert "ZX-77" in answer
