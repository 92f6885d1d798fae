"""A LlamaIndex ``FunctionAgent`` on the hybrid model: it calls a tool, then uses the tool's result.

Two tools: ``get_order_status`` returns an order's tracking code; ``track_parcel`` takes a tracking code
and says where the parcel is. To answer "where is my order?", the agent must call the first tool, read the
tracking code in its result, and pass it to the second. The SLM is small, so the first step forces the first
tool (``initial_tool_choice``, LlamaIndex's own way); the second call is the model's own choice, with
arguments taken from the first result. ``track_parcel`` is ``return_direct`` (its answer is the agent's).
The script prints the tool calls, the answer and the hybrid ledger summed over every LLM step of the run.

    python cookbook/llamaindex_function_agent.py --base-url http://127.0.0.1:8765/v1 --order A-1234
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

ORDERS = {"A-1234": "ZX-7741", "B-5678": "QK-2093"}
PARCELS = {"ZX-7741": "the Oslo depot", "QK-2093": "the Bergen sorting centre"}


def get_order_status(order_id: str) -> str:
    """Look up an order by its id (like "A-1234"); returns its status and parcel tracking code."""
    code = ORDERS.get(order_id.strip().upper())
    return f"Order {order_id} has shipped. Tracking code: {code}." if code else f"No order {order_id}."


def track_parcel(tracking_code: str) -> str:
    """Find where a parcel is now, by its tracking code (like "ZX-1234")."""
    place = PARCELS.get(tracking_code.strip().upper())
    return f"Parcel {tracking_code} is at {place}." if place else f"No parcel {tracking_code}."


def build_agent(llm: Any) -> Any:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    return FunctionAgent(
        tools=[FunctionTool.from_defaults(get_order_status), FunctionTool.from_defaults(track_parcel, return_direct=True)],
        llm=llm,
        initial_tool_choice="get_order_status",
    )


async def run_agent(agent: Any, question: str, max_iterations: int = 4) -> dict[str, Any]:
    """Run the agent once; return the answer, the tool calls (name, arguments, output) and the ledger."""
    from llama_index.core.agent.workflow import ToolCallResult
    from llama_index.llms.hybrid import track_hybrid_usage

    with track_hybrid_usage() as usage:
        handler = agent.run(question, max_iterations=max_iterations)
        calls = []
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                calls.append({"tool": event.tool_name, "kwargs": event.tool_kwargs,
                              "output": event.tool_output.content})
        answer = str(await handler)
    return {"question": question, "answer": answer, "tool_calls": calls, "ledger": usage.ledger.model_dump(),
            "report": usage.report()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slm", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--base-url", default=None, help="cloud endpoint (default: $HYBRID_LLM_CLOUD_URL or local vLLM)")
    p.add_argument("--cloud-model", default=None)
    p.add_argument("--router", default="entropy", choices=["entropy", "max_prob", "reward", "local", "cloud"])
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per cloud request")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--order", default="A-1234")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from llama_index.llms.hybrid import HybridChatModel

    args = parse_args(argv)
    llm = HybridChatModel(model=args.slm, base_url=args.base_url, cloud_model=args.cloud_model, router=args.router,
                          threshold=args.threshold, timeout=args.timeout, max_tokens=args.max_tokens)
    result = asyncio.run(run_agent(build_agent(llm), f"Where is my order {args.order} now?"))
    for call in result["tool_calls"]:
        print(f"tool call: {call['tool']}({call['kwargs']}) -> {call['output']}")
    print(f"answer: {result['answer']}\ncost over the run: {result['report']}")
    if args.json:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
