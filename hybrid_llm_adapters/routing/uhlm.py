"""U-HLM's uncertainty (arXiv 2412.12687): temperature-perturbation disagreement with the draft.

The SLM's draft x is compared with samples drawn under perturbed temperatures T_1..T_S; the uncertainty is
the fraction of samples that differ from x. We use its expectation, 1 - mean_s softmax(z / T_s)[x], which is
what the paper's Monte-Carlo count estimates, without the sampling noise or the S extra draws.

Thresholds: U-HLM observes that the chance that the LLM rejects a draft grows about linearly with this
uncertainty (P(reject | u) ~ u), so skipping every token with u <= u_th keeps each skipped token's rejection
risk at most about u_th: ``threshold_for_rejection_risk`` uses that bound. ``calibrate_threshold`` instead
fits u_th on a dev set of (uncertainty, rejected) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .base import Router, RouterStep

DEFAULT_TEMPERATURES = (0.5, 0.75, 1.0, 1.25, 1.5)


def perturbation_uncertainty(logits: torch.Tensor, draft: int, temperatures: Sequence[float]) -> float:
    """Expected fraction of temperature-perturbed samples that disagree with ``draft``."""
    z = logits.float()
    agree = [float(torch.softmax(z / t, dim=-1)[draft]) for t in temperatures]
    return 1.0 - sum(agree) / len(agree)


def threshold_for_rejection_risk(risk: float) -> float:
    """u_th for a target rejection risk under U-HLM's linear relation P(reject | u) ~ u."""
    if not 0.0 < risk < 1.0:
        raise ConfigError(f"rejection_risk={risk} must lie in (0, 1), e.g. 0.1 for a 10 % risk per skipped token.")
    return risk


def calibrate_threshold(uncertainties: Sequence[float], rejected: Sequence[bool], risk: float) -> float:
    """Largest u_th such that, on the dev set, tokens with u <= u_th were rejected at most ``risk`` of the time."""
    if len(uncertainties) != len(rejected) or not uncertainties:
        raise ConfigError("calibrate_threshold needs equally long, non-empty uncertainties and rejected lists.")
    pairs = sorted(zip(uncertainties, rejected))
    best = 0.0
    n_rejected = 0
    for i, (u, r) in enumerate(pairs, start=1):
        n_rejected += r
        if n_rejected / i <= risk and (i == len(pairs) or pairs[i][0] > u):
            best = u
    return best


class PerturbationRouter(Router):
    """Cloud when the temperature-perturbation uncertainty of the draft exceeds the threshold."""

    name = "perturbation"
    higher_is_uncertain = True

    def __init__(self, threshold: float, temperatures: Sequence[float] = DEFAULT_TEMPERATURES):
        if not temperatures or min(temperatures) <= 0:
            raise ConfigError(f"temperatures={list(temperatures)} must be positive, e.g. {DEFAULT_TEMPERATURES}.")
        self.threshold = threshold
        self.temperatures = tuple(temperatures)

    def score(self, step: RouterStep) -> float:
        return perturbation_uncertainty(step.logits, step.candidate_id, self.temperatures)

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        return score is not None and score > self.threshold  # type: ignore[operator]
