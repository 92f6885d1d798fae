"""A tool-calling agent (LangChain's `create_agent`) on the hybrid model: a calculator solves a GSM8K-style
problem end to end, and every step prints what it cost (device tokens, cloud tokens and calls, USD, and what
the same step would have cost cloud-only).

    python cookbook/langchain_agent_calculator.py
    python cookbook/langchain_agent_calculator.py --threshold 0.5 --question "..."

Needs the default models (`hybrid-llm models install`) and the cloud (`hybrid-llm cloud start`, or any
OpenAI-compatible endpoint with --base-url / --cloud-model).
"""

from __future__ import annotations

import argparse
import ast
import operator
import re
from dataclasses import dataclass, field
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import tool
from langchain_hybrid_llm import HybridChatModel, get_hybrid_callback, ledger_from_metadata

from hybrid_llm_adapters import UsageLedger

QUESTION = (
    "A bakery bakes 24 muffins every hour for 7 hours. It sells 150 muffins. "
    "How many muffins are left?"
)
ANSWER = 18
SYSTEM = (
    "You solve math word problems. Use the calculator tool to compute: call it with one arithmetic "
    "expression that combines all the numbers. After the tool answers, reply with one short sentence "
    "that ends with 'The answer is N.'"
)

_OPS: dict[type, Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        if isinstance(node.op, ast.Pow) and abs(_eval(node.right)) > 100:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '(24 * 7) - 150' and return the number."""
    try:
        value = _eval(ast.parse(expression.replace("x", "*").replace("×", "*"), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError) as e:
        return f"Error: {e}. Pass one arithmetic expression using + - * / ( )."
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


@wrap_model_call
def calculate_first(request: ModelRequest, handler: Any) -> ModelResponse:
    """Until the calculator has answered, the model must call it (tool_choice forces the call, through the
    core's forced prefix); afterwards it is free to answer. A 0.5B SLM left to itself often answers the
    arithmetic from memory, and wrongly."""
    if not any(isinstance(m, ToolMessage) for m in request.messages):
        request = request.override(tool_choice="calculator")
    return handler(request)


@dataclass
class AgentRun:
    messages: list[BaseMessage]
    steps: list[UsageLedger] = field(default_factory=list)
    total: UsageLedger = field(default_factory=UsageLedger)
    answer: str = ""

    @property
    def calculator_calls(self) -> list[dict[str, Any]]:
        return [tc for m in self.messages if isinstance(m, AIMessage) for tc in m.tool_calls
                if tc["name"] == "calculator"]


def final_number(text: str) -> float | None:
    nums = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return float(nums[-1]) if nums else None


def run(question: str = QUESTION, **model_kwargs: Any) -> AgentRun:
    llm = HybridChatModel(**{"max_tokens": 96, **model_kwargs})
    agent = create_agent(llm, tools=[calculator], system_prompt=SYSTEM, middleware=[calculate_first])
    with get_hybrid_callback() as cb:
        state = agent.invoke({"messages": [("user", question)]}, config={"recursion_limit": 8})
    out = AgentRun(messages=state["messages"], total=cb.total)
    print(f"Q: {question}\n")
    step = 0
    for m in out.messages:
        if isinstance(m, AIMessage):
            step += 1
            ledger = ledger_from_metadata(m.response_metadata)
            assert ledger is not None
            out.steps.append(ledger)
            what = ", ".join(f"{tc['name']}({tc['args']})" for tc in m.tool_calls) or repr(m.text[:80])
            print(f"step {step}: {what}")
            print(f"    device {ledger.local_tokens} tok, cloud {ledger.cloud_tokens} tok in {ledger.cloud_calls} "
                  f"calls ({ledger.activation_ratio:.0%}), cost ${ledger.cost_usd:.6f} vs cloud-only "
                  f"${ledger.cloud_only_cost_usd:.6f}")
        elif isinstance(m, ToolMessage):
            print(f"    tool {m.name} -> {m.text}")
    out.answer = out.messages[-1].text if out.messages else ""
    print(f"\nA: {out.answer}\n")
    print(cb)
    return out


def main(argv: list[str] | None = None) -> AgentRun:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--slm", default="qwen2.5-coder-0.5b-instruct", help="catalog name or folder")
    p.add_argument("--base-url", default=None, help="the cloud's OpenAI-compatible endpoint")
    p.add_argument("--cloud-model", default=None)
    p.add_argument("--router", default="entropy", choices=["entropy", "max_prob", "reward", "local", "cloud"])
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=96)
    a = p.parse_args(argv)
    kwargs: dict[str, Any] = {"model": a.slm, "router": a.router, "threshold": a.threshold,
                              "max_tokens": a.max_tokens}
    if a.base_url:
        kwargs["base_url"] = a.base_url
    if a.cloud_model:
        kwargs["cloud_model"] = a.cloud_model
    return run(a.question, **kwargs)


if __name__ == "__main__":
    main()
