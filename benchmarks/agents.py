"""Agents that finish: tool-use tasks through LangChain ``create_agent`` and LlamaIndex ``FunctionAgent``, with
SLM-only, cloud-only and the hybrid defaults, side by side in one run on the real pair and the real vLLM cloud.

42 tasks of our own (``TASKS``): 16 lookups (facts only a lookup tool knows: garden plots' raised beds, staff
phone extensions), 14 products only a calculator does exactly, 12 two-step tasks (two lookups and a sum, or a
lookup and a product). A task succeeds when the agent's final answer contains the expected number.

Reported per framework and system: task success with a Wilson 95 % interval, tool calls, LLM turns, loops
(the same call with the same arguments twice in one task, or the framework's step limit reached), cloud share
of generated tokens, and cost relative to cloud-only: on the self-hosted view (``SelfHostedPrices``), on the
API view (the default price table), and the ledger's own cloud-only counterfactual.

    python benchmarks/agents.py --concurrency 8          # all frameworks and systems (resumable)
    python benchmarks/agents.py --max-tokens 96          # the earlier runs' cap on each turn
    python benchmarks/agents.py --summarize-only

Each turn may write at most ``--max-tokens`` tokens (default 256). Records:
benchmarks/results/agents/max<N>/<framework>-<system>.jsonl; writes benchmarks/results/agents.json (one
summary per cap) and the cap's table in docs/agents.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import time
import warnings
from pathlib import Path
from typing import Any

from readme_table import markdown_table, write_section
from tqdm.auto import tqdm

from hybrid_llm_adapters import UsageLedger
from hybrid_llm_adapters.config import FIRST_ENTROPY_THRESHOLD
from hybrid_llm_adapters.devtools.vllm_server import VLLMServerConfig, start_server
from hybrid_llm_adapters.evaluation.cost import SelfHostedPrices, self_hosted_cost
from hybrid_llm_adapters.evaluation.stats import wilson_interval
from hybrid_llm_adapters.models import DEFAULT_SLM, resolve_model

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "results" / "agents"
OUT = HERE / "results" / "agents.json"
DOC = HERE.parent / "docs" / "agents.md"
# hybrid: the defaults (the cloud writes each turn's first 8 tokens) at entropy 1.0, the default threshold when
# these rows were recorded (the quality frontier has since moved it to 0.27, docs/evaluation.md);
# hybrid-nodecision: the same without decision points (the router alone decides each turn's opening);
# hybrid-decisionN: the cloud writes the turn's first N tokens (N=1: only the first token); hybrid-t0.27: the
# defaults at the threshold the quality frontier chose
AGENT_THRESHOLD = {"threshold": FIRST_ENTROPY_THRESHOLD}
SYSTEMS = {"hybrid": AGENT_THRESHOLD, "hybrid-t0.27": {"threshold": 0.27},
           "hybrid-nodecision": {**AGENT_THRESHOLD, "generation_options": {"decision_tokens": 0}},
           **{f"hybrid-decision{n}": {**AGENT_THRESHOLD, "generation_options": {"decision_tokens": n}}
              for n in (1, 4, 16, 32)},
           "cloud": {"router": "cloud"}, "slm": {"router": "local"}}
FRAMEWORKS = ("langchain", "llamaindex")
MAX_TOKENS = 256  # per turn: 96 cut verbose answers off before their number (docs/agents.md)
STEP_LIMIT = {"langchain": 12, "llamaindex": 6}  # LangGraph super-steps (about 5 tool rounds); agent turns
SYSTEM_PROMPT = ("You are a helpful assistant for a community garden and its office. Use the tools to look up "
                 "facts and to compute exactly; answer with the number the question asks for.")

BEDS = {"Brassica Row": 38, "Herb Spiral": 12, "Orchard Corner": 7, "Pollinator Strip": 23, "Three Sisters": 16,
        "Compost Court": 9, "Rose Arbor": 14, "Pumpkin Patch": 31}
EXTENSIONS = {"Amara Osei": 4417, "Bruno Keller": 2093, "Chen Wei": 5581, "Dana Ruiz": 3306,
              "Elif Sahin": 7724, "Farid Haddad": 1189, "Greta Lind": 6650, "Hiro Tanaka": 8842}
PRODUCTS = [(7919, 3571), (4823, 617), (2909, 8837), (1234, 5678), (9173, 406), (3319, 2741), (6007, 7129),
            (815, 9321), (4441, 3917), (2718, 2818), (5003, 6011), (7777, 1313), (3583, 4729), (9901, 2207)]


def raised_bed_count(garden: str) -> str:
    """Number of raised beds in a community garden plot (by the plot's name)."""
    n = BEDS.get(garden.strip().strip("'\""))
    return f"{garden} has {n} raised beds." if n is not None else f"No plot named {garden!r}; plots: {sorted(BEDS)}."


def staff_extension(name: str) -> str:
    """The office phone extension of a staff member (by full name)."""
    n = EXTENSIONS.get(name.strip().strip("'\""))
    return f"{name}'s extension is {n}." if n is not None else f"No staff member named {name!r}."


def multiply(a: int, b: int) -> int:
    """Multiply two integers exactly."""
    return int(a) * int(b)


def add(a: int, b: int) -> int:
    """Add two integers exactly."""
    return int(a) + int(b)


TOOLS = [raised_bed_count, staff_extension, multiply, add]


def tasks() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for garden, n in BEDS.items():
        out.append({"kind": "lookup", "question": f"How many raised beds does {garden} have?", "expected": n})
    for name, n in EXTENSIONS.items():
        out.append({"kind": "lookup", "question": f"What is {name}'s phone extension?", "expected": n})
    for a, b in PRODUCTS:
        out.append({"kind": "calculator", "question": f"What is {a} times {b}?", "expected": a * b})
    gardens = list(BEDS)
    for i in range(6):
        g1, g2 = gardens[i], gardens[(i + 3) % len(gardens)]
        out.append({"kind": "two-step", "question": f"How many raised beds do {g1} and {g2} have together?",
                    "expected": BEDS[g1] + BEDS[g2]})
    for i, kg in enumerate((14, 23, 37, 48, 56, 71)):
        g = gardens[(i + 1) % len(gardens)]
        out.append({"kind": "two-step", "question": f"Each raised bed in {g} needs {kg} kg of compost. How many "
                    "kg of compost do all its beds need?", "expected": BEDS[g] * kg})
    for i, t in enumerate(out):
        t["id"] = f"t{i:02d}"
    return out


def succeeded(answer: str, expected: int) -> bool:
    return str(expected) in re.sub(r"(?<=\d)[,_ ](?=\d{3}\b)", "", answer)


def settings(system: str, base_url: str, cloud_model: str, slm: str, max_tokens: int) -> dict[str, Any]:
    return {"model": slm, "base_url": base_url, "cloud_model": cloud_model, "max_tokens": max_tokens,
            "timeout": 300.0, **SYSTEMS[system]}


# -- one task per framework ---------------------------------------------------------------------------------

async def run_langchain(model: Any, task: dict[str, Any]) -> dict[str, Any]:
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_hybrid_llm.callbacks import HybridLedgerCallbackHandler
    from langgraph.errors import GraphRecursionError

    agent = create_agent(model, tools=[tool(f) for f in TOOLS], system_prompt=SYSTEM_PROMPT)
    handler = HybridLedgerCallbackHandler()
    limit_hit, messages = False, []
    try:
        out = await agent.ainvoke({"messages": [{"role": "user", "content": task["question"]}]},
                                  config={"recursion_limit": STEP_LIMIT["langchain"], "callbacks": [handler]})
        messages = out["messages"]
    except GraphRecursionError:
        limit_hit = True
    calls = [(c["name"], json.dumps(c["args"], sort_keys=True)) for m in messages if isinstance(m, AIMessage)
             for c in m.tool_calls]
    answer = str(messages[-1].content) if messages and not isinstance(messages[-1], ToolMessage) else ""
    return {"answer": answer, "calls": calls, "limit_hit": limit_hit, "ledgers": handler.ledgers}


async def run_llamaindex(llm: Any, task: dict[str, Any]) -> dict[str, Any]:
    from llama_index.core.agent.workflow import AgentOutput, FunctionAgent
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.hybrid import LEDGER_KEY

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(f) for f in TOOLS], llm=llm, system_prompt=SYSTEM_PROMPT)
    handler = agent.run(user_msg=task["question"], max_iterations=STEP_LIMIT["llamaindex"])
    ledgers: list[UsageLedger] = []
    limit_hit, answer, calls = False, "", []
    try:
        async for event in handler.stream_events():
            if isinstance(event, AgentOutput) and isinstance(event.raw, dict) and LEDGER_KEY in event.raw:
                ledgers.append(UsageLedger.model_validate(event.raw[LEDGER_KEY]))
        result = await handler
        answer = str(result.response.content or "")
        calls = [(c.tool_name, json.dumps(c.tool_kwargs, sort_keys=True)) for c in result.tool_calls]
    except Exception as e:  # LlamaIndex reports its step limit as a WorkflowRuntimeError
        if "max iterations" not in str(e).lower():
            raise
        limit_hit = True
    return {"answer": answer, "calls": calls, "limit_hit": limit_hit, "ledgers": ledgers}


