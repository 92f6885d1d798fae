"""What the hybrid costs against cloud-only, side by side in one run, on a priced API and a self-hosted server.

Rows (greedy, entropy router at 1.0, the default threshold when they were recorded, through the real vLLM
path): cloud-only (one streamed request per problem), per-token replace, block_verify, hand-off (replace; the cloud finishes the answer when the
router flags densely), the cost guard (hand-off + max_cost_ratio=1.0) run under each priced sheet, and the
package defaults under the 10 % sheet (auto cloud mode, guard and hand-off as shipped). Every
row answers the same GSM8K and HumanEval problems, so accuracy is paired (McNemar against cloud-only).

Price views (the sheets are the shipped presets; see hybrid_llm_adapters/assets/price_presets.json):
- priced, 10 % cached input ("example-cached-10pct": input 1, cached input 0.1, output 4 per Mtok, cached input
  billed by the sheet's rules: the prefix the request already sent, no minimum);
- priced, the same with a 1,024-token minimum cacheable prompt ("example-cached-10pct-min1024");
- self-hosted (``evaluation.cost.SelfHostedPrices``: prefill, cached prefill and decode; an ideal prefix cache).

Rows other than the guard's are run once under the 10 % sheet (their decisions do not depend on prices); their
1,024-minimum cost re-bills the same calls with nothing cached, which is exact when every call's prompt is
shorter than 1,024 tokens (the JSON says how many requests were not, for which the figure is an upper bound).

    python benchmarks/cost.py --problems 50 --concurrency 16

Records are resumable (benchmarks/results/cost/*.jsonl); writes benchmarks/results/cost.json, the table in
docs/cost.md and the short table in README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from readme_table import markdown_table, write_section

from hybrid_llm_adapters import CloudConfig, HybridEngine, PriceTable, RouterConfig
from hybrid_llm_adapters.accounting import UsageLedger, call_cost
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.config import FIRST_ENTROPY_THRESHOLD
from hybrid_llm_adapters.devtools.vllm_server import VLLMServerConfig, start_server
from hybrid_llm_adapters.evaluation.cost import SelfHostedPrices, self_hosted_cost
from hybrid_llm_adapters.evaluation.runner import EvalConfig, EvalRun, run_eval
from hybrid_llm_adapters.evaluation.stats import mcnemar_p, wilson_interval
from hybrid_llm_adapters.evaluation.tasks import get_task
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.local.threads import apply_slm_threads
from hybrid_llm_adapters.models import DEFAULT_SLM, resolve_model
from hybrid_llm_adapters.routing import build_router

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "results" / "cost"
OUT = HERE / "results" / "cost.json"
DOC = HERE.parent / "docs" / "cost.md"
DATA = {"gsm8k": HERE.parent / "data" / "gsm8k" / "test_public.jsonl", "humaneval": None}
SHEET_A, SHEET_B = "example-cached-10pct", "example-cached-10pct-min1024"
NO_GUARD = {"max_cost_ratio": None}
# entropy 1.0: the default threshold when these rows were recorded (the quality frontier has since moved it
# to 0.27; the quality benchmark's `defaults` rows measure the current default with the same policies)
RECORDED_ROUTER = RouterConfig(kind="entropy", threshold=FIRST_ENTROPY_THRESHOLD)


def rows() -> list[tuple[str, dict[str, Any]]]:
    """(label, EvalConfig fields) for every row; the guard rows are billed and guarded by their own sheet."""
    hybrid = {"system": "hybrid", "router": RECORDED_ROUTER}
    return [
        ("cloud-only", {"system": "cloud", "prices": SHEET_A}),
        ("replace", {**hybrid, "prices": SHEET_A, "generation": {**NO_GUARD, "handoff": "off"}}),
        ("block_verify", {**hybrid, "cloud_mode": "block_verify", "prices": SHEET_A,
                          "generation": {**NO_GUARD, "handoff": "off"}}),
        ("hand-off", {**hybrid, "prices": SHEET_A, "generation": {**NO_GUARD, "handoff": "on"}}),
        ("guard, 10 % sheet", {**hybrid, "prices": SHEET_A, "generation": {"max_cost_ratio": 1.0, "handoff": "on"}}),
        ("guard, 1,024 min", {**hybrid, "prices": SHEET_B, "generation": {"max_cost_ratio": 1.0, "handoff": "on"}}),
        # what a user gets under the 10 % sheet without setting anything: the auto cloud mode, guard and hand-off
        ("defaults, 10 % sheet", {"system": "hybrid", "router": RouterConfig(), "cloud_mode": "auto",
                                  "prices": SHEET_A, "generation": {}}),
    ]


def sheet_b_cost(ledger: UsageLedger) -> tuple[float, bool]:
    """The same calls billed by the 1,024-minimum sheet with nothing cached; exact when no call's prompt
    reached 1,024 tokens (its prompts are at most prompt + generated tokens long)."""
    b = PriceTable.preset(SHEET_B)
    exact = ledger.prompt_tokens + ledger.generated_tokens < b.min_cached_prefix
    cost = call_cost(b, ledger.billed_prompt_tokens, ledger.billed_completion_tokens) - b.per_call
    return cost + b.per_call * ledger.cloud_calls, exact


def summarize_row(label: str, sheet: str, records: list[dict[str, Any]], cloud: list[dict[str, Any]]) -> dict:
    ledgers = [UsageLedger(**r["ledger"]) for r in records]
    ids = {r["id"] for r in records}  # the cloud-only answers to the same problems (a row may cover a prefix)
    cloud_ledgers = {r["id"]: UsageLedger(**r["ledger"]) for r in cloud if r["id"] in ids}
    total = sum(ledgers, UsageLedger())
    n, correct = len(records), sum(r["correct"] for r in records)
    cloud_right = {r["id"]: r["correct"] for r in cloud}
    only_row = sum(r["correct"] and not cloud_right[r["id"]] for r in records)
    only_cloud = sum(cloud_right[r["id"]] and not r["correct"] for r in records)
    self_hosted = SelfHostedPrices()
    cloud_self = sum(self_hosted_cost(x, self_hosted) for x in cloud_ledgers.values())
    cloud_a = sum(x.cost_usd for x in cloud_ledgers.values())
    cloud_b = sum(sheet_b_cost(x)[0] for x in cloud_ledgers.values())
    if sheet == SHEET_B:  # a guard row run under the 1,024-minimum sheet: its ledger is that bill
        cost_b, inexact = total.cost_usd, 0
        cost_a = None
    else:
        billed_b = [sheet_b_cost(x) for x in ledgers]
        cost_b, inexact = sum(c for c, _ in billed_b), sum(not exact for _, exact in billed_b)
        cost_a = total.cost_usd
    per_request = [x.cost_usd / x.cloud_only_cost_usd for x in ledgers if x.cloud_only_cost_usd > 0]
    lo, hi = wilson_interval(correct, n)
    return {
        "row": label, "price_sheet_run_under": sheet, "problems": n, "correct": correct,
        "accuracy": correct / n if n else 0.0, "accuracy_ci95": [lo, hi],
        "mcnemar_p_vs_cloud_only": mcnemar_p(only_row, only_cloud),
        "right_only_here": only_row, "right_only_cloud_only": only_cloud,
        "activation_ratio": total.activation_ratio,
        "handed_off_share": total.handed_off_tokens / total.generated_tokens if total.generated_tokens else 0.0,
        "requests_handed_off": sum(x.handed_off_tokens > 0 for x in ledgers),
        "cost_guard_trips": total.cost_guard_trips,
        "cloud_calls_per_generated_token": total.cloud_calls / total.generated_tokens if total.generated_tokens else 0,
        "billed_prompt_tokens": total.billed_prompt_tokens, "billed_completion_tokens": total.billed_completion_tokens,
        "cost_10pct_vs_cloud_only": cost_a / cloud_a if cost_a is not None and cloud_a else None,
        "cost_min1024_vs_cloud_only": cost_b / cloud_b if cloud_b else None,
        "min1024_requests_upper_bound": inexact,
        "self_hosted_vs_cloud_only": sum(self_hosted_cost(x, self_hosted) for x in ledgers) / cloud_self
        if cloud_self else None,
        "max_request_cost_vs_own_cloud_only": max(per_request) if per_request else None,
        "requests_above_own_cloud_only": sum(r > 1 + 1e-9 for r in per_request),
        "tokens_per_s": sum(r["tokens"] for r in records) / sum(r["wall_s"] for r in records)
        if records else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=50, help="problems per task (the first N)")
    ap.add_argument("--tasks", default="gsm8k,humaneval")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--only", default=None, help="answer only rows whose label contains this (resumable "
                    "sittings); the other rows are summarized from their records")
    ap.add_argument("--summarize-only", action="store_true",
                    help="answer nothing: summarize the records already written (a run stopped between sittings)")
    ap.add_argument("--block-verify-problems", type=int, default=None,
                    help="block_verify answers only the first N problems per task (the slowest row; default: all)")
    args = ap.parse_args()
    args.block_verify_problems = min(args.block_verify_problems or args.problems, args.problems)

    server = start_server(VLLMServerConfig())
    apply_slm_threads(server.base_url)
    local = load_local_model(resolve_model(DEFAULT_SLM))
    cloud = CloudClient(CloudConfig(base_url=server.base_url, model=VLLMServerConfig().name, timeout=300,
                                    max_retries=3))
    router = build_router(RECORDED_ROUTER, local.tokenizer, local.hidden_size)
    engine = HybridEngine(local, router, cloud)
    tasks = args.tasks.split(",")
    problems = {task: get_task(task).load(DATA.get(task), limit=args.problems) for task in tasks}
    records: dict[str, dict[str, list[dict[str, Any]]]] = {task: {} for task in tasks}
    # block_verify last and on a prefix of the problems: its echo calls never hit vLLM's prefix cache, so it is
    # the slowest row here by far (docs/cost.md)
    for label, fields in sorted(rows(), key=lambda row: row[0] == "block_verify"):
        answer = not args.summarize_only and not (args.only and args.only not in label)
        for task in tasks:
            subset = problems[task][: args.block_verify_problems] if label == "block_verify" else problems[task]
            config = EvalConfig(task=task, label=f"{label} ({task})", **fields)
            path = RECORDS / f"{task}-{label.replace(' ', '_').replace(',', '').replace('%', 'pct')}.jsonl"
            run = (run_eval(engine, config, subset, path, concurrency=args.concurrency) if answer
                   else EvalRun.open(config, path))  # the rows not run in this sitting: their records
            records[task][label] = [run.records[p.id] for p in subset if p.id in run.records]
    results = {task: [summarize_row(label, fields.get("prices", SHEET_A), by_row[label], by_row["cloud-only"])
                      for label, fields in rows() if by_row.get(label)]  # rows with records
               for task, by_row in records.items() if "cloud-only" in by_row}
    payload = {
        "benchmark": "cost", "machine": platform.processor() or platform.machine(), "slm": DEFAULT_SLM,
        "cloud": VLLMServerConfig().name, "problems_per_task": args.problems, "concurrency_last_sitting": args.concurrency,
        "router": f"entropy, threshold {FIRST_ENTROPY_THRESHOLD}", "block_verify_problems": args.block_verify_problems, "sheets": {s: PriceTable.preset(s).model_dump() for s in (SHEET_A, SHEET_B)},
        "self_hosted_prices": SelfHostedPrices().model_dump(),
        "answer_seconds_summed": {t: {label: sum(r["wall_s"] for r in recs) for label, recs in by.items()}
                                  for t, by in records.items()},
        "tasks": results,
    }
    OUT.write_text(json.dumps(payload, indent=2))
    write_docs(payload)


def fmt_ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def write_docs(payload: dict[str, Any]) -> None:
    headers = ["task", "row", "problems", "accuracy (95 % CI)", "McNemar p vs cloud", "activation", "handed off",
               "calls/token", "priced 10 %", "priced 1,024 min", "self-hosted", "worst request"]
    table = []
    for task, summaries in payload["tasks"].items():
        for s in summaries:
            lo, hi = s["accuracy_ci95"]
            table.append([task, s["row"], s["problems"], f"{s['accuracy']:.2f} ({lo:.2f}-{hi:.2f})",
                          f"{s['mcnemar_p_vs_cloud_only']:.2f}", f"{s['activation_ratio']:.1%}",
                          f"{s['handed_off_share']:.1%}", f"{s['cloud_calls_per_generated_token']:.3f}",
                          fmt_ratio(s["cost_10pct_vs_cloud_only"]), fmt_ratio(s["cost_min1024_vs_cloud_only"]),
                          fmt_ratio(s["self_hosted_vs_cloud_only"]), fmt_ratio(s["max_request_cost_vs_own_cloud_only"])])
    n, n_bv = payload["problems_per_task"], payload["block_verify_problems"]
    bv = "" if n_bv >= n else f" (block_verify: the first {n_bv}; its McNemar test pairs it with cloud-only on those)"
    body = (f"The first {n} problems per task{bv}, greedy, {payload['router']}, real vLLM "
            f"({payload['cloud']}); costs are relative to the cloud-only row of the same run. Written by "
            "`benchmarks/cost.py` from `benchmarks/results/cost.json`.\n\n" + markdown_table(headers, table))
    write_section("cost", body, DOC)
    write_section("cost", body)


if __name__ == "__main__":
    main()
