"""Reliability on the tiny models: every cloud fault of the fault proxy (tests/fault_proxy.py, here answering
completions itself), bounded retries, both failure policies, the circuit breaker, and framework streams that
end cleanly. The same faults against the real vLLM are in test_reliability_real.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_proxy import FAULT_MODES, FaultProxy
from test_cloud_faults import CloudAfter

from hybrid_llm_adapters import CloudConfig, CloudError, GenerationConfig, HybridEngine, PriceTable
from hybrid_llm_adapters.cloud.breaker import CircuitBreaker
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.errors import CloudUnavailableError
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import AlwaysCloudRouter

# the fast settings every fault test uses: a hang costs 2 x 0.5 s, a 429 asks for 0.2 s
FAST = {"max_retries": 1, "timeout": 0.5, "max_retry_s": 5.0, "send_token_ids": True}


def stub_token(tiny_model_dir: Path) -> int:
    return int(load_local_model(tiny_model_dir).tokenizer.encode("a", add_special_tokens=False)[0])


def proxy_for(tiny_model_dir: Path, **kw: object) -> FaultProxy:
    return FaultProxy(None, hang_s=3.0, retry_after=0.2, stub_token_id=stub_token(tiny_model_dir),
                      stub_text="a", **kw)  # type: ignore[arg-type]


def make_engine(tiny_model_dir: Path, proxy: FaultProxy, local_steps: int = 3, **cloud: object) -> HybridEngine:
    config = CloudConfig(base_url=proxy.base_url, model="stub", **{**FAST, **cloud})  # type: ignore[arg-type]
    # self-hosted prices: the per-call fault handling under test, without the cost guard's hand-off
    return HybridEngine(load_local_model(tiny_model_dir), CloudAfter(local_steps), CloudClient(config),
                        PriceTable(kind="self_hosted"))


def prompt(engine: HybridEngine) -> list[int]:
    return engine.render([{"role": "user", "content": "hi"}])


# ------------------------------------------------------------------------------------------- each fault


@pytest.mark.parametrize("mode", [m for m in FAULT_MODES if m != "no_logprobs"])
def test_fault_then_local_fallback(tiny_model_dir: Path, mode: str) -> None:
    """After the bounded retries the request continues on the device; the fallback tokens are marked and the
    ledger counts the failed call; the text before the fault is kept."""
    with proxy_for(tiny_model_dir) as proxy:
        engine = make_engine(tiny_model_dir, proxy, on_failure="local")
        proxy.set(mode)
        t0 = time.monotonic()
        result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=10))
        elapsed = time.monotonic() - t0
    sources = [e.source for e in result.events]
    assert sources[:3] == ["local"] * 3 and set(sources[3:]) == {"fallback"}
    assert result.ledger.failed_cloud_calls == 1 and result.ledger.cloud_calls == 0
    assert result.ledger.fallback_tokens == len(result.token_ids) - 3
    assert sum(proxy.injected.values()) <= 2  # 1 try + max_retries=1 (refuse/kill count no more)
    assert elapsed < 10.0  # 2 x 0.5 s timeouts and short waits; slack for a loaded 2-core CI box


@pytest.mark.parametrize("mode", ["refuse", "hang", "429", "503", "bad_json", "kill"])
def test_fault_then_raise_keeps_partial_text(tiny_model_dir: Path, mode: str) -> None:
    with proxy_for(tiny_model_dir) as proxy:
        engine = make_engine(tiny_model_dir, proxy, on_failure="raise")
        proxy.set(mode)
        events = []
        with pytest.raises(CloudError) as info:
            for event in engine.stream(prompt(engine), GenerationConfig(max_new_tokens=10)):
                events.append(event)  # noqa: PERF402 - what was streamed before the raise is the point
    assert len(events) == 3
    assert info.value.partial_text.startswith("".join(e.text for e in events))
    assert info.value.partial_token_ids == [e.token_id for e in events]
    assert "failed 2 time(s)" in str(info.value) and "on_failure='local'" in str(info.value)


def test_server_killed_mid_generation_then_restarted(tiny_model_dir: Path) -> None:
    """Cloud tokens, then the server dies mid-answer: the cloud text stays, the rest is local; a restarted
    server is used by the next request."""
    with proxy_for(tiny_model_dir) as proxy:
        engine = make_engine(tiny_model_dir, proxy, local_steps=0, on_failure="local")
        proxy.set("kill", after=3)  # three one-token calls (replace mode: the auto mode's probe would count too)
        result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=8, cloud_mode="replace"))
        assert [e.source for e in result.events][:3] == ["cloud"] * 3
        assert {e.source for e in result.events[3:]} == {"fallback"}
        assert result.text.startswith("aaa")
        proxy.set("pass")
        again = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=4))
    assert [e.source for e in again.events] == ["cloud"] * 4


def test_reply_without_logprobs(tiny_model_dir: Path) -> None:
    """replace mode uses the reply's text; verify mode needs logprobs, so it falls back after the retries."""
    with proxy_for(tiny_model_dir) as proxy:
        engine = make_engine(tiny_model_dir, proxy, on_failure="local")
        proxy.set("no_logprobs")
        replaced = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=6))
        engine = make_engine(tiny_model_dir, proxy, on_failure="local")  # CloudAfter counts steps: a fresh one
        verified = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=6, cloud_mode="verify"))
    assert replaced.ledger.cloud_tokens == 3 and replaced.ledger.failed_cloud_calls == 0  # text hand-over
    assert verified.ledger.failed_cloud_calls == 1 and verified.ledger.fallback_tokens == 3


