"""The small records the decode loop and the cloud modes pass between them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..events import TokenSource


@dataclass
class Produced:
    token_id: int
    source: TokenSource
    score: float | None = None
    candidate: int | None = None
    handed_off: bool = False  # streamed by a hand-off


@dataclass
class Proposal:
    """The SLM's candidate for the next position and the router's verdict."""

    candidate: int
    probs: torch.Tensor | None  # the SLM's warped distribution (kept for sampling verification)
    score: float | None
    want_cloud: bool
    fed: bool  # the candidate is already appended to the SLM state (trunk reward scoring)
    window: int = 0  # a decision point's tokens still to come from the cloud (this one included)
