"""Sampling losslessness of ``verify`` mode on the real pair and the real vLLM server, at one fixed prefix.

What verification promises (``cloud/verify.py``): tokens distributed as the cloud's distribution at the same
temperature, renormalised over the top-20 the endpoint returns. The cloud's mass outside its top-20 is the
documented approximation; this test measures it and compares everything else.

1. End to end: ``E2E`` one-token requests through the engine (SLM draft, one cloud call each, accept with
   min(1, q/p) or resample from the residual) follow q (chi-square goodness of fit).
2. With power: the same rule (``verify_draft``) on the real SLM distribution and the real cloud top-20, ``N``
   draws, against q, and against the cloud's own samples at the same temperature (vLLM, ``n`` samples in one
   request, top-k / top-p off), compared within the top-20. The test computes its power: against a shift of
   5 points between the two likeliest tokens (more than the top-20 tail here) it must be at least 0.99, and it
   must reject the SLM's own distribution (what unverified drafts follow).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from real_helpers import vllm_client
from scipy import stats

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine, PriceTable
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.cloud.verify import cloud_distribution, verify_draft
from hybrid_llm_adapters.local.sampling import warp
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import EntropyRouter

pytestmark = [pytest.mark.real, pytest.mark.cloud]

QUESTION = "Pick one colour at random from red, green, blue, yellow. Reply with the colour only."
E2E = 240  # one cloud call each on a 1-core vLLM: about two minutes
N = 20_000  # draws of the verification rule itself
CLOUD_N = 1_000  # the cloud's own samples
ALPHA = 1e-3
SHIFT = 0.05
GEN = GenerationConfig(max_new_tokens=1, temperature=1.0, cloud_mode="verify")

# the per-token machinery under test: self-hosted prices keep the cost guard and hand-off off
SELF_HOSTED = PriceTable(kind="self_hosted")


def histogram(sample: list[int], keys: list[int]) -> list[int]:
    return [sum(t == k for t in sample) for k in keys]


def goodness_of_fit(sample: list[int], q: dict[int, float]) -> tuple[float, list[int], list[float]]:
    """p-value of ``sample`` against q over the tokens q expects at least 5 times (the rest pooled, if any)."""
    n = len(sample)
    keys = [t for t, p in sorted(q.items(), key=lambda kv: -kv[1]) if p * n >= 5]
    obs = [*histogram(sample, keys), sum(t not in keys for t in sample)]
    exp = [*(q[k] * n for k in keys), n * (1 - sum(q[k] for k in keys))]
    if exp[-1] < 5:  # too little left to pool: fold it into the last bin
        pooled_obs, pooled_exp = obs.pop(), exp.pop()
        obs[-1] += pooled_obs
        exp[-1] += pooled_exp
    total = sum(exp)
    exp = [e * sum(obs) / total for e in exp]  # exact totals (q sums to 1 only up to rounding)
    assert sum(obs) == n, (sum(obs), n)
    return float(stats.chisquare(obs, exp).pvalue), obs, exp


def power(expected: list[float], alternative: list[float], n: int) -> float:
    """Power at ALPHA of the chi-square goodness-of-fit test against ``alternative`` (noncentral chi-square)."""
    df = len(expected) - 1
    lam = n * sum((a - e) ** 2 / e for a, e in zip(alternative, expected))
    return float(stats.ncx2.sf(stats.chi2.isf(ALPHA, df), df, lam))


@pytest.fixture(scope="module")
def setting(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str):
    slm = load_local_model(real_slm_dir)
    cloud = CloudClient(CloudConfig(base_url=cloud_base_url, model=cloud_model_name, timeout=300))
    engine = HybridEngine(slm, EntropyRouter(-1.0), cloud, SELF_HOSTED)  # every token is verified
    ids = engine.render([{"role": "user", "content": QUESTION}])
    client = vllm_client(cloud_base_url)
    top = client.completions.create(model=cloud_model_name, prompt=ids, max_tokens=1, temperature=0, logprobs=20,
                                    extra_body={"return_tokens_as_token_ids": True})
    top20 = {int(k.split(":", 1)[1]): v for k, v in top.choices[0].logprobs.top_logprobs[0].items()}
    return slm, engine, ids, client, top20


def test_verify_requests_follow_the_cloud_end_to_end(setting) -> None:
    _, engine, ids, _, top20 = setting
    q = cloud_distribution(top20, GEN)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: engine.generate(ids, GEN), range(E2E)))
    assert {r.ledger.cloud_mode for r in results} == {"verify"}
    assert all(r.ledger.cloud_calls == 1 and len(r.token_ids) == 1 for r in results)
    accepted = sum(r.ledger.accepted_drafts for r in results)
    assert 0 < accepted < E2E  # both paths ran: drafts kept and drafts replaced from the residual
    p_value, obs, exp = goodness_of_fit([r.token_ids[0] for r in results], q)
    assert len(obs) >= 3 and p_value > ALPHA, (p_value, obs, exp)


def test_verification_rule_matches_the_cloud_with_stated_power(setting, cloud_model_name: str) -> None:
    slm, _, ids, client, top20 = setting
    q = cloud_distribution(top20, GEN)
    tail = 1.0 - sum(math.exp(v) for v in top20.values())  # the cloud's mass outside its top-20
    with torch.inference_mode():
        logits = slm.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    p = warp(logits, GEN)
    rng = torch.Generator().manual_seed(0)
    drafts = torch.multinomial(p, N, replacement=True, generator=rng).tolist()
    ours = [verify_draft(d, p, top20, GEN, rng)[0] for d in drafts]

    p_value, obs, exp = goodness_of_fit(ours, q)
    assert len(obs) >= 4 and p_value > ALPHA, (p_value, obs, exp)
    shifted = list(exp)
    shifted[0] -= SHIFT * N
    shifted[1] += SHIFT * N
    test_power = power([e / N for e in exp], [s / N for s in shifted], N)
    assert SHIFT > tail and test_power >= 0.99, (tail, test_power)
    slm_alternative = [float(p[k]) for k in sorted(q, key=lambda t: -q[t])[: len(exp) - 1]]
    slm_alternative.append(1 - sum(slm_alternative))
    assert power([e / N for e in exp], slm_alternative, N) > 0.99  # unverified drafts would be caught

    # the cloud's own samples, same temperature, nothing else on; compared within the top-20
    own = client.completions.create(
        model=cloud_model_name, prompt=ids, max_tokens=1, temperature=1.0, top_p=1.0, n=CLOUD_N, logprobs=1,
        extra_body={"return_tokens_as_token_ids": True, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0})
    theirs = [int(c.logprobs.tokens[0].split(":", 1)[1]) for c in own.choices]
    inside = [t for t in theirs if t in top20]
    outside_share = 1 - len(inside) / len(theirs)
    assert abs(outside_share - tail) < 0.03, (outside_share, tail)  # the approximation is what was measured
    keys = [t for t, pq in sorted(q.items(), key=lambda kv: -kv[1]) if pq * len(inside) >= 5]
    table = [[*histogram(sample, keys), sum(t not in keys for t in sample)] for sample in (ours, inside)]
    two_sample = stats.chi2_contingency(table)
    assert two_sample.pvalue > ALPHA, (two_sample.pvalue, table)
    print(f"verify sampling: top-20 tail {tail:.4f} (cloud samples outside: {outside_share:.4f}); "
          f"GOF p={p_value:.3f} over {len(obs)} bins; two-sample p={two_sample.pvalue:.3f}; "
          f"power vs a {SHIFT:.2f} shift {test_power:.4f}")