# ------------------------------------------------------------------------------------- retry bounds


def test_retry_after_is_honoured_and_capped(tiny_model_dir: Path) -> None:
    with proxy_for(tiny_model_dir) as proxy:
        proxy.retry_after = 0.8
        engine = make_engine(tiny_model_dir, proxy, local_steps=0)
        proxy.set("429", count=1)
        t0 = time.monotonic()
        engine.generate(prompt(engine), GenerationConfig(max_new_tokens=1))
        honoured = time.monotonic() - t0
        proxy.retry_after = 100.0
        capped_engine = make_engine(tiny_model_dir, proxy, local_steps=0, retry_after_max_s=0.3)
        proxy.set("429", count=1)
        t0 = time.monotonic()
        result = capped_engine.generate(prompt(engine), GenerationConfig(max_new_tokens=1))
        capped = time.monotonic() - t0
    assert 0.8 <= honoured < 3.0
    assert 0.3 <= capped < 2.0
    assert result.events[0].source == "cloud"  # the retry after the wait succeeded


def test_total_retry_time_is_bounded(tiny_model_dir: Path) -> None:
    """Many retries allowed, but max_retry_s ends them: a hanging server cannot hold a request for
    max_retries x timeout."""
    with proxy_for(tiny_model_dir) as proxy:
        engine = make_engine(tiny_model_dir, proxy, local_steps=0, max_retries=50, timeout=0.3, max_retry_s=1.0,
                             on_failure="local")
        proxy.set("hang")
        t0 = time.monotonic()
        result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=2))
        elapsed = time.monotonic() - t0
    assert elapsed < 6.0  # max_retry_s=1 plus one timeout, with slack for a loaded box
    assert proxy.injected["hang"] <= 5
    assert result.ledger.failed_cloud_calls == 1


# ---------------------------------------------------------------------------------------- the breaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_states() -> None:
    clock = Clock()
    b = CircuitBreaker("http://x/v1", failures=2, reset_s=10.0, clock=clock)
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"
    with pytest.raises(CloudUnavailableError, match=r"circuit breaker is open.*10\.0 s") as info:
        b.before_call()
    assert info.value.retry_in_s == 10.0
    clock.t = 10.0
    assert b.state == "half_open"
    assert b.before_call() is True  # the one probe
    with pytest.raises(CloudUnavailableError, match="probe is in flight"):
        b.before_call()
    b.record_failure()  # the probe failed: open again for reset_s
    assert b.state == "open" and b.retry_in() == 10.0
    clock.t = 20.0
    assert b.before_call() is True
    b.record_success()
    assert b.state == "closed" and b.before_call() is False
    assert b.opened == 2


