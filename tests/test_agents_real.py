"""Agents on the real pair and the real vLLM cloud, with the hybrid defaults: a tool result in context is
answered, not called again; LangChain's ``create_agent``, LlamaIndex's ``FunctionAgent`` and ``ReActAgent``
finish a lookup task with the right answer."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.real, pytest.mark.cloud]

BEDS = {"Brassica Row": 38, "Herb Spiral": 12, "Orchard Corner": 7}
SYSTEM = "You are a helpful assistant for a community garden. Use the tools to look up facts you do not know."
QUESTION = "How many raised beds does Brassica Row have?"
LOOKUP = {"type": "function", "function": {
    "name": "raised_bed_count", "description": "Number of raised beds in a community garden plot.",
    "parameters": {"type": "object", "properties": {"garden": {"type": "string", "description": "the plot's name"}},
                   "required": ["garden"]}}}


def raised_bed_count(garden: str) -> str:
    """Number of raised beds in a community garden plot."""
    n = BEDS.get(garden.strip())
    return f"{garden} has {n} raised beds." if n is not None else f"No plot named {garden!r}."


@pytest.fixture(scope="module")
def settings(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str) -> dict[str, Any]:
    """The hybrid defaults (router, threshold, cloud mode, prices), on this machine's pair."""
    return {"model": str(real_slm_dir), "base_url": cloud_base_url, "cloud_model": cloud_model_name,
            "max_tokens": 64, "timeout": 120.0}


def after_one_lookup() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "raised_bed_count", "arguments": {"garden": "Brassica Row"}}}]},
        {"role": "tool", "content": raised_bed_count("Brassica Row"), "tool_call_id": "call_1"},
    ]


def test_a_tool_result_in_context_is_answered(settings: dict[str, Any]) -> None:
    """The one step where the SLM (and the cloud alike) called the same tool again: the hybrid answers."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_hybrid_llm import HybridChatModel, ledger_from_metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llm = HybridChatModel(**settings).bind_tools([LOOKUP])
    messages = [SystemMessage(SYSTEM), HumanMessage(QUESTION),
                AIMessage("", tool_calls=[{"name": "raised_bed_count", "args": {"garden": "Brassica Row"},
                                           "id": "call_1", "type": "tool_call"}]),
                ToolMessage(raised_bed_count("Brassica Row"), tool_call_id="call_1")]
    msg = llm.invoke(messages)
    assert not msg.tool_calls, f"called the tool again: {msg.tool_calls}"
    assert "38" in msg.content
    ledger = ledger_from_metadata(msg.response_metadata)
    assert ledger is not None and ledger.generated_tokens > 0


def test_create_agent_finishes_a_lookup(settings: dict[str, Any]) -> None:
    from langchain.agents import create_agent
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool
    from langchain_hybrid_llm import HybridChatModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HybridChatModel(**settings)
    agent = create_agent(model, tools=[tool(raised_bed_count)], system_prompt=SYSTEM)
    out = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]}, config={"recursion_limit": 10})
    tool_results = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert 1 <= len(tool_results) <= 2 and "38" in tool_results[0].content
    assert "38" in out["messages"][-1].content


def test_function_agent_finishes_a_lookup(settings: dict[str, Any]) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.hybrid import HybridChatModel

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(raised_bed_count)], llm=HybridChatModel(**settings),
                          system_prompt=SYSTEM)

    async def run() -> Any:
        return await agent.run(user_msg=QUESTION, max_iterations=6)

    response = asyncio.run(run())
    assert "38" in str(response)
    assert 1 <= len(response.tool_calls) <= 2 and "38" in str(response.tool_calls[0].tool_output)


def test_react_agent_finishes_a_lookup(settings: dict[str, Any]) -> None:
    """ReAct's text protocol (Thought / Action / Action Input) on the hybrid, with its structural points as
    decision markers. Without them the SLM copied the prompt's example (``{"input": ..., "num_beams": 5}``)
    as the tool's arguments and the agent answered a made-up number."""
    from llama_index.core.agent.workflow import ReActAgent
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.hybrid import HybridChatModel

    react = {"generation_options": {"decision_markers": ["Action:", "Action Input:"]},  # what the README advises
             "max_cost_ratio": None, "max_tokens": 128, "timeout": 300.0}
    agent = ReActAgent(tools=[FunctionTool.from_defaults(raised_bed_count)], llm=HybridChatModel(**{**settings, **react}))

    async def run() -> Any:
        return await agent.run(user_msg=QUESTION, max_iterations=8)

    response = asyncio.run(run())
    assert "38" in str(response)
    assert response.tool_calls and response.tool_calls[0].tool_name == "raised_bed_count"
    assert response.tool_calls[0].tool_kwargs == {"garden": "Brassica Row"}
