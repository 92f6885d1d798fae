"""Many requests at once on one shared engine (tiny models, the fault proxy as a prompt-dependent stub cloud:
its token is a hash of the prefix it was sent): 16 concurrent requests through LangChain ``batch`` /
``abatch`` and LlamaIndex async calls give exactly the outputs of the same requests one by one (greedy), text,
token sources and the whole ledger, so no request's state or prefix leaks into another's; the requests
really shared SLM forwards; a soak of a few hundred requests stays within a memory bound."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy

from hybrid_llm_adapters import GenerationConfig, PriceTable

N = 16
PROMPTS = [f"Question {i}: what is {i} + {2 * i}?" for i in range(N)]
# the tiny random SLM's entropy sits near ln(vocab) ~ 5.887 nats: this threshold sends about half the tokens
# to the (stub) cloud, so the requests interleave local forwards and cloud round trips
THRESHOLD = 5.887


@pytest.fixture(scope="module")
def stub(tiny_model_dir: Path) -> Any:
    from hybrid_llm_adapters.local.slm import load_local_model

    tokenizer = load_local_model(tiny_model_dir).tokenizer
    words = ["a", " b", "c", " d", "e", "1", " 2", "x"]
    tokens = {tokenizer.encode(w, add_special_tokens=False)[0]: w for w in words}
    assert len(tokens) >= 6
    first = next(iter(tokens))
    with FaultProxy(None, stub_token_id=first, stub_text=tokens[first], stub_tokens=tokens) as proxy:
        yield proxy


def settings(tiny_model_dir: Path, stub: FaultProxy) -> dict[str, Any]:
    # self-hosted prices: the batching under test, token by token (a hand-off would take rows out of the batch)
    return {"model": str(tiny_model_dir), "base_url": stub.base_url, "cloud_model": "stub", "router": "entropy",
            "threshold": THRESHOLD, "max_tokens": 10, "max_retries": 0, "prices": PriceTable(kind="self_hosted")}


# everything in the ledger but the timings (each request's time depends on what ran beside it)
TIMINGS = ("local_seconds", "cloud_seconds")


def signature(ledger: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ledger.items() if k not in TIMINGS}


def sources(message: Any) -> list[str]:
    return list(message.response_metadata["hybrid_token_sources"])


def test_langchain_batch_equals_one_by_one(tiny_model_dir: Path, stub: FaultProxy) -> None:
    from langchain_hybrid_llm import HybridChatModel

    from hybrid_llm_adapters import get_engine

    llm = HybridChatModel(**settings(tiny_model_dir, stub))
    stats = get_engine(llm.engine_config()).local.batcher.stats

    def seen(messages: list[Any]) -> list[tuple[Any, ...]]:
        return [(m.content, sources(m), signature(m.response_metadata["hybrid_ledger"])) for m in messages]

    forwards = stats.forwards
    expected = seen([llm.invoke(p) for p in PROMPTS])
    alone_forwards = stats.forwards - forwards
    forwards = stats.forwards
    assert seen(llm.batch(PROMPTS, config={"max_concurrency": N})) == expected
    assert stats.forwards - forwards < alone_forwards / 2  # the 16 requests shared forwards
    assert seen(asyncio.run(llm.abatch(PROMPTS, config={"max_concurrency": N}))) == expected
    assert sum(s["cloud_tokens"] for *_, s in expected) > 0 and sum(s["local_tokens"] for *_, s in expected) > 0
    # the stub's token depends on the prefix: distinct prompts get distinct cloud tokens, so a request that
    # sent another's prefix (or got another's reply) would show here
    assert len({c for c, *_ in expected}) >= 12


async def test_llama_index_async_equals_one_by_one(tiny_model_dir: Path, stub: FaultProxy) -> None:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.llms.hybrid import HybridChatModel

    llm = HybridChatModel(**settings(tiny_model_dir, stub))
    one_by_one = [llm.complete(p) for p in PROMPTS]
    together = await asyncio.gather(*[llm.acomplete(p) for p in PROMPTS])
    streamed = await asyncio.gather(*[_astream_text(llm, [ChatMessage(role="user", content=p)]) for p in PROMPTS])
    assert [r.text for r in together] == [r.text for r in one_by_one] == streamed
    assert [signature(r.additional_kwargs["hybrid_ledger"]) for r in together] == [
        signature(r.additional_kwargs["hybrid_ledger"]) for r in one_by_one]
    assert len({r.text for r in one_by_one}) >= 12


async def _astream_text(llm: Any, messages: list[Any]) -> str:
    last = None
    async for chunk in await llm.astream_chat(messages):
        last = chunk
    assert last is not None
    return last.message.content or ""


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


SOAK_REQUESTS = 400
SOAK_BOUND_MB = 48.0


def test_soak_memory_stays_bounded(tiny_model_dir: Path, stub: FaultProxy) -> None:
    """400 requests, 8 at a time, on one engine: after a warm-up, resident memory grows by less than
    SOAK_BOUND_MB (per-request state, KV caches and events are all released)."""
    from langchain_hybrid_llm import HybridChatModel

    from hybrid_llm_adapters import get_engine

    engine = get_engine(HybridChatModel(**settings(tiny_model_dir, stub)).engine_config())
    gen = GenerationConfig(max_new_tokens=6)

    def one(i: int) -> int:
        ids = engine.render([{"role": "user", "content": PROMPTS[i % N] * (1 + i % 3)}])
        return len(engine.generate(ids, gen).token_ids)

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(40)))  # warm-up: allocator pools, thread stacks, tokenizer caches
        gc.collect()
        before = rss_mb()
        produced = list(pool.map(one, range(SOAK_REQUESTS)))
    gc.collect()
    grown = rss_mb() - before
    assert all(n > 0 for n in produced)
    assert grown < SOAK_BOUND_MB, f"RSS grew {grown:.1f} MB over {SOAK_REQUESTS} requests"
    assert time.monotonic() - t0 < 240
