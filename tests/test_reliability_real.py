"""Reliability on the real stack: the real SLM, the real vLLM server behind the fault proxy
(tests/fault_proxy.py), through the core and both adapters. Short answers (6-8 tokens) keep it cheap."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FAULT_MODES, FaultProxy

from hybrid_llm_adapters import CloudConfig, CloudError, ConfigError, GenerationConfig, HybridEngine
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.errors import CloudUnavailableError
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing.routers import CloudPerTokenRouter

pytestmark = [pytest.mark.real, pytest.mark.cloud]

SECRET = "sk-real-SECRET-fedcba9876543210"
QUESTION = "Write a Python function that returns the square of x."


@pytest.fixture(scope="module")
def proxy(cloud_base_url: str) -> Any:
    with FaultProxy(cloud_base_url, hang_s=20.0, retry_after=0.3) as p:
        yield p


@pytest.fixture(autouse=True)
def healthy(proxy: FaultProxy) -> Any:
    yield
    proxy.set("pass")  # every test leaves a live server behind (a killed one restarted)


def engine_for(real_slm_dir: Path, url: str, model: str, **cloud: Any) -> HybridEngine:
    settings = {"timeout": 30.0, "max_retries": 1, "breaker_failures": 0, "on_failure": "local", **cloud}
    client = CloudClient(CloudConfig(base_url=url, model=model, **settings))
    return HybridEngine(load_local_model(real_slm_dir), CloudPerTokenRouter(), client)  # a call per token


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_each_fault_against_vllm(mode: str, proxy: FaultProxy, real_slm_dir: Path, cloud_model_name: str) -> None:
    """Two cloud tokens, then the fault: bounded retries, the cloud's text kept, the rest local and marked."""
    timeout = 3.0 if mode == "hang" else 30.0
    engine = engine_for(real_slm_dir, proxy.base_url, cloud_model_name, timeout=timeout)
    ids = engine.render([{"role": "user", "content": QUESTION}])
    after = 0 if mode in ("refuse", "hang") else 2
    proxy.set(mode, after=after)
    t0 = time.monotonic()
    result = engine.generate(ids, GenerationConfig(max_new_tokens=4))
    elapsed = time.monotonic() - t0
    sources = [e.source for e in result.events]
    if mode == "no_logprobs":  # replace mode takes the reply's text: the fault is survived without a fallback
        assert result.ledger.failed_cloud_calls == 0 and result.ledger.cloud_tokens >= 2
        return
    assert sources[:after] == ["cloud"] * after and set(sources[after:]) == {"fallback"}
    assert result.text.startswith(engine.tokenizer.decode(result.token_ids[:after]))  # the cloud's text is kept
    assert result.ledger.failed_cloud_calls == 1 and result.ledger.fallback_tokens == len(result.token_ids) - after
    assert proxy.injected[mode] <= 2  # one try + max_retries=1
    assert elapsed < (2 * timeout + 20 if mode == "hang" else 60)


def test_raise_policy_keeps_partial_text(proxy: FaultProxy, real_slm_dir: Path, cloud_model_name: str) -> None:
    engine = engine_for(real_slm_dir, proxy.base_url, cloud_model_name, on_failure="raise")
    ids = engine.render([{"role": "user", "content": QUESTION}])
    proxy.set("503", after=3)
    events = []
    with pytest.raises(CloudError, match="failed 2 time.*InternalServerError.*on_failure='local'") as info:
        for event in engine.stream(ids, GenerationConfig(max_new_tokens=8)):
            events.append(event)  # noqa: PERF402
    assert len(events) == 3 and info.value.partial_token_ids == [e.token_id for e in events]
    assert info.value.partial_text.startswith("".join(e.text for e in events))


