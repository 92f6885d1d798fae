"""LlamaIndex adapter on the real pair: Qwen2.5-Coder-0.5B on the device, Qwen2.5-Coder-1.5B behind vLLM.

Greedy decoding, short answers and forced tool calls where LlamaIndex allows them (the SLM is a 0.5B coder).
The cookbook scripts run in-process (their ``main``), so they share the loaded SLM with the other tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.hybrid import LEDGER_KEY, HybridChatModel, track_hybrid_usage
from pydantic import BaseModel

pytestmark = [pytest.mark.real, pytest.mark.cloud]
COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"


def cookbook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, COOKBOOK / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_kwargs(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str) -> dict[str, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    return {"model": str(real_slm_dir), "base_url": cloud_base_url, "cloud_model": cloud_model_name,
            "router": "entropy", "threshold": 1.0, "context_window": 2048,
            "timeout": 120.0}  # the shared 2-core machine can stall one cloud call for tens of seconds


def test_rag_answer_only_in_documents(real_kwargs: dict[str, Any]) -> None:
    """VectorStoreIndex + offline MiniLM embeddings + HybridChatModel; TokenCountingHandler == ledger."""
    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

    rag = cookbook("llamaindex_rag_cost_report")
    counter = TokenCountingHandler()
    llm = HybridChatModel(**real_kwargs, max_tokens=32,
                          system_prompt="Answer in one short sentence using only the context.")
    engine = rag.build_query_engine(llm, rag.build_embed_model(), callback_manager=CallbackManager([counter]))
    with track_hybrid_usage() as usage:
        answer = engine.query("How many minutes does the Zephyr-7 battery last?")
    assert "47" in str(answer)  # only in the documents (the Kestrel-3 distractor says 22)
    led = usage.ledger
    assert led.requests == 1 and led.generated_tokens > 0
    assert led.cloud_only_cost_usd > 0 and led.local_tokens + led.cloud_tokens == led.generated_tokens
    assert counter.prompt_llm_token_count == led.prompt_tokens
    assert counter.completion_llm_token_count == led.generated_tokens
    assert counter.total_llm_token_count == led.prompt_tokens + led.generated_tokens
    assert answer.source_nodes and "47 minutes" in answer.source_nodes[0].node.get_content()


def test_stream_async_and_sync_agree(real_kwargs: dict[str, Any]) -> None:
    llm = HybridChatModel(**real_kwargs, max_tokens=16)
    messages = [ChatMessage(role="user", content="Write a Python one-liner that reverses a string s.")]
    sync = llm.chat(messages)

    async def run() -> Any:
        last = None
        async for last in await llm.astream_chat(messages):
            pass
        return last

    last = asyncio.run(run())
    assert sync.message.content and last.message.content == sync.message.content
    a, b = sync.additional_kwargs[LEDGER_KEY], last.additional_kwargs[LEDGER_KEY]
    # cached_prompt_tokens (and cost) depend on the server's prefix cache, warmed by the first request
    same = ("prompt_tokens", "local_tokens", "cloud_tokens", "cloud_calls", "billed_prompt_tokens",
            "billed_completion_tokens")
    assert {k: a[k] for k in same} == {k: b[k] for k in same}
    assert sync.raw["usage"]["completion_tokens"] == a["local_tokens"] + a["cloud_tokens"]


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int


def test_structured_predict(real_kwargs: dict[str, Any]) -> None:
    from llama_index.core.prompts import PromptTemplate

    llm = HybridChatModel(**real_kwargs, max_tokens=40)
    person = llm.structured_predict(Person, PromptTemplate("Extract the person from: {text}"),
                                    text="Ada Lovelace was 36 years old.")
    assert person.age == 36 and "Ada" in person.name


def test_function_agent_cookbook(real_kwargs: dict[str, Any]) -> None:
    """FunctionAgent: forced first call, then a second call whose argument comes from the first result."""
    agent_book = cookbook("llamaindex_function_agent")
    argv = ["--slm", real_kwargs["model"], "--base-url", real_kwargs["base_url"],
            "--cloud-model", real_kwargs["cloud_model"], "--order", "A-1234", "--timeout", "120"]
    result = agent_book.main(argv)
    calls = result["tool_calls"]
    assert calls[0]["tool"] == "get_order_status" and "ZX-7741" in calls[0]["output"]
    assert calls[1]["tool"] == "track_parcel" and calls[1]["kwargs"] == {"tracking_code": "ZX-7741"}
    assert "Oslo" in result["answer"]
    assert result["ledger"]["requests"] == 2  # two LLM steps, summed by the instrumentation handler


def test_rag_cookbook_cost_report(real_kwargs: dict[str, Any]) -> None:
    rag = cookbook("llamaindex_rag_cost_report")
    argv = ["--slm", real_kwargs["model"], "--base-url", real_kwargs["base_url"],
            "--cloud-model", real_kwargs["cloud_model"], "--max-tokens", "32", "--timeout", "120",
            "--question", "In which town was Halvorsen Aeronautics founded?"]
    (report,) = rag.main(argv)
    assert "Troms" in report["answer"]
    assert report["token_counter"]["prompt"] == report["ledger"]["prompt_tokens"]
    assert report["token_counter"]["completion"] == report["ledger"]["generated_tokens"]
