"""The LangChain adapter on the real pair: the on-device Qwen2.5-Coder-0.5B SLM and the real vLLM cloud
(Qwen2.5-Coder-1.5B). Both cookbook scripts run here end to end."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from langchain_hybrid_llm import HybridChatModel, ledger_from_metadata

from hybrid_llm_adapters import UsageLedger

pytestmark = [pytest.mark.real, pytest.mark.cloud]

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"


def _cookbook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"cookbook_{name}", COOKBOOK / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_kwargs(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str) -> dict[str, Any]:
    return {"model": str(real_slm_dir), "base_url": cloud_base_url, "cloud_model": cloud_model_name}


def _sum(ledgers: list[UsageLedger]) -> UsageLedger:
    total = UsageLedger()
    for ledger in ledgers:
        total = total + ledger
    return total


async def test_real_stream_marks_cloud_tokens_and_matches_invoke(real_kwargs: dict[str, Any]) -> None:
    # a low entropy threshold sends some tokens to the cloud
    llm = HybridChatModel(**real_kwargs, router="entropy", threshold=0.3, max_tokens=40)
    prompt = "Explain in one sentence what a hash map is."
    msg = await llm.ainvoke(prompt)
    full = None
    n_chunks = 0
    async for chunk in llm.astream(prompt):
        n_chunks += 1
        full = chunk if full is None else full + chunk
    assert full is not None and n_chunks > 3
    assert full.content == msg.content  # greedy on both sides: the same answer
    ledger = ledger_from_metadata(full.response_metadata)
    assert ledger is not None and ledger.cloud_calls > 0 and ledger.cloud_tokens > 0
    sources = full.response_metadata["hybrid_token_sources"]
    assert sources.count("cloud") == ledger.cloud_tokens
    assert len(sources) == ledger.generated_tokens  # local / verified / fallback / cloud, one per token
    assert full.usage_metadata == msg.usage_metadata


async def test_real_concurrent_requests_share_one_engine(real_kwargs: dict[str, Any]) -> None:
    a = HybridChatModel(**real_kwargs, max_tokens=8)
    b = HybridChatModel(**real_kwargs, max_tokens=8, temperature=0.7, seed=1)
    assert a.engine is b.engine
    out = await asyncio.gather(a.ainvoke("Say hi."), b.ainvoke("Say bye."))
    assert all(m.usage_metadata and m.usage_metadata["output_tokens"] > 0 for m in out)


def test_cookbook_agent_calculator(real_kwargs: dict[str, Any]) -> None:
    agent = _cookbook("langchain_agent_calculator")
    run = agent.main(["--slm", real_kwargs["model"], "--base-url", real_kwargs["base_url"],
                      "--cloud-model", real_kwargs["cloud_model"]])
    assert run.calculator_calls, "the agent never used the calculator"
    assert agent.final_number(run.answer) == agent.ANSWER, run.answer
    assert len(run.steps) >= 2  # a tool-call step, then the answer
    assert run.total.model_dump() == pytest.approx(_sum(run.steps).model_dump())


def test_cookbook_cost_tracking(real_kwargs: dict[str, Any]) -> None:
    cost = _cookbook("langchain_cost_tracking")
    report = cost.main(["--slm", real_kwargs["model"], "--base-url", real_kwargs["base_url"],
                        "--cloud-model", real_kwargs["cloud_model"], "--max-tokens", "48"])
    per_call = report.per_call
    assert len(per_call) == 5 and report.callback.total.requests == 5
    assert report.callback.total.model_dump() == pytest.approx(_sum(per_call).model_dump())
    usage = report.usage[real_kwargs["model"]]
    assert usage["output_tokens"] == sum(ledger.generated_tokens for ledger in per_call)
    assert usage["input_tokens"] == sum(ledger.prompt_tokens for ledger in per_call)