def test_breaker_skips_a_dead_cloud_and_recovers(tiny_model_dir: Path) -> None:
    """Two failed requests open the breaker; the next request skips the cloud at once (fallback, or a
    CloudUnavailableError naming the breaker); after reset_s one probe finds the cloud back and it is used."""
    with proxy_for(tiny_model_dir) as proxy:
        cloud = {"breaker_failures": 2, "breaker_reset_s": 1.0, "max_retries": 0}
        engine = make_engine(tiny_model_dir, proxy, local_steps=0, on_failure="local", **cloud)
        proxy.set("503")
        for _ in range(2):
            assert engine.generate(prompt(engine), GenerationConfig(max_new_tokens=2)).ledger.failed_cloud_calls == 1
        seen = proxy.completions
        t0 = time.monotonic()
        skipped = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=2))
        assert time.monotonic() - t0 < 0.5 and proxy.completions == seen  # not asked at all
        assert [e.source for e in skipped.events] == ["fallback"] * 2
        raising = make_engine(tiny_model_dir, proxy, local_steps=0, on_failure="raise", **cloud)
        with pytest.raises(CloudUnavailableError, match="circuit breaker is open") as info:
            raising.generate(prompt(engine), GenerationConfig(max_new_tokens=2))
        assert 0 < info.value.retry_in_s <= 1.0
        proxy.set("pass")
        time.sleep(1.05)
        back = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=3))
    assert [e.source for e in back.events] == ["cloud"] * 3
    assert engine.cloud is not None and engine.cloud.breaker.state == "closed"


def test_client_errors_do_not_open_the_breaker(tiny_model_dir: Path) -> None:
    """A 401 is the user's to fix on every request: it is raised each time, never hidden by the breaker."""
    with proxy_for(tiny_model_dir, api_key="right-key") as proxy:
        engine = make_engine(tiny_model_dir, proxy, local_steps=0, on_failure="raise", breaker_failures=1,
                             api_key="wrong-key")
        for _ in range(3):
            with pytest.raises(CloudError, match="refused the API key"):
                engine.generate(prompt(engine), GenerationConfig(max_new_tokens=1))
        assert engine.cloud is not None and engine.cloud.breaker.state == "closed"


# ------------------------------------------------------------------------ a hand-off's streamed call


def handoff_engine(tiny_model_dir: Path, proxy: FaultProxy, **cloud: object) -> HybridEngine:
    """Always-cloud: the whole answer is one streamed completion (the hand-off path)."""
    config = CloudConfig(base_url=proxy.base_url, model="stub", **{**FAST, **cloud})  # type: ignore[arg-type]
    return HybridEngine(load_local_model(tiny_model_dir), AlwaysCloudRouter(), CloudClient(config))


def test_a_stream_cut_mid_answer_keeps_what_arrived(tiny_model_dir: Path) -> None:
    """The server dies after half the streamed body: the tokens that arrived are kept and released; with
    on_failure='raise' they are in the error's partial text, with 'local' the SLM finishes the answer."""
    with proxy_for(tiny_model_dir) as proxy:
        engine = handoff_engine(tiny_model_dir, proxy, on_failure="raise")
        proxy.set("kill", count=1)
        events = []
        with pytest.raises(CloudError, match="stream broke") as info:
            for event in engine.stream(prompt(engine), GenerationConfig(max_new_tokens=12)):
                events.append(event)  # noqa: PERF402 - what was streamed before the raise is the point
        assert 0 < len(events) < 12 and {e.source for e in events} == {"cloud"}
        assert info.value.partial_token_ids == [e.token_id for e in events]
        assert info.value.partial_text == "".join(e.text for e in events)
        assert info.value.ledger.failed_cloud_calls == 1 and info.value.ledger.cloud_tokens == len(events)

        proxy.set("pass")
        engine = handoff_engine(tiny_model_dir, proxy, on_failure="local")
        proxy.set("kill", count=1)
        result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=12))
        sources = [e.source for e in result.events]
        n_cloud = sources.count("cloud")
        assert 0 < n_cloud < 12 and sources == ["cloud"] * n_cloud + ["fallback"] * (len(sources) - n_cloud)
        assert result.ledger.handed_off_tokens == n_cloud and result.ledger.failed_cloud_calls == 1