def make_model(framework: str, kwargs: dict[str, Any]) -> Any:
    if framework == "langchain":
        from langchain_hybrid_llm import HybridChatModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HybridChatModel(**kwargs)
    from llama_index.llms.hybrid import HybridChatModel as LlamaIndexModel

    return LlamaIndexModel(**kwargs)


def record(task: dict[str, Any], out: dict[str, Any], seconds: float) -> dict[str, Any]:
    ledger = sum(out["ledgers"], UsageLedger())
    calls = out["calls"]
    repeated = len(calls) - len(set(calls))
    return {
        "id": task["id"], "kind": task["kind"], "expected": task["expected"], "answer": out["answer"][:500],
        "success": succeeded(out["answer"], task["expected"]), "tool_calls": len(calls), "calls": calls,
        "turns": len(out["ledgers"]), "repeated_calls": repeated, "limit_hit": out["limit_hit"],
        "loop": bool(repeated) or out["limit_hit"], "seconds": round(seconds, 2),
        "ledger": ledger.model_dump(),
    }


async def run_config(framework: str, system: str, todo: list[dict[str, Any]], kwargs: dict[str, Any],
                     out_path: Path, concurrency: int) -> None:
    model = make_model(framework, kwargs)
    runner = run_langchain if framework == "langchain" else run_llamaindex
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(todo), desc=f"{framework}/{system}", unit="task")

    async def one(task: dict[str, Any]) -> None:
        async with gate:
            t0 = time.perf_counter()
            out = await runner(model, task)
            rec = record(task, out, time.perf_counter() - t0)
            with out_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.update(1)

    await asyncio.gather(*(one(t) for t in todo))
    bar.close()


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- summary ----------------------------------------------------------------------------------------------

