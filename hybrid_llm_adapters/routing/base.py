"""The router contract, in the spirit of transformers' LogitsProcessor: small, one job, pluggable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RouterStep:
    """What a router may look at for one candidate.

    ``logits`` are the SLM's raw next-token logits at the candidate's position. ``hidden`` is the SLM's last
    hidden state of the candidate itself (only computed when ``Router.needs_hidden``), ``context_hidden`` the
    one of the position whose logits chose it (when ``Router.needs_context_hidden``; it costs nothing extra),
    ``ids`` the sequence including the candidate.
    """

    logits: torch.Tensor
    candidate_id: int
    ids: list[int]
    hidden: torch.Tensor | None = None
    context_hidden: torch.Tensor | None = None
    scorer_state: Any = None
    gen: Any = None  # the request's GenerationConfig


class Router:
    """Decides local vs cloud for one SLM candidate.

    ``needs_slm``: False when the SLM's candidate is never looked at (always-cloud), so the engine skips the
    SLM's forward pass. ``needs_hidden``: the score needs the candidate fed through the SLM first; the engine
    then rolls the cache back one token when the cloud replaces it.
    """

    needs_slm: bool = True
    one_request: bool = False  # always-cloud as one streamed completion, not a call per token
    needs_hidden: bool = False
    needs_context_hidden: bool = False
    name: str = "router"
    threshold: float | None = None
    higher_is_uncertain: bool = True  # orientation of ``score`` (False for reward and max-prob)

    def score(self, step: RouterStep) -> float | None:
        return None

    def use_cloud(self, score: float | None, step: RouterStep) -> bool:
        raise NotImplementedError

    def new_scorer_state(self) -> Any:
        """Per-request state for scorers that keep their own cache (a separate reward model)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"router": self.name, "threshold": self.threshold}
