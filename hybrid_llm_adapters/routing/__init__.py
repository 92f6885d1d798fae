"""Routers: one-method policies that decide, per token, whether the SLM's candidate stays local."""

from .base import Router, RouterStep
from .budget import BudgetRouter
from .uhlm import PerturbationRouter, calibrate_threshold, threshold_for_rejection_risk
from .routers import AlwaysCloudRouter, AlwaysLocalRouter, EntropyRouter, MaxProbRouter, RewardRouter, build_router

__all__ = [
    "BudgetRouter",
    "PerturbationRouter",
    "calibrate_threshold",
    "threshold_for_rejection_risk",
    "Router",
    "RouterStep",
    "AlwaysCloudRouter",
    "AlwaysLocalRouter",
    "EntropyRouter",
    "MaxProbRouter",
    "RewardRouter",
    "build_router",
]
