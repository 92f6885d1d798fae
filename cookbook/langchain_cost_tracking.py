"""Cost tracking with LangChain callbacks: a chain of several hybrid calls (plan -> code -> review, plus a
batch), the hybrid ledger of every call, and their aggregate from `get_hybrid_callback()`.

The aggregate is the sum of the per-call ledgers (the core's `UsageLedger.__add__`), so it shows whether the
hybrid saved money against cloud-only generation, or cost more (every cloud call re-sends the prefix).

    python cookbook/langchain_cost_tracking.py
    python cookbook/langchain_cost_tracking.py --threshold 0.5 --input-price 3 --output-price 15
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_hybrid_llm import HybridChatModel, HybridLedgerCallbackHandler, get_hybrid_callback
from langchain_hybrid_llm.callbacks import ledger_from_metadata

from hybrid_llm_adapters import PriceTable, UsageLedger

TASK = "a Python function that returns the n-th Fibonacci number"


@dataclass
class CostReport:
    calls: list[tuple[str, AIMessage]]
    callback: HybridLedgerCallbackHandler
    usage: dict[str, Any]

    @property
    def per_call(self) -> list[UsageLedger]:
        out = []
        for _, msg in self.calls:
            ledger = ledger_from_metadata(msg.response_metadata)
            assert ledger is not None
            out.append(ledger)
        return out


def build_chain(llm: HybridChatModel) -> Any:
    plan = ChatPromptTemplate.from_messages([
        ("system", "You are a senior engineer. Be brief."),
        ("human", "In two short bullet points, plan {task}."),
    ])
    code = ChatPromptTemplate.from_messages([
        ("system", "You write Python. Reply with code only."),
        ("human", "Plan:\n{plan}\n\nWrite {task}."),
    ])
    review = ChatPromptTemplate.from_messages([
        ("human", "Review this code in one sentence:\n{code}"),
    ])
    text = lambda key: (lambda d: d[key].text)
    return (
        RunnablePassthrough.assign(plan_msg=plan | llm)
        | RunnablePassthrough.assign(plan=text("plan_msg"))
        | RunnablePassthrough.assign(code_msg=code | llm)
        | RunnablePassthrough.assign(code=text("code_msg"))
        | RunnablePassthrough.assign(review_msg=review | llm)
    )


def run(task: str = TASK, **model_kwargs: Any) -> CostReport:
    llm = HybridChatModel(**{"max_tokens": 96, **model_kwargs})
    usage = UsageMetadataCallbackHandler()  # LangChain's own usage counter sees the same calls
    with get_hybrid_callback() as cb:
        out = build_chain(llm).invoke({"task": task}, config={"callbacks": [usage]})
        batch = llm.batch([f"Name one edge case of {task}.", f"Name one test for {task}."],
                          config={"callbacks": [usage]})
    calls = [("plan", out["plan_msg"]), ("code", out["code_msg"]), ("review", out["review_msg"]),
             ("batch 1", batch[0]), ("batch 2", batch[1])]
    report = CostReport(calls, cb, usage.usage_metadata)
    print(f"{'call':<9}{'prompt':>7}{'device':>7}{'cloud':>6}{'calls':>6}{'cost $':>11}{'cloud-only $':>14}")
    for (name, _), ledger in zip(calls, report.per_call):
        print(f"{name:<9}{ledger.prompt_tokens:>7}{ledger.local_tokens:>7}{ledger.cloud_tokens:>6}"
              f"{ledger.cloud_calls:>6}{ledger.cost_usd:>11.6f}{ledger.cloud_only_cost_usd:>14.6f}")
    t = cb.total
    print(f"{'total':<9}{t.prompt_tokens:>7}{t.local_tokens:>7}{t.cloud_tokens:>6}{t.cloud_calls:>6}"
          f"{t.cost_usd:>11.6f}{t.cloud_only_cost_usd:>14.6f}\n")
    print(cb)
    print(f"\nLangChain UsageMetadataCallbackHandler: {usage.usage_metadata}")
    return report


def main(argv: list[str] | None = None) -> CostReport:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=TASK)
    p.add_argument("--slm", default="qwen2.5-coder-0.5b-instruct", help="catalog name or folder")
    p.add_argument("--base-url", default=None, help="the cloud's OpenAI-compatible endpoint")
    p.add_argument("--cloud-model", default=None)
    p.add_argument("--router", default="entropy", choices=["entropy", "max_prob", "reward", "local", "cloud"])
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--input-price", type=float, default=None, help="USD per million input tokens")
    p.add_argument("--output-price", type=float, default=None, help="USD per million output tokens")
    a = p.parse_args(argv)
    kwargs: dict[str, Any] = {"model": a.slm, "router": a.router, "threshold": a.threshold,
                              "max_tokens": a.max_tokens}
    if a.base_url:
        kwargs["base_url"] = a.base_url
    if a.cloud_model:
        kwargs["cloud_model"] = a.cloud_model
    if a.input_price is not None or a.output_price is not None:
        base = PriceTable()
        kwargs["prices"] = PriceTable(
            input_per_mtok=a.input_price if a.input_price is not None else base.input_per_mtok,
            cached_input_per_mtok=(a.input_price / 2 if a.input_price is not None else base.cached_input_per_mtok),
            output_per_mtok=a.output_price if a.output_price is not None else base.output_per_mtok,
        )
    return run(a.task, **kwargs)


if __name__ == "__main__":
    main()
