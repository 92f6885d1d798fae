"""The ledger against the server's own counters: for a mixed request in each cloud mode on the real pair and
real vLLM, the calls, billed prompt tokens, completion tokens and cached prompt tokens the ledger books are
exactly what vLLM's Prometheus counters say it served (nothing else talks to the server meanwhile)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from real_helpers import vllm_metrics

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine, PriceTable
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import AlwaysCloudRouter, EntropyRouter

pytestmark = [pytest.mark.real, pytest.mark.cloud]

QUESTION = "A shop sells pens at 3 dollars each. Maya buys 7 pens and pays with 50 dollars. What is her change?"
COUNTERS = {  # server counter -> the ledger field that must equal its increase
    "vllm:request_success_total": "cloud_calls",
    "vllm:prompt_tokens_total": "billed_prompt_tokens",
    "vllm:generation_tokens_total": "billed_completion_tokens",
    "vllm:prompt_tokens_cached_total": "cached_prompt_tokens",
}

# the per-token machinery under test: self-hosted prices keep the cost guard and hand-off off
SELF_HOSTED = PriceTable(kind="self_hosted")


def settled_delta(base_url: str, before: dict[str, float], calls: int) -> dict[str, float]:
    """The counters' increase, once the server has accounted for all ``calls`` requests (they land in its
    metrics a moment after the reply)."""
    deadline = time.monotonic() + 10
    while True:
        after = vllm_metrics(base_url)
        delta = {k: after[k] - before[k] for k in COUNTERS}
        if delta["vllm:request_success_total"] >= calls or time.monotonic() > deadline:
            return delta
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["replace", "verify", "block_verify", "lookahead"])
def test_ledger_matches_the_server_counters(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str,
                                            mode: str) -> None:
    slm = load_local_model(real_slm_dir)
    cloud = CloudClient(CloudConfig(base_url=cloud_base_url, model=cloud_model_name, timeout=120))
    engine = HybridEngine(slm, EntropyRouter(0.6), cloud, SELF_HOSTED)
    ids = engine.render([{"role": "user", "content": QUESTION}])
    cloud.probe(slm.tokenizer)  # the capability probe's own calls are not the request's
    before = vllm_metrics(cloud_base_url)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=40, cloud_mode=mode))
    led = result.ledger
    assert led.cloud_mode == mode
    assert led.cloud_calls > 0 and led.local_tokens > 0, "the threshold should give a mixed run"
    delta = settled_delta(cloud_base_url, before, led.cloud_calls)
    seen = {field: delta[counter] for counter, field in COUNTERS.items()}
    booked = {field: getattr(led, field) for field in COUNTERS.values()}
    assert booked == seen
    assert 0 <= led.cached_prompt_tokens <= led.billed_prompt_tokens


def test_a_cloud_only_answer_books_what_the_server_cached(real_slm_dir: Path, cloud_base_url: str,
                                                          cloud_model_name: str) -> None:
    """Cloud-only is one streamed call that ends with the cloud's end-of-answer token; its usage report comes
    after that token. Asked twice, the second call is served from vLLM's prefix cache, and the ledger books
    the cached prompt tokens the server counted (closing the stream at the end token lost them: cloud-only
    answers were priced as if nothing was cached)."""
    slm = load_local_model(real_slm_dir)
    cloud = CloudClient(CloudConfig(base_url=cloud_base_url, model=cloud_model_name, timeout=120))
    engine = HybridEngine(slm, AlwaysCloudRouter(), cloud, SELF_HOSTED)
    ids = engine.render([{"role": "user", "content": QUESTION}])
    ledgers = []
    for _ in range(2):
        before = vllm_metrics(cloud_base_url)
        result = engine.generate(ids, GenerationConfig(max_new_tokens=200))
        assert result.finish_reason == "stop"  # the cloud ended its answer
        led = result.ledger
        delta = settled_delta(cloud_base_url, before, led.cloud_calls)
        assert {f: getattr(led, f) for f in COUNTERS.values()} == {f: delta[c] for c, f in COUNTERS.items()}
        ledgers.append(led)
    # served from the cache (the first ask may be too, after earlier tests), and priced so
    assert ledgers[1].cached_prompt_tokens >= 16 and ledgers[1].cost_usd < ledgers[1].cloud_only_cost_usd
