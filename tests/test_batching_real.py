"""Batched decoding on the real pair and real vLLM: requests in flight together share SLM forwards and get
exactly what each gets alone (text, token sources, the ledger's counts); a request whose cloud fails, or that
is cancelled, touches no other request and frees its row."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine, PriceTable, RouterConfig
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.errors import CloudError
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import build_router

pytestmark = [pytest.mark.real, pytest.mark.cloud]

PROMPTS = [
    "A baker makes 24 muffins and sells 3 boxes of 4. How many muffins are left?",
    "Write a Python function that returns the largest of three numbers.",
    "Tom has 5 apples, eats 2 and buys 7 more. How many apples does he have?",
    "Explain in one sentence what a hash map is.",
    "What is 17 times 23? Show the steps.",
    "Write a Python one-liner that reverses a string s.",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Name three prime numbers greater than 50 and say why they are prime.",
]
MAX_TOKENS = 32
# counts that must match; timings and the server's prefix-cache hits (so the cost, which bills cached prompt
# tokens at the cached price) depend on what else was running
RUN_DEPENDENT_FIELDS = {"local_seconds", "cloud_seconds", "cached_prompt_tokens", "cost_usd", "savings_usd"}

# the per-token machinery under test: self-hosted prices keep the cost guard and hand-off off
SELF_HOSTED = PriceTable(kind="self_hosted")


@pytest.fixture(scope="module")
def slm(real_slm_dir: Path):
    return load_local_model(real_slm_dir)


def make_engine(slm: Any, base_url: str, model: str, **cloud: Any) -> HybridEngine:
    client = CloudClient(CloudConfig(base_url=base_url, model=model, timeout=120, **cloud))
    router = build_router(RouterConfig(kind="entropy"), slm.tokenizer, slm.hidden_size, None, model)
    return HybridEngine(slm, router, client, SELF_HOSTED)


def outcome(engine: HybridEngine, text: str, mode: str) -> dict[str, Any]:
    ids = engine.render([{"role": "user", "content": text}])
    result = engine.generate(ids, GenerationConfig(max_new_tokens=MAX_TOKENS, cloud_mode=mode))
    return {"text": result.text, "ids": result.token_ids, "sources": [e.source for e in result.events],
            "ledger": result.ledger.model_dump(exclude=RUN_DEPENDENT_FIELDS)}


@pytest.mark.parametrize("mode", ["replace", "block_verify"])
def test_eight_concurrent_requests_equal_each_alone(slm, cloud_base_url: str, cloud_model_name: str,
                                                    mode: str) -> None:
    engine = make_engine(slm, cloud_base_url, cloud_model_name)
    stats = slm.batcher.stats
    before = stats.forwards
    alone = [outcome(engine, p, mode) for p in PROMPTS]
    alone_forwards = stats.forwards - before

    before, rows_before = stats.forwards, stats.rows
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: outcome(engine, p, mode), PROMPTS))
    together_forwards, together_rows = stats.forwards - before, stats.rows - rows_before

    for i, (a, b) in enumerate(zip(alone, together)):
        diff = {k: (a["ledger"][k], b["ledger"][k]) for k in a["ledger"] if a["ledger"][k] != b["ledger"][k]}
        assert b == a, f"request {i} ({mode}) differs when run with 7 others: {diff}"
    assert any("cloud" in a["sources"] for a in alone), "no request used the cloud: nothing was routed"
    assert any("local" in a["sources"] or "verified" in a["sources"] for a in alone)
    # overlap, from the SLM's own count: the same rows in far fewer forwards
    assert together_rows == alone_forwards
    assert together_forwards <= alone_forwards / 2, (together_forwards, alone_forwards)
    assert not slm.batcher._registered  # every row left the batch


def test_a_failing_cloud_touches_only_its_own_request(slm, cloud_base_url: str, cloud_model_name: str) -> None:
    good = make_engine(slm, cloud_base_url, cloud_model_name)
    dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: every call is refused at once
    falls_back = make_engine(slm, dead, cloud_model_name, on_failure="local", max_retries=0, breaker_failures=0)
    raises = make_engine(slm, dead, cloud_model_name, on_failure="raise", max_retries=0, breaker_failures=0)
    expected = [outcome(good, p, "replace") for p in PROMPTS[:4]]

    def run(job: tuple[str, int]) -> Any:
        kind, i = job
        if kind == "good":
            return outcome(good, PROMPTS[i], "replace")
        if kind == "local":
            return outcome(falls_back, PROMPTS[i], "replace")
        with pytest.raises(CloudError) as info:
            outcome(raises, PROMPTS[i], "replace")
        return info.value

    jobs = [("good", i) for i in range(4)] + [("local", 4), ("raise", 5)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    assert results[:4] == expected
    assert "fallback" in results[4]["sources"] and results[4]["ledger"]["failed_cloud_calls"] == 1
    assert isinstance(results[5], CloudError)
    assert not slm.batcher._registered


def test_a_cancelled_request_frees_its_row(slm, cloud_base_url: str, cloud_model_name: str) -> None:
    engine = make_engine(slm, cloud_base_url, cloud_model_name)
    expected = outcome(engine, PROMPTS[1], "replace")
    ids = engine.render([{"role": "user", "content": PROMPTS[0]}])
    stream = engine.stream(ids, GenerationConfig(max_new_tokens=200))
    events = iter(stream)
    for _ in range(3):
        next(events)
    assert len(slm.batcher._registered) == 1
    other: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: other.update(outcome(engine, PROMPTS[1], "replace")))
    worker.start()
    stream.close()  # a consumer that stops reading, as a cancelled astream does
    worker.join(timeout=300)
    assert other == expected  # the other request neither waited for the abandoned row nor saw its tokens
    assert not slm.batcher._registered
