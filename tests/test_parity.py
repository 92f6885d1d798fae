"""Parity: the same messages, greedy, through the LangChain and the LlamaIndex models give the same text and
the same ledger (every field except the two wall-clock timings), on the real SLM and the real cloud. The
server's prefix cache is warmed first, so that cached-token counts (and the cost) see the same state.

Both adapters take the same constructor names, so one dict of settings builds both; equal settings mean one
shared engine (and one loaded SLM) in the process.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.real, pytest.mark.cloud]

TIMING = {"local_seconds", "cloud_seconds"}  # wall-clock: differ run to run by nature


def _untimed(ledger: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ledger.items() if k not in TIMING}


@pytest.fixture(scope="module")
def settings(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str) -> dict[str, Any]:
    return {"model": str(real_slm_dir), "base_url": cloud_base_url, "cloud_model": cloud_model_name,
            "router": "entropy", "threshold": 0.8, "max_tokens": 24, "temperature": 0.0,
            "timeout": 120.0}


def test_langchain_and_llamaindex_agree(settings: dict[str, Any]) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_hybrid_llm import HybridChatModel as LangChainModel
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.hybrid import LEDGER_KEY
    from llama_index.llms.hybrid import HybridChatModel as LlamaIndexModel

    system, user = "You are a concise assistant.", "What does Python's len() return?"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = LangChainModel(**settings)
    li = LlamaIndexModel(**settings)
    assert lc.engine is li.engine, "equal settings must share one engine"

    li_messages = [ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)]
    # vLLM's prefix cache makes a request's cached_prompt_tokens (and so its cost) depend on what ran
    # before it: warm the cache once so both compared requests see the same server state.
    li.chat(li_messages)
    lc_msg = lc.invoke([SystemMessage(system), HumanMessage(user)])
    li_resp = li.chat(li_messages)

    assert lc_msg.content == li_resp.message.content and lc_msg.content
    lc_ledger, li_ledger = lc_msg.response_metadata["hybrid_ledger"], li_resp.additional_kwargs[LEDGER_KEY]
    assert _untimed(lc_ledger) == _untimed(li_ledger)
    assert set(lc_ledger) == set(li_ledger)
    assert li_ledger["cloud_calls"] > 0, "parity should cover cloud tokens too"
    assert lc_msg.usage_metadata["input_tokens"] == li_resp.raw["usage"]["prompt_tokens"]
    assert lc_msg.usage_metadata["output_tokens"] == li_resp.raw["usage"]["completion_tokens"]


def test_both_cost_trackers_report_a_handoff_alike(settings: dict[str, Any]) -> None:
    """A priced sheet and a low threshold: the requests hand off; LangChain's callback handler and LlamaIndex's
    usage handler report the same totals, handed-off tokens and guard trips included."""
    from langchain_hybrid_llm import HybridChatModel as LangChainModel
    from langchain_hybrid_llm.callbacks import HybridLedgerCallbackHandler
    from llama_index.llms.hybrid import HybridChatModel as LlamaIndexModel
    from llama_index.llms.hybrid import track_hybrid_usage

    from hybrid_llm_adapters import PriceTable

    priced = {**settings, "threshold": 0.3, "max_tokens": 40, "handoff": "on", "max_cost_ratio": 1.0,
              "prices": PriceTable.preset("example-cached-10pct")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = LangChainModel(**priced)
    li = LlamaIndexModel(**priced)
    questions = ["Name two uses of a Python dict.", "How many minutes are in 3.5 hours? Explain."]
    lc_handler = HybridLedgerCallbackHandler()
    for q in questions:
        lc.invoke(q, config={"callbacks": [lc_handler]})
    with track_hybrid_usage() as li_handler:
        for q in questions:
            li.complete(q)
    lc_total, li_total = lc_handler.total.model_dump(), li_handler.ledger.model_dump()
    assert _untimed(lc_total) == _untimed(li_total)
    assert li_total["handed_off_tokens"] > 0 and li_total["requests"] == 2
    assert li_total["cost_usd"] <= li_total["cloud_only_cost_usd"] * (1 + 1e-9)


ORDER_TOOL = {"type": "function", "function": {
    "name": "order_status", "description": "Look up the shipping status of an order by its id.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}


@pytest.mark.parametrize("forced", [False, True], ids=["open_choice", "forced_structured"])
def test_tool_calls_and_streaming_agree(settings: dict[str, Any], forced: bool) -> None:
    """A tool call (the model's own choice, and forced as structured output is) through both adapters, whole
    and streamed: same content, same calls, same ledger field by field."""
    from langchain_hybrid_llm import HybridChatModel as LangChainModel
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.hybrid import LEDGER_KEY
    from llama_index.llms.hybrid import HybridChatModel as LlamaIndexModel
    from llama_index.llms.hybrid.utils import selections

    question = "Where is my order A-1234?"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lc = LangChainModel(**{**settings, "max_tokens": 40})
    li = LlamaIndexModel(**{**settings, "max_tokens": 40})
    bound = lc.bind_tools([ORDER_TOOL], tool_choice="required" if forced else None)
    li_kwargs = {"tools": [ORDER_TOOL], "tool_required": forced}
    li_messages = [ChatMessage(role="user", content=question)]
    li.chat(li_messages, **li_kwargs)  # warm the server's prefix cache for both

    lc_msg = bound.invoke(question)
    li_resp = li.chat(li_messages, **li_kwargs)
    lc_calls = [(c["name"], c["args"]) for c in lc_msg.tool_calls]
    li_calls = [(s.tool_name, s.tool_kwargs) for s in selections(li_resp.message)]
    assert lc_calls == li_calls
    if forced:
        assert lc_calls and lc_calls[0][0] == "order_status"
    assert lc_msg.content == (li_resp.message.content or "")
    assert _untimed(lc_msg.response_metadata["hybrid_ledger"]) == _untimed(li_resp.additional_kwargs[LEDGER_KEY])

    full = None
    for chunk in bound.stream(question):
        full = chunk if full is None else full + chunk
    li_last = None
    deltas = []
    for li_last in li.stream_chat(li_messages, **li_kwargs):
        deltas.append(li_last.delta or "")
    assert full is not None and li_last is not None
    assert [(c["name"], c["args"]) for c in full.tool_calls] == lc_calls  # streamed == whole
    assert [(s.tool_name, s.tool_kwargs) for s in selections(li_last.message)] == li_calls
    assert full.content == "".join(deltas) == lc_msg.content
    assert _untimed(full.response_metadata["hybrid_ledger"]) == _untimed(li_last.additional_kwargs[LEDGER_KEY])
