"""Choosing a token from logits: greedy, or temperature + top-p with a seeded generator."""

from __future__ import annotations

import torch

from ..config import GenerationConfig


def warp(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Probabilities after temperature and top-p, as transformers' logits warpers compute them."""
    if config.greedy:
        probs = torch.zeros_like(logits)
        probs[int(torch.argmax(logits))] = 1.0
        return probs
    scaled = logits / config.temperature
    probs = torch.softmax(scaled, dim=-1)
    if config.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        remove = cumulative - sorted_probs > config.top_p
        sorted_probs[remove] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def choose(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> int:
    if config.greedy:
        return int(torch.argmax(logits))
    return int(torch.multinomial(warp(logits, config), 1, generator=generator))