def test_breaker_opens_then_recovers(proxy: FaultProxy, real_slm_dir: Path, cloud_model_name: str) -> None:
    engine = engine_for(real_slm_dir, proxy.base_url, cloud_model_name, breaker_failures=1, breaker_reset_s=1.0,
                        max_retries=0)
    ids = engine.render([{"role": "user", "content": QUESTION}])
    proxy.set("refuse")
    assert engine.generate(ids, GenerationConfig(max_new_tokens=3)).ledger.failed_cloud_calls == 1
    t0 = time.monotonic()
    skipped = engine.generate(ids, GenerationConfig(max_new_tokens=3))
    assert {e.source for e in skipped.events} == {"fallback"} and time.monotonic() - t0 < 5
    proxy.set("pass")
    time.sleep(1.1)
    back = engine.generate(ids, GenerationConfig(max_new_tokens=3))
    assert back.ledger.cloud_tokens == 3 and engine.cloud is not None and engine.cloud.breaker.state == "closed"
    raising = engine_for(real_slm_dir, proxy.base_url, cloud_model_name, breaker_failures=1, breaker_reset_s=1.0,
                         max_retries=0, on_failure="raise")
    proxy.set("refuse")
    with pytest.raises(CloudError):
        raising.generate(ids, GenerationConfig(max_new_tokens=2))
    with pytest.raises(CloudUnavailableError, match="circuit breaker is open"):
        raising.generate(ids, GenerationConfig(max_new_tokens=2))


# --------------------------------------------------------------------------------------------- adapters


def lc(real_slm_dir: Path, url: str, model: str, **kw: Any) -> Any:
    from langchain_hybrid_llm import HybridChatModel

    return HybridChatModel(model=str(real_slm_dir), base_url=url, cloud_model=model,
                           **{"router": "cloud_per_token", "max_tokens": 6, "max_retries": 0, "timeout": 30, **kw})


def li(real_slm_dir: Path, url: str, model: str, **kw: Any) -> Any:
    from llama_index.llms.hybrid import HybridChatModel

    return HybridChatModel(model=str(real_slm_dir), base_url=url, cloud_model=model,
                           **{"router": "cloud_per_token", "max_tokens": 6, "max_retries": 0, "timeout": 30, **kw})


def test_langchain_stream_under_a_killed_server(proxy: FaultProxy, real_slm_dir: Path, cloud_model_name: str) -> None:
    proxy.set("kill", after=2)
    chunks = list(lc(real_slm_dir, proxy.base_url, cloud_model_name, on_cloud_failure="local").stream(QUESTION))
    ledger = chunks[-1].response_metadata["hybrid_ledger"]
    assert ledger["cloud_tokens"] == 2 and ledger["failed_cloud_calls"] == 1 and ledger["fallback_tokens"] == 4
    proxy.set("pass")
    proxy.set("502", after=2)
    got = []
    with pytest.raises(CloudError) as info:
        for chunk in lc(real_slm_dir, proxy.base_url, cloud_model_name, on_cloud_failure="raise").stream(QUESTION):
            got.append(str(chunk.content))
    assert info.value.partial_text.startswith("".join(got)) and len(info.value.partial_token_ids) == 2


async def test_llama_index_stream_under_faults(proxy: FaultProxy, real_slm_dir: Path, cloud_model_name: str) -> None:
    from llama_index.core.base.llms.types import ChatMessage

    messages = [ChatMessage(role="user", content=QUESTION)]
    proxy.set("bad_json", after=2)
    llm = li(real_slm_dir, proxy.base_url, cloud_model_name, on_cloud_failure="local")
    chunks = [c async for c in await llm.astream_chat(messages)]
    assert chunks[-1].additional_kwargs["hybrid_ledger"]["failed_cloud_calls"] == 1
    proxy.set("429", after=2)
    deltas: list[str] = []
    with pytest.raises(CloudError) as info:
        llm = li(real_slm_dir, proxy.base_url, cloud_model_name, on_cloud_failure="raise")
        async for c in await llm.astream_chat(messages):
            deltas.append(c.delta or "")
    assert info.value.partial_text.startswith("".join(deltas)) and len(info.value.partial_token_ids) == 2


# ------------------------------------------------------------------------------------------- bad input


