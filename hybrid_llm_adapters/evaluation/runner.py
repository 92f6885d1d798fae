"""Run one evaluation configuration over a task, resumably, and summarize it.

Each configuration writes one JSONL file: a header line with the configuration, then one record per
problem. A rerun skips the problems already recorded, so a long run (a cloud-only pass over 100 GSM8K
problems takes about an hour on 2 cores) can be stopped and continued; a header that disagrees with the
requested configuration is refused rather than mixed in.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from ..accounting import UsageLedger
from ..config import CloudMode, GenerationConfig, PriceTable, RouterConfig
from ..engine import HybridEngine
from ..errors import ConfigError
from .cost import Deployments, api_cost, remote_seconds, self_hosted_cost
from .stats import wilson_interval
from .tasks import Problem, get_task

System = Literal["hybrid", "slm", "cloud"]


class EvalConfig(BaseModel):
    """One evaluated configuration: the task, which system answers, and how the hybrid routes."""

    model_config = ConfigDict(extra="forbid")

    task: str = "gsm8k"
    system: System = Field("hybrid", description="hybrid; slm: the SLM alone; cloud: the cloud LLM alone, one call")
    router: RouterConfig = Field(default_factory=RouterConfig)
    cloud_mode: CloudMode = "replace"
    max_new_tokens: int | None = Field(None, ge=1, description="None: the task's default")
    generation: dict[str, Any] = Field(default_factory=dict, description="further GenerationConfig settings, "
                                       "e.g. {'max_cost_ratio': None, 'handoff': 'on'}")
    prices: str | None = Field(None, description="a shipped PriceTable preset the requests are billed and "
                               "guarded by (None: the engine's prices)")
    label: str | None = None

    def name(self) -> str:
        if self.label:
            return self.label
        if self.system != "hybrid":
            return f"{self.system}-only"
        r = self.router
        knob = (f"act{r.target_activation}" if r.target_activation is not None else f"t{r.threshold}")
        return f"{r.kind}-{knob}-{self.cloud_mode}"

    def same_as(self, stored: dict[str, Any] | None) -> bool:
        """True when ``stored`` (a records file's header) describes this configuration; fields added to the
        configuration models since it was written count at their defaults."""
        try:
            return stored is not None and EvalConfig.model_validate(stored).identity() == self.identity()
        except (ValueError, TypeError):
            return False

    def identity(self) -> dict[str, Any]:
        """What must match for records to be resumed into this configuration. The SLM alone and the cloud alone
        never route, so their router and cloud mode are not part of it (a new default threshold keeps them)."""
        routing = {"router", "cloud_mode"} if self.system != "hybrid" else set()
        data = self.model_dump(mode="json", exclude={"label", *routing})
        data["max_new_tokens"] = self.max_new_tokens or get_task(self.task).max_new_tokens
        return data


@dataclass
class EvalRun:
    """A configuration and its per-problem records (in file order)."""

    config: EvalConfig
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def open(cls, config: EvalConfig, path: Path | None) -> EvalRun:
        run = cls(config, {}, path)
        if path is None:
            return run
        if path.exists() and path.stat().st_size:
            lines = path.read_text().splitlines()
            header = json.loads(lines[0])
            if not config.same_as(header.get("config")):
                raise ConfigError(
                    f"{path} holds results of a different configuration ({header.get('config')}); pass another "
                    "--out, or delete the file to start over."
                )
            for line in lines[1:]:
                if line.strip():
                    rec = json.loads(line)
                    run.records[rec["id"]] = rec
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"config": config.identity()}) + "\n")
        return run

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["id"]] = record
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class Evaluator:
    """Answers problems for one configuration on a shared engine (the SLM is loaded once per process)."""

    def __init__(self, engine: Any, config: EvalConfig):
        from ..routing import build_router

        if config.prices is not None:  # the same SLM and cloud, billed by another sheet
            engine = HybridEngine(engine.local, engine.router, engine.cloud, PriceTable.preset(config.prices))
        self.engine, self.config = engine, config
        self.task = get_task(config.task)
        self.gen = GenerationConfig(max_new_tokens=config.max_new_tokens or self.task.max_new_tokens,
                                    cloud_mode=config.cloud_mode, **config.generation)
        if config.system == "slm":
            self.router = build_router(RouterConfig(kind="local"), engine.tokenizer, engine.local.hidden_size)
        elif config.system == "cloud":  # one streamed request per problem, as a cloud-only deployment asks
            self.router = build_router(RouterConfig(kind="cloud"), engine.tokenizer, engine.local.hidden_size)
        else:
            self.router = build_router(config.router, engine.tokenizer, engine.local.hidden_size, engine.prices,
                                       engine.cloud.config.model if engine.cloud else None)
        if config.system != "slm" and engine.cloud is None:
            raise ConfigError(f"system {config.system!r} needs a cloud; build the engine with a CloudConfig.")

    def answer(self, problem: Problem) -> dict[str, Any]:
        ids = self.engine.render(problem.messages)
        start = time.perf_counter()
        result = self.engine.generate(ids, self.gen, router=self.router)
        text, n_tokens, finish, ledger = result.text, len(result.token_ids), result.finish_reason, result.ledger
        wall = time.perf_counter() - start
        score = self.task.score(problem, text)
        return {"id": problem.id, "correct": score.correct, "extracted": score.extracted, "detail": score.detail,
                "reference": problem.reference, "completion": text, "finish_reason": finish, "tokens": n_tokens,
                "wall_s": wall, "ledger": ledger.model_dump(exclude={"generated_tokens", "activation_ratio",
                                                                      "savings_usd", "calls_per_checked_token"})}


def run_eval(engine: Any, config: EvalConfig, problems: list[Problem], out: Path | None = None,
             progress: bool = True, concurrency: int = 1, deadline: float | None = None) -> EvalRun:
    """Answer every problem not yet in ``out``; returns the run with all its records.

    ``concurrency`` problems are answered at once: their SLM steps share batched forwards and their cloud
    calls overlap, and each answer is the one it gets alone. Records are appended as answers finish.
    ``deadline`` (``time.monotonic()`` seconds): no problem starts after it; those started finish.
    """
    run = EvalRun.open(config, out)
    evaluator = Evaluator(engine, config)
    todo = [p for p in problems if p.id not in run.records]

    def answer(problem: Problem) -> dict[str, Any] | None:
        return None if deadline is not None and time.monotonic() > deadline else evaluator.answer(problem)

    with ThreadPoolExecutor(max(1, concurrency)) as pool, \
            tqdm(total=len(todo), desc=config.name(), disable=not progress, unit="problem") as bar:
        for future in as_completed([pool.submit(answer, p) for p in todo]):
            record = future.result()
            if record is not None:
                run.add(record)  # one thread appends: as_completed yields in this thread
            bar.update()
    return run


def summarize(records: list[dict[str, Any]], deployments: Deployments | None = None) -> dict[str, Any]:
    """Accuracy (with a 95 % Wilson interval), activation, speed, calls, tokens, and cost in both deployments."""
    dep = deployments or Deployments()
    n = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    ledgers = [UsageLedger(**r["ledger"]) for r in records]
    total = sum(ledgers, UsageLedger()) if ledgers else UsageLedger()
    tokens = sum(r["tokens"] for r in records)
    wall = sum(r["wall_s"] for r in records)
    busy = total.local_seconds + total.cloud_seconds
    remote = sum(remote_seconds(x, dep.remote) for x in ledgers)
    cloud_only_self = sum(
        (x.prompt_tokens * dep.self_hosted.prefill_per_mtok + x.generated_tokens * dep.self_hosted.decode_per_mtok) / 1e6
        + dep.self_hosted.per_call for x in ledgers)
    lo, hi = wilson_interval(correct, n)
    return {
        "problems": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "cutoff_rate": sum(r["finish_reason"] == "length" for r in records) / n if n else 0.0,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "activation_ratio": total.activation_ratio,
        "cloud_calls": total.cloud_calls,
        "failed_cloud_calls": total.failed_cloud_calls,
        "cloud_calls_per_cloud_token": total.cloud_calls / total.cloud_tokens if total.cloud_tokens else None,
        "cloud_calls_per_cloud_decided_token": total.calls_per_checked_token,
        "cloud_decided_share": total.cloud_decided_tokens / total.generated_tokens if total.generated_tokens else 0.0,
        "billed_prompt_tokens": total.billed_prompt_tokens,
        "billed_completion_tokens": total.billed_completion_tokens,
        "api_cost_usd": sum(api_cost(x, dep.api) for x in ledgers),
        "api_cost_if_cloud_only_usd": total.cloud_only_cost_usd,
        "self_hosted_cost_usd": sum(self_hosted_cost(x, dep.self_hosted) for x in ledgers),
        "self_hosted_cost_if_cloud_only_usd": cloud_only_self,
        "wall_s": wall,
        "local_s": total.local_seconds,
        "cloud_s": total.cloud_seconds,
        "loop_overhead_fraction": (wall - busy) / wall if wall else 0.0,
        "remote_projected_s": remote,
        "remote_projected_tokens_per_s": tokens / remote if remote else None,
    }
