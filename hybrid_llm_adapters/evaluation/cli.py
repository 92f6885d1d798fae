"""``hybrid-llm eval`` and ``hybrid-llm sweep``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from rich.console import Console
from rich.table import Table

from ..config import CloudMode, RouterConfig, RouterKind
from ..settings import HybridSettings
from .runner import EvalConfig, run_eval, summarize
from .sweep import plot_sweep, run_interleaved, summarize_runs, sweep_configs, write_summary
from .tasks import TASKS, get_task

console = Console()
DEFAULTS = HybridSettings()
TABLE_COLUMNS = [("name", "{}"), ("problems", "{}"), ("accuracy", "{:.3f}"), ("activation_ratio", "{:.1%}"),
                 ("tokens_per_s", "{:.2f}"), ("cloud_calls", "{}"), ("cutoff_rate", "{:.1%}"),
                 ("api_cost_usd", "{:.2e}"), ("self_hosted_cost_usd", "{:.2e}")]


def _engine(args: argparse.Namespace, needs_cloud: bool) -> Any:
    from ..engine import get_engine

    base_url = args.base_url
    if args.start_cloud and needs_cloud:
        from ..devtools.vllm_server import VLLMServerConfig, start_server

        base_url = start_server(VLLMServerConfig()).base_url
    settings = HybridSettings(model=args.model, base_url=base_url, cloud_model=args.cloud_model,
                              router="entropy" if needs_cloud else "local", timeout=args.timeout,
                              on_cloud_failure=args.on_cloud_failure)
    return get_engine(settings.engine_config())


def _router(args: argparse.Namespace) -> RouterConfig:
    return RouterConfig(kind=args.router, threshold=args.threshold, target_activation=args.target_activation,
                        reward_head=args.reward_head)


def results_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for name, _ in TABLE_COLUMNS:
        table.add_column(name, justify="left" if name == "name" else "right")
    for row in rows:
        table.add_row(*(fmt.format(row[name]) if row.get(name) is not None else "-" for name, fmt in TABLE_COLUMNS))
    return table


def cmd_eval(args: argparse.Namespace) -> int:
    config = EvalConfig(task=args.task, system=args.system, router=_router(args), cloud_mode=args.cloud_mode,
                        max_new_tokens=args.max_tokens)
    problems = get_task(args.task).load(args.data, args.limit, args.offset)
    out = Path(args.out) if args.out else Path("eval-results") / f"{args.task}-{config.name()}.jsonl"
    engine = _engine(args, needs_cloud=args.system != "slm")
    run = run_eval(engine, config, problems, out, progress=True, concurrency=args.concurrency)
    records = [run.records[p.id] for p in problems if p.id in run.records]
    summary = {"task": args.task, "config": config.identity(), "records": str(out), **summarize(records)}
    summary_path = out.with_suffix(".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(results_table([{"name": config.name(), **summary}], f"{args.task}: {len(records)} problems"))
    console.print(f"records: {out}\nsummary: {summary_path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    thresholds = [float(x) for x in args.thresholds.split(",") if x.strip()]
    configs = sweep_configs(args.task, _router(args), thresholds, args.cloud_mode, args.max_tokens)
    problems = get_task(args.task).load(args.data, args.limit, args.offset)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = _engine(args, needs_cloud=True)
    runs = run_interleaved(engine, configs, problems, out_dir)
    rows = summarize_runs(runs, problems)
    title = f"{args.task}, {rows[0]['problems'] if rows else 0} problems, router {args.router}"
    write_summary(rows, out_dir / "sweep.json", task=args.task, router=args.router, thresholds=thresholds)
    plots = plot_sweep(rows, out_dir, title)
    console.print(results_table(rows, title))
    console.print("plots: " + ", ".join(str(p) for p in plots))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--data", default=None, help="the task's data file (HumanEval and MMLU default to the pip copies)")
    p.add_argument("--limit", type=int, default=None, help="at most this many problems")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--router", default="entropy", choices=list(get_args(RouterKind)))
    p.add_argument("--reward-head", default=None)
    p.add_argument("--cloud-mode", default="replace", choices=list(get_args(CloudMode)))
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per answer (default: the task's)")
    p.add_argument("--model", "--slm", dest="model", default=DEFAULTS.model, help="the on-device SLM")
    p.add_argument("--base-url", "--cloud-url", dest="base_url", default=None,
                   help="the cloud's OpenAI-compatible base URL (default: $HYBRID_LLM_CLOUD_URL or local vLLM)")
    p.add_argument("--cloud-model", default=None)
    p.add_argument("--start-cloud", action="store_true", help="start the local vLLM cloud first")
    p.add_argument("--on-cloud-failure", "--on-failure", dest="on_cloud_failure", default=DEFAULTS.on_cloud_failure,
                   choices=["raise", "local"], help="after retries: raise, or go on locally (the record says so)")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout, help="seconds per cloud HTTP request")
    p.add_argument("--concurrency", type=int, default=8,
                   help="problems answered at once (they share batched SLM forwards; answers are as one by one)")


def add_evaluation_commands(sub: Any) -> None:
    ev = sub.add_parser("eval", help="score a task with the hybrid, SLM-only or cloud-only (resumable)")
    _common(ev)
    ev.add_argument("--system", default="hybrid", choices=["hybrid", "slm", "cloud"])
    knob = ev.add_mutually_exclusive_group()
    knob.add_argument("--threshold", type=float, default=None)
    knob.add_argument("--target-activation", type=float, default=None)
    ev.add_argument("--out", default=None, help="records JSONL (rerun to resume); default eval-results/TASK-CONFIG.jsonl")
    ev.set_defaults(func=cmd_eval)

    sw = sub.add_parser("sweep", help="thresholds in; a table, JSON and plots out (with both baselines)")
    _common(sw)
    sw.add_argument("--thresholds", required=True, help="comma-separated router thresholds, e.g. 0.5,1,2")
    sw.add_argument("--out-dir", default="eval-results/sweep")
    sw.set_defaults(threshold=None, target_activation=None, func=cmd_sweep)
