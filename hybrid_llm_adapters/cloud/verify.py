"""Speculative verification of SLM drafts against the cloud's logprobs (U-HLM, speculative sampling).

Sampling: accept the draft x with probability min(1, q(x)/p(x)); on rejection, sample from the residual
max(0, q - p), normalised. Greedy: accept when the draft is the cloud's argmax, else take the argmax.

What is approximated: an OpenAI-compatible endpoint returns only the top-k of the cloud's distribution
(k <= 20 on vLLM, <= 5 on OpenAI). q is therefore the temperature / top-p warped distribution renormalised
over those k tokens; a draft outside the top-k gets q = 0 and is always rejected, and the residual is drawn
from the top-k only. The mass outside the top-k (usually small where the cloud is confident) is ignored.
With greedy decoding nothing is approximated.
"""

from __future__ import annotations

import math

import torch

from ..config import GenerationConfig


def cloud_distribution(top_logprobs: dict[int, float], gen: GenerationConfig) -> dict[int, float]:
    """q over the returned top-k after temperature and top-p, renormalised."""
    if not top_logprobs:
        return {}
    if gen.greedy:
        best = max(top_logprobs, key=top_logprobs.__getitem__)
        return {best: 1.0}
    scaled = {t: lp / gen.temperature for t, lp in top_logprobs.items()}
    peak = max(scaled.values())
    weights = {t: math.exp(v - peak) for t, v in scaled.items()}
    total = sum(weights.values())
    probs = sorted(((t, w / total) for t, w in weights.items()), key=lambda kv: -kv[1])
    kept, mass = [], 0.0
    for t, p in probs:
        if mass >= gen.top_p:
            break
        kept.append((t, p))
        mass += p
    return {t: p / mass for t, p in kept}


def verify_draft(
    draft: int,
    slm_probs: torch.Tensor,
    top_logprobs: dict[int, float],
    gen: GenerationConfig,
    rng: torch.Generator | None,
) -> tuple[int, bool]:
    """(token to keep, whether the draft was accepted). ``slm_probs`` is the SLM's warped distribution."""
    q = cloud_distribution(top_logprobs, gen)
    if not q:
        return draft, True  # the cloud told us nothing: keep the draft
    if gen.greedy:
        best = next(iter(q))
        return (draft, True) if best == draft else (best, False)
    p_draft = float(slm_probs[draft])
    q_draft = q.get(draft, 0.0)
    u = float(torch.rand((), generator=rng))
    if p_draft > 0 and u < min(1.0, q_draft / p_draft):
        return draft, True
    residual = {t: max(0.0, qt - float(slm_probs[t])) for t, qt in q.items()}
    total = sum(residual.values())
    if total <= 0:  # q <= p on the whole top-k (only possible through the top-k approximation)
        residual, total = dict(q), 1.0
    ids = list(residual)
    weights = torch.tensor([residual[t] / total for t in ids])
    return ids[int(torch.multinomial(weights, 1, generator=rng))], False
