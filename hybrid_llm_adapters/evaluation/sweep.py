"""Threshold sweeps: one task, SLM-only and cloud-only baselines, and the hybrid at each threshold; a table
and the reward paper's plots (threshold vs accuracy, vs activation ratio, vs throughput; accuracy vs cost)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import RouterConfig
from .cost import Deployments
from .runner import EvalConfig, EvalRun, Evaluator, summarize
from .tasks import Problem


def sweep_configs(task: str, router: RouterConfig, thresholds: list[float], cloud_mode: str = "replace",
                  max_new_tokens: int | None = None) -> list[EvalConfig]:
    """The baselines first, then one hybrid configuration per threshold."""
    common: dict[str, Any] = {"task": task, "max_new_tokens": max_new_tokens}
    configs = [EvalConfig(system="slm", **common), EvalConfig(system="cloud", **common)]
    for t in thresholds:
        r = router.model_copy(update={"threshold": t, "target_activation": None})
        configs.append(EvalConfig(system="hybrid", router=RouterConfig.model_validate(r.model_dump()),
                                  cloud_mode=cloud_mode, **common))  # type: ignore[arg-type]
    return configs


def run_interleaved(engine: Any, configs: list[EvalConfig], problems: list[Problem], out_dir: Path,
                    progress: bool = True, deadline: float | None = None) -> list[EvalRun]:
    """Answer problem by problem across all configurations, so that a run stopped at any point leaves every
    configuration with the same problems done (comparable), and a rerun resumes where it stopped.
    ``deadline`` (``time.monotonic()`` seconds) stops before the next answer once passed."""
    import time

    from tqdm import tqdm

    runs = [EvalRun.open(c, out_dir / f"{c.name()}.jsonl") for c in configs]
    evaluators = [Evaluator(engine, c) for c in configs]
    todo = [p for p in problems if any(p.id not in r.records for r in runs)]
    bar = tqdm(total=len(todo) * len(configs), disable=not progress, unit="answer", desc=configs[0].task)
    for problem in todo:
        for run, ev in zip(runs, evaluators, strict=True):
            if deadline is not None and time.monotonic() > deadline:
                bar.close()
                return runs
            if problem.id not in run.records:
                bar.set_postfix_str(run.config.name())
                run.add(ev.answer(problem))
            bar.update()
    bar.close()
    return runs


def common_records(runs: list[EvalRun], problems: list[Problem]) -> dict[str, list[dict[str, Any]]]:
    """Each run's records restricted to the problems every run has answered (in problem order)."""
    ids = [p.id for p in problems if all(p.id in r.records for r in runs)]
    return {r.config.name(): [r.records[i] for i in ids] for r in runs}


def summarize_runs(runs: list[EvalRun], problems: list[Problem], deployments: Deployments | None = None
                   ) -> list[dict[str, Any]]:
    rows = []
    records = common_records(runs, problems)
    cloud = next((summarize(records[r.config.name()], deployments) for r in runs if r.config.system == "cloud"), None)
    for run in runs:
        s = summarize(records[run.config.name()], deployments)
        s.update({"name": run.config.name(), "system": run.config.system, "router": run.config.router.kind,
                  "threshold": run.config.router.threshold if run.config.system == "hybrid" else None,
                  "cloud_mode": run.config.cloud_mode if run.config.system == "hybrid" else None})
        if cloud and cloud["problems"]:
            s["accuracy_vs_cloud_only"] = s["accuracy"] / cloud["accuracy"] if cloud["accuracy"] else None
            s["tokens_per_s_vs_cloud_only"] = s["tokens_per_s"] / cloud["tokens_per_s"] if cloud["tokens_per_s"] else None
            s["api_cost_vs_cloud_only"] = s["api_cost_usd"] / cloud["api_cost_usd"] if cloud["api_cost_usd"] else None
            s["self_hosted_cost_vs_cloud_only"] = (s["self_hosted_cost_usd"] / cloud["self_hosted_cost_usd"]
                                                   if cloud["self_hosted_cost_usd"] else None)
            s["remote_speed_vs_cloud_only"] = (s["remote_projected_tokens_per_s"] / cloud["remote_projected_tokens_per_s"]
                                               if cloud["remote_projected_tokens_per_s"] else None)
        rows.append(s)
    return rows


def plot_sweep(rows: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """Threshold vs accuracy / activation / throughput (baselines as horizontal lines), and accuracy vs API
    cost with SLM-only and cloud-only marked. PNGs, matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hybrid = sorted((r for r in rows if r["system"] == "hybrid" and r["threshold"] is not None),
                    key=lambda r: r["threshold"])
    base = {r["system"]: r for r in rows if r["system"] in ("slm", "cloud")}
    paths = []
    for key, ylabel, fname in (("accuracy", "accuracy", "threshold_vs_accuracy.png"),
                               ("activation_ratio", "activation ratio (cloud tokens)", "threshold_vs_activation.png"),
                               ("tokens_per_s", "tokens / s", "threshold_vs_throughput.png")):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        by_curve: dict[str, list[dict[str, Any]]] = {}
        for r in hybrid:
            by_curve.setdefault(f"{r['router']} ({r['cloud_mode']})", []).append(r)
        for label, pts in by_curve.items():
            ax.plot([p["threshold"] for p in pts], [p[key] for p in pts], marker="o", label=label)
        for system, style in (("slm", ":"), ("cloud", "--")):
            if system in base and key != "activation_ratio":
                ax.axhline(base[system][key], linestyle=style, color="gray", label=f"{system}-only")
        ax.set_xlabel("router threshold")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        marker = {"slm": "s", "cloud": "*"}.get(r["system"], "o")
        ax.scatter(r["api_cost_usd"], r["accuracy"], marker=marker, s=60 if marker == "*" else 30)
        ax.annotate(r["name"], (r["api_cost_usd"], r["accuracy"]), fontsize=6)
    ax.set_xlabel("API cost (USD, whole subset)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = out_dir / "accuracy_vs_cost.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [*paths, path]


def write_summary(rows: list[dict[str, Any]], path: Path, **meta: Any) -> None:
    path.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
