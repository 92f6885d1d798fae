"""Routers: one-method policies that decide, per token, whether the SLM's candidate stays local."""

from .base import Router, RouterStep
from .budget import BudgetRouter
from .routers import (
    AlwaysCloudRouter,
    AlwaysLocalRouter,
    EntropyRouter,
    MaxProbRouter,
    RewardRouter,
    build_router,
)
from .uhlm import PerturbationRouter, calibrate_threshold, threshold_for_rejection_risk

__all__ = [
    "AlwaysCloudRouter",
    "AlwaysLocalRouter",
    "BudgetRouter",
    "EntropyRouter",
    "MaxProbRouter",
    "PerturbationRouter",
    "RewardRouter",
    "Router",
    "RouterStep",
    "build_router",
    "calibrate_threshold",
    "threshold_for_rejection_risk",
]