def summarize(ids: list[str], records: Path) -> dict[str, Any]:
    """Rows per framework and system over the tasks that system has answered; cost ratios against cloud-only
    over the tasks both answered (a partial run says so in ``tasks``)."""
    rows: dict[str, dict[str, Any]] = {}
    for framework in FRAMEWORKS:
        recs = {s: {r["id"]: r for r in load(records / f"{framework}-{s}.jsonl")} for s in SYSTEMS}
        for system in SYSTEMS:
            done = [i for i in ids if i in recs[system]]
            if not done:
                continue
            rs = [recs[system][i] for i in done]
            ledgers = [UsageLedger.model_validate(r["ledger"]) for r in rs]
            total = sum(ledgers, UsageLedger())
            ok = sum(r["success"] for r in rs)
            lo, hi = wilson_interval(ok, len(rs))
            paired = [i for i in done if i in recs["cloud"]]
            mine = [UsageLedger.model_validate(recs[system][i]["ledger"]) for i in paired]
            cloud = [UsageLedger.model_validate(recs["cloud"][i]["ledger"]) for i in paired]
            cloud_sh = sum(self_hosted_cost(g, SelfHostedPrices()) for g in cloud)
            cloud_shared = sum(self_hosted_cost(g, SelfHostedPrices(), server_cache=True) for g in cloud)
            cloud_api = sum(g.cost_usd for g in cloud)
            rows[f"{framework}/{system}"] = {
                "framework": framework, "system": system, "tasks": len(rs), "successes": ok,
                "success": ok / len(rs), "success_ci95": [lo, hi],
                "by_kind": {k: (sum(r["success"] for r in rs if r["kind"] == k) / n if (n := sum(r["kind"] == k for r in rs))
                                else None) for k in ("lookup", "calculator", "two-step")},
                "tool_calls_per_task": sum(r["tool_calls"] for r in rs) / len(rs),
                "turns_per_task": sum(r["turns"] for r in rs) / len(rs),
                "tasks_with_loops": sum(r["loop"] for r in rs),
                "tasks_at_step_limit": sum(r["limit_hit"] for r in rs),
                "repeated_tool_calls_guarded": total.repeated_tool_calls,
                "decision_checks": total.decision_checks,
                "cloud_share": total.cloud_tokens / total.generated_tokens if total.generated_tokens else 0.0,
                "tasks_paired_with_cloud_only": len(paired),
                "self_hosted_cost_vs_cloud_only": (sum(self_hosted_cost(g, SelfHostedPrices()) for g in mine) / cloud_sh
                                                   if cloud_sh else None),
                "self_hosted_shared_cache_cost_vs_cloud_only": (
                    sum(self_hosted_cost(g, SelfHostedPrices(), server_cache=True) for g in mine) / cloud_shared
                    if cloud_shared else None),
                "api_cost_vs_cloud_only": sum(g.cost_usd for g in mine) / cloud_api if cloud_api else None,
                "api_cost_vs_own_counterfactual": total.cost_usd / total.cloud_only_cost_usd
                if total.cloud_only_cost_usd else None,
                "seconds_per_task": sum(r["seconds"] for r in rs) / len(rs),
            }
    targets = {}
    for framework in FRAMEWORKS:
        h, c = rows.get(f"{framework}/hybrid"), rows.get(f"{framework}/cloud")
        if h and c:
            targets[framework] = {
                "success_vs_cloud_only": h["success"] / c["success"] if c["success"] else None,
                "success_target_0.95_met": c["success"] > 0 and h["success"] >= 0.95 * c["success"],
                "self_hosted_cost_vs_cloud_only": h["self_hosted_cost_vs_cloud_only"],
                "self_hosted_cost_target_0.25_met": (h["self_hosted_cost_vs_cloud_only"] or 1) <= 0.25,
                "self_hosted_shared_cache_cost_vs_cloud_only": h["self_hosted_shared_cache_cost_vs_cloud_only"],
                "self_hosted_shared_cache_cost_target_0.25_met":
                    (h["self_hosted_shared_cache_cost_vs_cloud_only"] or 1) <= 0.25,
                "no_task_at_step_limit": h["tasks_at_step_limit"] == 0,
            }
    return {"rows": rows, "targets": targets}


