"""Helpers for tests on the real pair: reference outputs and the near-tie rule.

Two decoding paths may part only where numerics alone decide: the top two logprobs at the first differing
position lie within ``NEAR_TIE`` of each other. Any other difference is a bug.
"""

from __future__ import annotations

import json
import urllib.request
import warnings
from collections.abc import Callable
from typing import Any

import openai
import torch

NEAR_TIE = 1e-3


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def match_through_ties(ours: Callable[[list[int], int], list[int]], ref: Callable[[list[int], int], list[int]],
                       gap: Callable[[list[int]], float], prompt: list[int], n: int, what: str,
                       max_ties: int = 4) -> list[int]:
    """Compare two greedy decoders over ``n`` new tokens, token for token, all the way.

    Where they part, the reference's top-2 gap at that position must be a near-tie (< ``NEAR_TIE``); both then
    continue from the reference's token (forced into the prompt), so everything after a tie is still compared.
    Any other difference fails. Returns the positions of the ties.
    """
    done: list[int] = []
    ties: list[int] = []
    while len(done) < n:
        a, b = ours(prompt + done, n - len(done)), ref(prompt + done, n - len(done))
        i = first_difference(a, b)
        if i is None:
            break
        g = gap(prompt + done + b[:i])
        assert g < NEAR_TIE, f"{what} parts from the reference at token {len(done) + i} without a near-tie (gap {g})"
        ties.append(len(done) + i)
        assert len(ties) <= max_ties, f"{what}: {len(ties)} near-ties in {n} tokens"
        if i >= len(b) or i >= len(a):  # one side ended the answer at the tie: nothing left to force
            break
        done += b[: i + 1]
    if ties:
        warnings.warn(f"{what} met near-ties at tokens {ties} and matched the reference around them")
    return ties


def slm_top2_gap(model: Any, ids: list[int]) -> float:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(torch.log_softmax(logits, -1), 2).values
    return float(top[0] - top[1])


def vllm_client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=300)


def vllm_greedy(client: openai.OpenAI, model: str, prompt: list[int] | str, n: int) -> list[int]:
    """vLLM's own greedy completion, as token ids (EOS excluded)."""
    r = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, logprobs=1,
                                  extra_body={"return_tokens_as_token_ids": True, "skip_special_tokens": False})
    tokens = r.choices[0].logprobs.tokens
    ids = [int(t.split(":", 1)[1]) for t in tokens]
    return [i for i in ids if i not in (151643, 151645)]


def vllm_top2_gap(client: openai.OpenAI, model: str, prompt: list[int]) -> float:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, logprobs=2)
    top = sorted(r.choices[0].logprobs.top_logprobs[0].values(), reverse=True)
    return top[0] - top[1]


def vllm_metrics(base_url: str) -> dict[str, float]:
    """The server's Prometheus counters (prompt, cached prompt and generation tokens; requests)."""
    root = base_url.removesuffix("/v1")
    text = urllib.request.urlopen(f"{root}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
                    "vllm:prompt_tokens_cached_total"):
            out[name] = out.get(name, 0.0) + float(value)
    return out


def dumps(x: Any) -> str:
    return json.dumps(x, default=str)
