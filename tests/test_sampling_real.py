"""Sampling losslessness of ``verify`` mode on the real pair and the real vLLM server.

At one fixed prefix, N one-token requests sample with temperature 1: the SLM drafts, the cloud's top-20
logprobs come back, the draft is accepted with min(1, q/p) or replaced from the residual. The tokens must follow
the cloud's distribution: the verifier's target q (the cloud's top-20, renormalised), and the cloud's own
sampled tokens at the same temperature (a two-sample test). The test states its power: against an error of the
size the top-k approximation can cause (the cloud's mass outside its top-20, or 5 points, whichever is larger,
moved between the two likeliest tokens) it must be at least 0.8, and it must reject the SLM's own distribution.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from real_helpers import vllm_client
from scipy import stats

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.cloud.verify import cloud_distribution
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import EntropyRouter

pytestmark = [pytest.mark.real, pytest.mark.cloud]

QUESTION = "Pick one colour at random from red, green, blue, yellow. Reply with the colour only."
N = 1200
ALPHA = 1e-3
GEN = GenerationConfig(max_new_tokens=1, temperature=1.0, cloud_mode="verify")


def bins(expected: dict[int, float], n: int) -> list[int]:
    """The tokens expected at least 5 times in ``n`` draws, likeliest first; every other token is one more bin."""
    return [t for t, p in sorted(expected.items(), key=lambda kv: -kv[1]) if p * n >= 5]


def histogram(sample: list[int], keys: list[int]) -> list[int]:
    return [sum(t == k for t in sample) for k in keys] + [sum(t not in keys for t in sample)]


def expected_counts(dist: dict[int, float], keys: list[int], n: int) -> list[float]:
    head = [dist.get(k, 0.0) * n for k in keys]
    return [*head, max(0.0, n - sum(head))]


def power(expected: list[float], alternative: list[float], n: int) -> float:
    """Power of the chi-square goodness-of-fit test at ALPHA against ``alternative`` (noncentral chi-square)."""
    df = len(expected) - 1
    lam = n * sum((a - e) ** 2 / e for a, e in zip(alternative, expected))
    return float(stats.ncx2.sf(stats.chi2.isf(ALPHA, df), df, lam))


def test_verify_sampling_follows_the_cloud(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str) -> None:
    slm = load_local_model(real_slm_dir)
    cloud = CloudClient(CloudConfig(base_url=cloud_base_url, model=cloud_model_name, timeout=300))
    engine = HybridEngine(slm, EntropyRouter(-1.0), cloud)  # every token is verified
    ids = engine.render([{"role": "user", "content": QUESTION}])
    client = vllm_client(cloud_base_url)

    top = client.completions.create(model=cloud_model_name, prompt=ids, max_tokens=1, temperature=0, logprobs=20,
                                    extra_body={"return_tokens_as_token_ids": True})
    top20 = {int(k.split(":", 1)[1]): v for k, v in top.choices[0].logprobs.top_logprobs[0].items()}
    q = cloud_distribution(top20, GEN)  # what verification targets
    tail = 1.0 - sum(math.exp(v) for v in top20.values())  # the cloud's mass outside its top-20

    with ThreadPoolExecutor(16) as pool:
        ours = list(pool.map(lambda _: engine.generate(ids, GEN), range(N)))
    tokens = [r.token_ids[0] for r in ours if r.token_ids]
    assert len(tokens) == N
    assert {r.ledger.cloud_mode for r in ours} == {"verify"}
    accepted = sum(r.ledger.accepted_drafts for r in ours)
    assert 0 < accepted < N  # both paths ran: drafts kept and drafts replaced from the residual
    keys = bins(q, N)
    assert len(keys) >= 2, f"the prefix should spread the cloud over several tokens: {q}"
    obs, exp = histogram(tokens, keys), expected_counts(q, keys, N)
    if exp[-1] < 5:  # the top-20 has (almost) no mass outside these bins: drop the empty pool
        assert obs[-1] <= 2, (obs, exp)
        obs, exp = obs[:-1], exp[:-1]
        exp = [e * sum(obs) / sum(exp) for e in exp]
    fit = stats.chisquare(obs, exp)
    assert fit.pvalue > ALPHA, (fit, obs, exp)

    # the cloud's own samples at the same temperature: a two-sample (contingency) test
    own = client.completions.create(model=cloud_model_name, prompt=ids, max_tokens=1, temperature=1.0, n=N,
                                    logprobs=1, extra_body={"return_tokens_as_token_ids": True})
    theirs = [int(c.logprobs.tokens[0].split(":", 1)[1]) for c in own.choices]
    columns = [(a, b) for a, b in zip(histogram(tokens, keys), histogram(theirs, keys)) if a + b > 0]
    two_sample = stats.chi2_contingency([[a for a, _ in columns], [b for _, b in columns]])
    assert two_sample.pvalue > ALPHA, (two_sample, columns)

    # power: an error the size of the top-k approximation (at least 5 points) moved between the top two tokens
    delta = max(tail, 0.05)
    shifted = list(exp)
    shifted[0] -= delta * N
    shifted[1] += delta * N
    test_power = power([e / N for e in exp], [s / N for s in shifted], N)
    assert test_power >= 0.8, f"N={N} detects a {delta:.3f} shift with power {test_power:.2f} only"
    # ...and it rejects the SLM's own distribution at this prefix (what an unverified draft would follow)
    with torch.inference_mode():
        p = torch.softmax(slm.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
    slm_dist = {k: float(p[k]) for k in keys}
    slm_exp = expected_counts(slm_dist, keys, N)[: len(exp)]
    assert power([e / N for e in exp], [s / sum(slm_exp) for s in slm_exp], N) > 0.99
    print(f"verify sampling: N={N}, bins={len(obs)}, p={fit.pvalue:.3f}, two-sample p={two_sample.pvalue:.3f}, "
          f"top-20 tail {tail:.4f}, power vs a {delta:.3f} shift {test_power:.3f}, drafts accepted {accepted}/{N}")
