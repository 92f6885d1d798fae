"""A budget controller: a dynamic threshold that holds a target activation ratio or a cost per request
(the reward paper's 'dynamic threshold' future work).

It wraps a scoring router. After a short warm-up on the router's own threshold, a step goes to the cloud
when its uncertainty is in the top ``target`` fraction of the uncertainties seen so far in this request,
and never when that would lift the running activation above the target or the estimated spend above the
budget. The spend is estimated as one one-token call on the current prefix under the price table (exact in
replace mode with token-id prompts; block verification bills more prompt tokens per call).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..accounting import call_cost
from ..config import PriceTable
from .base import Router, RouterStep

WARMUP_STEPS = 8


@dataclass
class _BudgetState:
    inner: Any
    uncertainties: list[float] = field(default_factory=list)
    steps: int = 0
    cloud_steps: int = 0
    spent_usd: float = 0.0


class BudgetRouter(Router):
    """Holds ``target_activation`` and/or ``max_cost_usd`` per request around ``inner``'s scores."""

    def __init__(self, inner: Router, target_activation: float | None = None, max_cost_usd: float | None = None,
                 prices: PriceTable | None = None):
        self.inner = inner
        self.target = target_activation
        self.max_cost = max_cost_usd
        self.prices = prices or PriceTable()
        self.name = f"budget({inner.name})"
        self.needs_hidden = inner.needs_hidden
        self.needs_context_hidden = inner.needs_context_hidden
        self.threshold = inner.threshold

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "target_activation": self.target, "max_cost_usd": self.max_cost}

    def new_scorer_state(self) -> _BudgetState:
        return _BudgetState(self.inner.new_scorer_state())

    def _inner_step(self, step: RouterStep) -> RouterStep:
        return dataclasses.replace(step, scorer_state=step.scorer_state.inner)

    def score(self, step: RouterStep) -> float | None:
        return self.inner.score(self._inner_step(step))

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        state: _BudgetState = step.scorer_state
        if score is None:
            return False
        u = score if self.inner.higher_is_uncertain else -score
        state.uncertainties.append(u)
        if self.target is None or len(state.uncertainties) <= WARMUP_STEPS:
            want = self.inner.use_cloud(score, self._inner_step(step))
        else:
            ranked = sorted(state.uncertainties)
            want = u >= ranked[int((1.0 - self.target) * (len(ranked) - 1))]
        if want and self.target is not None and (state.cloud_steps + 1) / (state.steps + 1) > self.target:
            want = False
        cost = call_cost(self.prices, len(step.ids) - 1, 1)
        if want and self.max_cost is not None and state.spent_usd + cost > self.max_cost:
            want = False
        state.steps += 1
        if want:
            state.cloud_steps += 1
            state.spent_usd += cost
        return want
