"""Verify and block-verify modes on the real pair and the real vLLM server: lossless with greedy decoding
(near-ties excepted, as in the engine tests), with drafts accepted locally and fewer round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_helpers import (
    match_through_ties,
    vllm_client,
    vllm_greedy,
    vllm_top2_gap,
)

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine, PriceTable
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import EntropyRouter

pytestmark = [pytest.mark.real, pytest.mark.cloud]

# the per-token machinery under test: self-hosted prices keep the cost guard and hand-off off
SELF_HOSTED = PriceTable(kind="self_hosted")


@pytest.fixture(scope="module")
def setup(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str, gsm8k_path: Path):
    slm = load_local_model(real_slm_dir)
    cloud = CloudClient(CloudConfig(base_url=cloud_base_url, model=cloud_model_name, timeout=300))
    question = json.loads(gsm8k_path.read_text().splitlines()[1])["question"]
    return slm, cloud, question


@pytest.mark.parametrize("mode", ["verify", "block_verify", "lookahead"])
def test_verify_modes_reproduce_cloud_greedy(setup, mode: str) -> None:
    slm, cloud, question = setup
    engine = HybridEngine(slm, EntropyRouter(-1.0), cloud, SELF_HOSTED)  # every token checked by the cloud
    ids = engine.render([{"role": "user", "content": question}])
    result = engine.generate(ids, GenerationConfig(max_new_tokens=40, cloud_mode=mode))
    led = result.ledger
    assert led.cloud_mode == mode
    if mode == "lookahead":  # every step goes to the cloud: runs of cloud tokens come several per call
        assert led.cloud_tokens == len(result.token_ids) and led.cloud_calls < len(result.token_ids) / 2
    else:
        assert led.accepted_drafts > 0, "some SLM drafts must be accepted locally"
        assert led.local_tokens == led.accepted_drafts
    client = vllm_client(cloud.config.base_url)

    def ours(prompt: list[int], n: int) -> list[int]:
        if prompt == ids and n == 40:
            return result.token_ids
        return engine.generate(prompt, GenerationConfig(max_new_tokens=n, cloud_mode=mode)).token_ids

    match_through_ties(ours, lambda p, n: vllm_greedy(client, cloud.config.model, p, n),
                       lambda p: vllm_top2_gap(client, cloud.config.model, p), ids, 40, mode)
    if mode == "block_verify":
        # one echo call settles several tokens: round trips per cloud-decided token well below 1
        assert led.calls_per_checked_token is not None and led.calls_per_checked_token < 0.5
        assert led.cloud_calls < len(result.token_ids) / 2


def test_auto_mode_picks_block_verify_on_vllm(setup) -> None:
    slm, cloud, question = setup
    caps = cloud.probe(slm.tokenizer)
    assert caps.shared_tokenizer and caps.echo_logprobs and caps.max_logprobs == 20
    engine = HybridEngine(slm, EntropyRouter(1.0), cloud, SELF_HOSTED)
    ids = engine.render([{"role": "user", "content": question}])
    result = engine.generate(ids, GenerationConfig(max_new_tokens=8, cloud_mode="auto"))
    assert result.ledger.cloud_mode == "block_verify"