def write_doc(summary: dict[str, Any], max_tokens: int) -> None:
    head = ["framework", "system", "tasks", "success [95% CI]", "lookup / calc / two-step", "tool calls",
            "turns", "loops (step limit)", "repeats guarded", "cloud share", "self-hosted cost / cloud-only",
            "self-hosted, shared cache", "API cost / cloud-only"]
    body = []
    for r in summary["rows"].values():
        k = {kind: "-" if v is None else f"{v:.2f}" for kind, v in r["by_kind"].items()}
        body.append([r["framework"], r["system"], r["tasks"],
                     f"{r['success']:.2f} ({r['success_ci95'][0]:.2f}-{r['success_ci95'][1]:.2f})",
                     f"{k['lookup']} / {k['calculator']} / {k['two-step']}",
                     f"{r['tool_calls_per_task']:.2f}", f"{r['turns_per_task']:.2f}",
                     f"{r['tasks_with_loops']} ({r['tasks_at_step_limit']})", r["repeated_tool_calls_guarded"],
                     f"{r['cloud_share']:.1%}",
                     *("-" if r[key] is None else f"{r[key]:.2f}x" for key in (
                         "self_hosted_cost_vs_cloud_only", "self_hosted_shared_cache_cost_vs_cloud_only",
                         "api_cost_vs_cloud_only"))])
    write_section(f"agents_max{max_tokens}", markdown_table(head, body), DOC)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=8, help="tasks in flight per configuration")
    ap.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    ap.add_argument("--stride", type=int, default=1, help="every k-th task (a sample that keeps every kind)")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="cap on each turn's answer")
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args(argv)
    all_tasks = tasks()[:: args.stride][: args.limit]
    records = RECORDS / f"max{args.max_tokens}"
    records.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        status = start_server(VLLMServerConfig())
        slm = str(resolve_model(DEFAULT_SLM))
        for framework in args.frameworks.split(","):
            for system in args.systems.split(","):
                path = records / f"{framework}-{system}.jsonl"
                done = {r["id"] for r in load(path)}
                todo = [t for t in all_tasks if t["id"] not in done]
                if todo:
                    kwargs = settings(system, status.base_url, VLLMServerConfig().name, slm, args.max_tokens)
                    asyncio.run(run_config(framework, system, todo, kwargs, path, args.concurrency))
    summary = summarize([t["id"] for t in all_tasks], records)
    by_cap = json.loads(OUT.read_text()).get("by_max_tokens", {}) if OUT.exists() else {}
    by_cap[str(args.max_tokens)] = {"tasks": len(all_tasks), **summary}
    OUT.write_text(json.dumps({"machine": platform.platform(), "step_limits": STEP_LIMIT,
                               "by_max_tokens": dict(sorted(by_cap.items(), key=lambda kv: int(kv[0])))},
                              indent=2) + "\n")
    write_doc(summary, args.max_tokens)
    print(json.dumps(summary["targets"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
