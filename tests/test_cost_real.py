"""The cost policies on the real pair and the real vLLM: the guard keeps every request at or below its
cloud-only cost, a hand-off continues exactly as the cloud alone would from that point, router 'cloud' is one
request, and the ledger of a streamed hand-off equals what the server counted."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from real_helpers import vllm_client, vllm_greedy, vllm_metrics
from test_ledger_real import COUNTERS, settled_delta

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine, PriceTable
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import AlwaysCloudRouter, EntropyRouter

pytestmark = [pytest.mark.real, pytest.mark.cloud]

QUESTIONS = [
    "A shop sells pens at 3 dollars each. Maya buys 7 pens and pays with 50 dollars. What is her change?",
    "Tom reads 12 pages a day. How many days does he need for a 180-page book?",
    "A tank holds 500 litres and leaks 4 litres an hour. How much is left after 2 days?",
    "Write a Python function that counts the vowels in a string.",
]
MAX_TOKENS = 48
LOW_THRESHOLD = 0.3  # entropy: flags many tokens, so per-token calls would cost more than cloud-only


@pytest.fixture(scope="module")
def slm(real_slm_dir: Path):
    return load_local_model(real_slm_dir)


@pytest.fixture(scope="module")
def cloud(cloud_base_url: str, cloud_model_name: str) -> CloudClient:
    return CloudClient(CloudConfig(base_url=cloud_base_url, model=cloud_model_name, timeout=120))


def run_all(engine: HybridEngine, gen: GenerationConfig) -> list:
    prompts = [engine.render([{"role": "user", "content": q}]) for q in QUESTIONS]
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda ids: engine.generate(ids, gen), prompts))


# both hand-off settings on the plain sheet; on the sheet whose short prompts are never cached, the setting
# users run by default (hand-off on)
@pytest.mark.parametrize(("sheet", "handoffs"), [("example-cached-10pct", ("off", "on")),
                                                 ("example-cached-10pct-min1024", ("on",))])
def test_the_guard_keeps_every_request_at_or_below_cloud_only(slm, cloud: CloudClient, sheet: str,
                                                              handoffs: tuple[str, ...]) -> None:
    prices = PriceTable.preset(sheet)
    engine = HybridEngine(slm, EntropyRouter(LOW_THRESHOLD), cloud, prices)
    unguarded = run_all(engine, GenerationConfig(max_new_tokens=MAX_TOKENS, max_cost_ratio=None, handoff="off",
                                                  cloud_mode="replace"))
    # without the guard these requests pay more than cloud-only: the guard has something to prevent
    assert any(r.ledger.cost_usd > r.ledger.cloud_only_cost_usd for r in unguarded)
    for handoff in handoffs:
        guarded = run_all(engine, GenerationConfig(max_new_tokens=MAX_TOKENS, max_cost_ratio=1.0, handoff=handoff,
                                                    cloud_mode="replace"))
        for r in guarded:
            led = r.ledger
            assert led.cost_usd <= led.cloud_only_cost_usd * (1 + 1e-9), (sheet, handoff, led)
            assert led.cache_basis == "rules"
        assert sum(r.ledger.cost_guard_trips for r in guarded) > 0
        assert sum(r.ledger.cloud_tokens for r in guarded) > 0  # the guard spends the budget, it does not refuse all


def test_a_handoff_continues_as_the_cloud_alone_would(slm, cloud: CloudClient, cloud_base_url: str) -> None:
    """Hand off at the first flag (one flag in a window of one): the tokens after that point are the cloud's
    own greedy continuation of the same prefix, token for token, from one streamed call."""
    engine = HybridEngine(slm, EntropyRouter(1.0), cloud, PriceTable.preset("example-cached-10pct"))
    gen = GenerationConfig(max_new_tokens=MAX_TOKENS, handoff="on", handoff_flags=1, handoff_window=1)
    client = vllm_client(cloud_base_url)
    handed = 0
    for question in QUESTIONS[:3]:
        ids = engine.render([{"role": "user", "content": question}])
        result = engine.generate(ids, gen)
        sources = [e.source for e in result.events if not e.final_flush]
        if "cloud" not in sources:
            continue
        start = sources.index("cloud")
        assert set(sources[start:]) == {"cloud"} and set(sources[:start]) <= {"local"}
        assert result.ledger.handed_off_tokens == len(sources) - start and result.ledger.cloud_calls == 1
        prefix = ids + result.token_ids[:start]
        expected = vllm_greedy(client, cloud.config.model, prefix, MAX_TOKENS - start)
        assert result.token_ids[start:] == expected[: len(result.token_ids) - start]
        handed += 1
    assert handed >= 1, "no request handed off: the router flagged nothing"


def test_router_cloud_is_one_request_with_the_cloud_only_bill(slm, cloud: CloudClient,
                                                               cloud_base_url: str) -> None:
    engine = HybridEngine(slm, AlwaysCloudRouter(), cloud)
    ids = engine.render([{"role": "user", "content": QUESTIONS[0]}])
    before = vllm_metrics(cloud_base_url)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=MAX_TOKENS))
    led = result.ledger
    # the bill of a cloud-only answer: the prompt once, the answer once (the server may have served part of the
    # prompt from its cache, which the counterfactual does not assume: at most equal)
    assert led.cloud_calls == 1 and led.billed_prompt_tokens == len(ids)
    assert led.generated_tokens == len(result.token_ids)
    assert led.billed_completion_tokens == len(result.token_ids) + (result.finish_reason == "stop")  # EOS billed
    assert led.cost_usd <= led.cloud_only_cost_usd
    delta = settled_delta(cloud_base_url, before, 1)
    assert {f: getattr(led, f) for f in COUNTERS.values()} == {f: delta[c] for c, f in COUNTERS.items()}
    assert result.token_ids == vllm_greedy(vllm_client(cloud_base_url), cloud.config.model, ids, MAX_TOKENS)[
        : len(result.token_ids)]


def test_a_handoff_ledger_matches_the_server_counters(slm, cloud: CloudClient, cloud_base_url: str) -> None:
    """Per-token calls, then a hand-off: calls, billed and cached tokens (as the server reported them, the
    default 'server' basis) equal the increase of vLLM's own counters."""
    engine = HybridEngine(slm, EntropyRouter(0.6), cloud)  # the default example prices: guard and hand-off on
    gen = GenerationConfig(max_new_tokens=MAX_TOKENS, handoff_flags=3, handoff_window=6, cloud_mode="replace")
    for question in QUESTIONS:
        ids = engine.render([{"role": "user", "content": question}])
        before = vllm_metrics(cloud_base_url)
        led = engine.generate(ids, gen).ledger
        if not led.handed_off_tokens or led.cloud_calls < 2:
            continue
        delta = settled_delta(cloud_base_url, before, led.cloud_calls)
        assert {f: getattr(led, f) for f in COUNTERS.values()} == {f: delta[c] for c, f in COUNTERS.items()}
        assert led.cache_basis == "server"
        return
    pytest.fail("no request made per-token calls and then handed off")


def test_echo_calls_never_hit_the_prefix_cache(slm, cloud: CloudClient) -> None:
    """Why block_verify pays its whole prefix each call on vLLM: a request with prompt logprobs skips reading
    the prefix cache (docs/cost.md), so the same echo call twice reports nothing cached, where a plain call on
    the same prompt is served from the cache."""
    ids = slm.tokenizer.encode("def fibonacci(n):\n    " * 8, add_special_tokens=False)
    gen = GenerationConfig(max_new_tokens=1)
    plain = [cloud.next_tokens(ids, gen, 1).usage for _ in range(2)]
    echo = [cloud.score_block(ids[:-4], ids[-4:], gen, logprobs=5).usage for _ in range(2)]
    assert plain[1].cached_tokens >= 16  # vLLM caches whole 16-token blocks
    assert echo[0].cached_tokens == echo[1].cached_tokens == 0
