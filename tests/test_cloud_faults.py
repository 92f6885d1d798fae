"""Cloud faults against the real openai SDK client: a server that answers 500 or hangs (a real vLLM
cannot be made to do either on demand). The text generated before the fault is never lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from doubles import FaultyServer

from hybrid_llm_adapters import CloudConfig, CloudError, GenerationConfig, HybridEngine
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import Router

SECRET = "sk-test-SECRET-do-not-leak-123"


class CloudAfter(Router):
    """Local for the first ``n`` steps, then the cloud."""

    name = "cloud_after"

    def __init__(self, n: int) -> None:
        self.n = n
        self.step = 0

    def use_cloud(self, score: float | None, step: object) -> bool:
        self.step += 1
        return self.step > self.n


def make_engine(tiny_model_dir: Path, url: str, **cloud: object) -> HybridEngine:
    local = load_local_model(tiny_model_dir)
    config = CloudConfig(base_url=url, model="m", api_key=SECRET, **cloud)  # type: ignore[arg-type]
    return HybridEngine(local, CloudAfter(5), CloudClient(config))


def test_server_error_is_retried_then_raises_with_partial_text(tiny_model_dir: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with FaultyServer("error") as server:
        engine = make_engine(tiny_model_dir, server.base_url, max_retries=2, timeout=5)
        ids = engine.render([{"role": "user", "content": "hi"}])
        events = []
        with pytest.raises(CloudError) as info:
            for event in engine.stream(ids, GenerationConfig(max_new_tokens=20)):
                events.append(event)  # noqa: PERF402 - the events before the raise are the point
    assert server.requests == 3  # 1 try + 2 retries
    assert len(events) == 5
    assert info.value.partial_text == "".join(e.text for e in events) or info.value.partial_text.startswith(
        "".join(e.text for e in events)
    )
    assert len(info.value.partial_token_ids) == 5
    assert "max_retries" in str(info.value)
    assert server.auth_headers[0] == f"Bearer {SECRET}"  # the key does reach the server...
    assert SECRET not in str(info.value) and SECRET not in caplog.text  # ...and nowhere else
    assert SECRET not in repr(engine) and SECRET not in repr(engine.cloud)


def test_hanging_server_times_out_and_falls_back_locally(tiny_model_dir: Path) -> None:
    with FaultyServer("hang", hang_s=10) as server:
        engine = make_engine(tiny_model_dir, server.base_url, max_retries=0, timeout=0.5, on_failure="local")
        ids = engine.render([{"role": "user", "content": "hi"}])
        result = engine.generate(ids, GenerationConfig(max_new_tokens=12))
    sources = [e.source for e in result.events]
    assert sources[:5] == ["local"] * 5
    assert set(sources[5:]) == {"fallback"}
    led = result.ledger
    assert led.failed_cloud_calls == 1 and led.cloud_calls == 0  # the request stops asking after a failure
    assert led.fallback_tokens == len(result.token_ids) - 5
    assert server.requests == 1


def test_fallback_matches_local_generation(tiny_model_dir: Path) -> None:
    """Falling back continues exactly where the SLM would have gone: nothing is lost or repeated."""
    from hybrid_llm_adapters.routing import AlwaysLocalRouter

    with FaultyServer("error") as server:
        engine = make_engine(tiny_model_dir, server.base_url, max_retries=0, on_failure="local")
        ids = engine.render([{"role": "user", "content": "hi"}])
        hybrid = engine.generate(ids, GenerationConfig(max_new_tokens=15))
    local = HybridEngine(engine.local, AlwaysLocalRouter()).generate(ids, GenerationConfig(max_new_tokens=15))
    assert hybrid.token_ids == local.token_ids
    assert hybrid.text == local.text
