"""The built-in routers: reward threshold, SLM uncertainty (entropy, max-probability), always-X."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import PriceTable, RouterConfig
from ..errors import ConfigError, ModelMismatchError
from ..local.reward import CandidateRewardHead, LinearRewardHead, SeparateRewardModel, load_head
from .base import Router, RouterStep
from .budget import BudgetRouter
from .uhlm import PerturbationRouter


class AlwaysLocalRouter(Router):
    name = "local"

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        return False


class AlwaysCloudRouter(Router):
    """The cloud answers alone, in one streamed request: what a cloud-only deployment pays."""

    name = "cloud"
    needs_slm = False
    one_request = True

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        return True


class CloudPerTokenRouter(AlwaysCloudRouter):
    """The cloud supplies every token in its own call (the reward paper's rule at 100 % activation); for
    measuring the per-token path, not for use: it re-sends the prefix for every token."""

    name = "cloud_per_token"
    one_request = False


class EntropyRouter(Router):
    """Cloud when the SLM's predictive entropy (nats, at temperature 1) exceeds the threshold."""

    name = "entropy"

    def __init__(self, threshold: float):
        self.threshold = threshold

    def score(self, step: RouterStep) -> float:
        logp = torch.log_softmax(step.logits.float(), dim=-1)
        return float(-(logp.exp() * logp).sum())

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        return score is not None and score > self.threshold  # type: ignore[operator]


class MaxProbRouter(Router):
    """Cloud when the SLM's top probability falls below the threshold."""

    name = "max_prob"
    higher_is_uncertain = False

    def __init__(self, threshold: float):
        self.threshold = threshold

    def score(self, step: RouterStep) -> float:
        return float(torch.softmax(step.logits.float(), dim=-1).max())

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        return score is not None and score < self.threshold  # type: ignore[operator]


class RewardRouter(Router):
    """The reward paper's rule: keep the SLM token when reward >= threshold, else the cloud supplies it."""

    name = "reward"
    higher_is_uncertain = False

    def __init__(self, scorer: CandidateRewardHead | LinearRewardHead | SeparateRewardModel, threshold: float):
        self.scorer = scorer
        self.threshold = threshold
        self.needs_hidden = isinstance(scorer, LinearRewardHead)
        self.needs_context_hidden = isinstance(scorer, CandidateRewardHead)

    def new_scorer_state(self) -> Any:
        return self.scorer.new_state() if isinstance(self.scorer, SeparateRewardModel) else None

    def score(self, step: RouterStep) -> float:
        if isinstance(self.scorer, CandidateRewardHead):
            assert step.context_hidden is not None
            return self.scorer.score(step.logits, step.candidate_id, step.context_hidden)
        if isinstance(self.scorer, LinearRewardHead):
            assert step.hidden is not None
            return self.scorer.score_hidden(step.hidden)
        return step.scorer_state.score(step.ids)

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        return score is not None and score < self.threshold  # type: ignore[operator]


def load_reward_scorer(path: str | Path, tokenizer: object, hidden_size: int
                       ) -> CandidateRewardHead | LinearRewardHead | SeparateRewardModel:
    path = Path(path)
    if path.is_dir():
        return SeparateRewardModel(path, tokenizer)
    if path.suffix == ".safetensors" and path.exists():
        return load_head(path, tokenizer, hidden_size)
    raise ConfigError(
        f"reward_head={str(path)!r} is neither a .safetensors head file nor a reward-model folder; "
        "pass the file written by `hybrid-llm train-reward`, or leave it unset for the shipped default head."
    )


def build_router(config: RouterConfig, tokenizer: object, hidden_size: int,
                 prices: PriceTable | None = None, cloud_model: str | None = None) -> Router:
    """Make the router a ``RouterConfig`` describes (wrapped in a budget controller when it sets one).

    ``cloud_model``: the served cloud model; a reward scorer trained against another cloud is refused (its
    scores predict where the SLM disagrees with *that* model), unless ``config.check_reward_cloud`` is off.
    """
    router = _base_router(config, tokenizer, hidden_size)
    if isinstance(router, RewardRouter) and cloud_model and config.check_reward_cloud:
        trained_for = router.scorer.manifest.cloud
        if trained_for != cloud_model:
            raise ModelMismatchError(
                f"the reward scorer was trained for cloud model {trained_for!r}, but the cloud serves "
                f"{cloud_model!r}. Use a scorer trained for this pair (`make reward` / `hybrid-llm train-reward`), "
                "or set RouterConfig(check_reward_cloud=False) if the server serves the same model under another name."
            )
    if config.target_activation is not None or config.max_cost_usd is not None:
        return BudgetRouter(router, config.target_activation, config.max_cost_usd, prices)
    return router


def _base_router(config: RouterConfig, tokenizer: object, hidden_size: int) -> Router:
    if config.kind == "local":
        return AlwaysLocalRouter()
    if config.kind == "cloud":
        return AlwaysCloudRouter()
    if config.kind == "cloud_per_token":
        return CloudPerTokenRouter()
    assert config.threshold is not None
    if config.kind == "entropy":
        return EntropyRouter(config.threshold)
    if config.kind == "max_prob":
        return MaxProbRouter(config.threshold)
    if config.kind == "perturbation":
        return PerturbationRouter(config.threshold)
    if config.reward_head is None:
        from ..assets import default_reward_head_path

        head_path = default_reward_head_path()
        if head_path is None:
            raise ConfigError(
                "router kind 'reward' needs reward_head=<path>: no trained head ships for this model pair yet. "
                "Train one with `hybrid-llm train-reward`, or use kind='entropy'."
            )
        return RewardRouter(load_reward_scorer(head_path, tokenizer, hidden_size), config.threshold)
    return RewardRouter(load_reward_scorer(config.reward_head, tokenizer, hidden_size), config.threshold)
