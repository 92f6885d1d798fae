"""Routers: one-method policies that decide, per token, whether the SLM's candidate stays local."""

from .base import Router, RouterStep
from .routers import AlwaysCloudRouter, AlwaysLocalRouter, EntropyRouter, MaxProbRouter, RewardRouter, build_router

__all__ = [
    "Router",
    "RouterStep",
    "AlwaysCloudRouter",
    "AlwaysLocalRouter",
    "EntropyRouter",
    "MaxProbRouter",
    "RewardRouter",
    "build_router",
]