def test_a_stream_that_fails_to_open_is_retried(tiny_model_dir: Path) -> None:
    with proxy_for(tiny_model_dir) as proxy:
        engine = handoff_engine(tiny_model_dir, proxy, on_failure="raise", max_retries=2)
        proxy.set("503", count=2)
        result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=6))
        assert [e.source for e in result.events] == ["cloud"] * 6 and proxy.injected["503"] == 2
        assert result.ledger.cloud_calls == 1 and result.ledger.billed_completion_tokens == 6


# ------------------------------------------------------------------------------ framework streams


def lc_model(tiny_model_dir: Path, proxy: FaultProxy, policy: str):  # type: ignore[no-untyped-def]
    from langchain_hybrid_llm import HybridChatModel

    return HybridChatModel(model=str(tiny_model_dir), base_url=proxy.base_url, cloud_model="stub", router="cloud_per_token",
                           on_cloud_failure=policy, max_tokens=8, max_retries=0, timeout=0.5,
                           cloud_options={"send_token_ids": True})


def li_model(tiny_model_dir: Path, proxy: FaultProxy, policy: str):  # type: ignore[no-untyped-def]
    from llama_index.llms.hybrid import HybridChatModel

    return HybridChatModel(model=str(tiny_model_dir), base_url=proxy.base_url, cloud_model="stub", router="cloud_per_token",
                           on_cloud_failure=policy, max_tokens=8, max_retries=0, timeout=0.5)


def test_langchain_streams_end_cleanly_under_faults(tiny_model_dir: Path) -> None:
    with proxy_for(tiny_model_dir) as proxy:
        proxy.set("503", after=3)
        chunks = list(lc_model(tiny_model_dir, proxy, "local").stream("hi"))
        ledger = chunks[-1].response_metadata["hybrid_ledger"]
        assert chunks[-1].response_metadata["finish_reason"] in ("length", "stop")
        assert ledger["failed_cloud_calls"] == 1 and ledger["cloud_tokens"] == 3 and ledger["fallback_tokens"] > 0
        assert "".join(str(c.content) for c in chunks).startswith("aaa")
        proxy.set("503", after=3)
        got = []
        with pytest.raises(CloudError) as info:
            for chunk in lc_model(tiny_model_dir, proxy, "raise").stream("hi"):
                got.append(chunk)  # noqa: PERF402
    assert "".join(str(c.content) for c in got) == "aaa" == info.value.partial_text


async def test_llama_index_streams_end_cleanly_under_faults(tiny_model_dir: Path) -> None:
    from llama_index.core.base.llms.types import ChatMessage

    with proxy_for(tiny_model_dir) as proxy:
        proxy.set("bad_json", after=3)
        llm = li_model(tiny_model_dir, proxy, "local")
        chunks = [c async for c in await llm.astream_chat([ChatMessage(role="user", content="hi")])]
        assert chunks[-1].additional_kwargs["hybrid_ledger"]["failed_cloud_calls"] == 1
        assert (chunks[-1].message.content or "").startswith("aaa")
        proxy.set("bad_json", after=3)
        got = []
        with pytest.raises(CloudError) as info:
            for chunk in li_model(tiny_model_dir, proxy, "raise").stream_complete("hi"):
                got.append(chunk.delta)
    assert "".join(d or "" for d in got) == "aaa" == info.value.partial_text
