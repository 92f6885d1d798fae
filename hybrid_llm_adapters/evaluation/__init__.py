"""Task evaluation: load a benchmark, run it through the hybrid (or SLM-only / cloud-only), score it, and
report accuracy beside activation, speed and cost. Used by ``hybrid-llm eval``, ``hybrid-llm sweep`` and
``benchmarks/quality.py``."""

from .cost import Deployments, RemoteCloud, SelfHostedPrices
from .runner import EvalConfig, EvalRun, System, run_eval, summarize
from .stats import wilson_interval
from .tasks import TASKS, Problem, Task, get_task

__all__ = [
    "TASKS",
    "Deployments",
    "EvalConfig",
    "EvalRun",
    "Problem",
    "RemoteCloud",
    "SelfHostedPrices",
    "System",
    "Task",
    "get_task",
    "run_eval",
    "summarize",
    "wilson_interval",
]