def test_bad_input_real(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str) -> None:
    with FaultProxy(cloud_base_url, api_key="the-real-key") as keyed:
        with pytest.raises(CloudError, match=r"refused the API key \(401"):
            lc(real_slm_dir, keyed.base_url, cloud_model_name, api_key="wrong").invoke("hi")
        with pytest.raises(CloudError, match=r"refused the API key \(401"):
            li(real_slm_dir, keyed.base_url, cloud_model_name, api_key="wrong").complete("hi")
    with pytest.raises(CloudError, match=rf"does not serve model 'gpt-99' \(404; it serves \['{cloud_model_name}'\]\)"):
        lc(real_slm_dir, cloud_base_url, "gpt-99").invoke("hi")
    with pytest.raises(CloudError, match="failed 1 time.*Check that the server is up"):
        li(real_slm_dir, "http://127.0.0.1:9/v1", cloud_model_name, timeout=3).complete("hi")
    with pytest.raises(ConfigError, match=r"the prompt is \d+ tokens, but the SLM .* holds 32768"):
        lc(real_slm_dir, cloud_base_url, cloud_model_name).invoke("word " * 33000)
    with pytest.raises(ConfigError, match="messages is empty"):
        li(real_slm_dir, cloud_base_url, cloud_model_name).chat([])


# ----------------------------------------------------------------------------------------- concurrency


PROMPTS = [f"In one short sentence: what does the Python built-in `{name}` do?" for name in
           ("len", "zip", "map", "sorted", "sum", "range", "enumerate", "any", "all", "min", "max", "abs",
            "round", "repr", "iter", "next")]


def test_sixteen_at_once_equal_one_by_one(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str) -> None:
    """16 requests at once through LangChain ``abatch`` and, at the same time, 16 through LlamaIndex
    ``acomplete`` (32 in flight on one shared engine) equal the same requests one by one (greedy), on the real
    SLM with the real cloud taking the uncertain tokens. Short answers: 2 cores run it."""
    from langchain_hybrid_llm import HybridChatModel as LC
    from llama_index.llms.hybrid import HybridChatModel as LI

    common = {"model": str(real_slm_dir), "base_url": cloud_base_url, "cloud_model": cloud_model_name,
              "router": "entropy", "threshold": 1.0, "max_tokens": 5, "timeout": 120}
    lc_llm, li_llm = LC(**common), LI(**common)
    assert lc_llm.engine is li_llm.engine  # equal settings: one engine, one loaded SLM
    one_by_one = [lc_llm.invoke(p) for p in PROMPTS]

    async def together() -> tuple[list[Any], list[Any]]:
        return await asyncio.gather(lc_llm.abatch(PROMPTS, config={"max_concurrency": 16}),
                                    asyncio.gather(*[li_llm.acomplete(p) for p in PROMPTS]))

    lc_out, li_out = asyncio.run(together())
    expected = [m.content for m in one_by_one]
    assert [m.content for m in lc_out] == expected
    assert [r.text for r in li_out] == expected
    assert sum(m.response_metadata["hybrid_ledger"]["cloud_tokens"] for m in one_by_one) > 0


# --------------------------------------------------------------------------------------------- secrets


def test_key_not_in_logs_real(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str,
                              caplog: pytest.LogCaptureFixture) -> None:
    for name in ("", "openai", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    with FaultProxy(cloud_base_url, api_key=SECRET) as keyed:
        ok = lc(real_slm_dir, keyed.base_url, cloud_model_name, api_key=SECRET, max_tokens=3)
        assert ok.invoke("hi").response_metadata["hybrid_ledger"]["cloud_tokens"] == 3
        with pytest.raises(CloudError) as info:
            lc(real_slm_dir, keyed.base_url, cloud_model_name, api_key=SECRET + "x", max_tokens=3).invoke("hi")
    assert {r.name.split(".")[0] for r in caplog.records} >= {"openai", "httpcore"}
    for text in (caplog.text, str(info.value), repr(info.value), repr(ok), str(ok.model_dump())):
        assert SECRET not in text
