"""Decode-loop mechanics on tiny random-weight models (fast; no download, no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from doubles import TransformersCloud

from hybrid_llm_adapters import GenerationConfig, HybridEngine
from hybrid_llm_adapters.config import PriceTable
from hybrid_llm_adapters.errors import ConfigError
from hybrid_llm_adapters.local.reward import LinearRewardHead, RewardManifest, tokenizer_fingerprint
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import AlwaysCloudRouter, AlwaysLocalRouter, RewardRouter, Router
from hybrid_llm_adapters.routing.routers import CloudPerTokenRouter

# the per-token machinery under test: a self-hosted price table keeps the cost guard and hand-off off
SELF_HOSTED = PriceTable(kind="self_hosted")


class EveryOtherRouter(Router):
    """Cloud on odd steps: a deterministic mix to exercise hand-over both ways."""

    name = "every_other"

    def __init__(self) -> None:
        self.step = 0

    def use_cloud(self, score: float | None, step: object) -> bool:
        self.step += 1
        return self.step % 2 == 0


def greedy_reference(local, prompt_ids: list[int], n: int) -> list[int]:
    out = local.model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
    ids = out[0, len(prompt_ids):].tolist()
    eos = local.eos_token_ids
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


@pytest.fixture()
def slm(tiny_model_dir: Path):
    return load_local_model(tiny_model_dir)


@pytest.fixture()
def cloud_model(tiny_cloud_dir: Path):
    return load_local_model(tiny_cloud_dir)


def prompt(engine: HybridEngine, text: str = "add 3 and 5") -> list[int]:
    return engine.render([{"role": "user", "content": text}])


def test_always_local_greedy_matches_generate(slm) -> None:
    engine = HybridEngine(slm, AlwaysLocalRouter())
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=40))
    assert result.token_ids == greedy_reference(slm, ids, 40)
    assert result.ledger.local_tokens == len(result.token_ids)
    assert result.ledger.cloud_calls == 0


def test_always_cloud_is_one_streamed_request(slm, cloud_model) -> None:
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, AlwaysCloudRouter(), cloud)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30))
    assert result.token_ids == greedy_reference(cloud_model, ids, 30)
    assert all(e.source == "cloud" for e in result.events)
    assert result.ledger.cloud_calls == len(cloud.calls) == 1
    assert result.ledger.billed_prompt_tokens == len(ids)  # the prompt once, not once per token
    assert result.ledger.cloud_mode == "cloud_only" and result.ledger.handed_off_tokens == 30
    assert result.ledger.cost_usd == pytest.approx(result.ledger.cloud_only_cost_usd)


def test_cloud_per_token_router_asks_for_every_token(slm, cloud_model) -> None:
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, CloudPerTokenRouter(), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30))
    assert result.token_ids == greedy_reference(cloud_model, ids, 30)
    assert result.ledger.cloud_calls == len(cloud.calls) >= len(result.token_ids)


def test_mixed_handover_keeps_kv_cache_consistent(slm, cloud_model) -> None:
    """Every local token must be the SLM's greedy choice given the real prefix (cloud tokens included)."""
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, EveryOtherRouter(), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30))
    full = ids + result.token_ids
    with torch.inference_mode():
        logits = slm.model(input_ids=torch.tensor([full])).logits[0].float()
    sources = [e.source for e in result.events if e.token_id is not None]
    assert "local" in sources and "cloud" in sources
    for i, (tok, src) in enumerate(zip(result.token_ids, sources)):
        if src == "local":
            top2 = torch.topk(logits[len(ids) + i - 1], 2).values
            argmax = int(torch.argmax(logits[len(ids) + i - 1]))
            assert tok == argmax or float(top2[0] - top2[1]) < 0.05, f"local token {i} is not the SLM's choice"
    assert result.ledger.local_tokens + result.ledger.cloud_tokens == len(result.token_ids)


def test_reward_router_rolls_back_one_token(slm, cloud_model) -> None:
    """A trunk reward head scores the fed candidate; a rejected one is cropped from the KV cache."""
    cloud = TransformersCloud(cloud_model)
    manifest = RewardManifest(kind="trunk", slm="tiny", cloud="tiny-cloud",
                              tokenizer_sha256=tokenizer_fingerprint(slm.tokenizer))
    torch.manual_seed(0)
    head = LinearRewardHead(torch.randn(slm.hidden_size), torch.tensor(0.0), manifest)
    router = RewardRouter(head, threshold=0.0)
    engine = HybridEngine(slm, router, cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30))
    scored = [e for e in result.events if e.score is not None]
    assert any(e.score < 0 for e in scored) and any(e.score >= 0 for e in scored)
    for e in scored:
        assert (e.source == "cloud") == (e.score < 0)
    # Same run without the cache tricks: re-score every token from scratch and compare.
    full = ids + result.token_ids
    with torch.inference_mode():
        hidden = slm.model(input_ids=torch.tensor([full]), output_hidden_states=True).hidden_states[-1][0].float()
    for i, e in enumerate(scored):
        if e.source == "local":
            fresh = head.score_hidden(hidden[len(ids) + i])
            assert abs(fresh - e.score) < 0.1 * (1 + abs(fresh))


def test_candidate_head_routes_by_its_score_without_feeding_the_candidate(slm, cloud_model) -> None:
    """A candidate head scores the candidate from the step's logits and context hidden state: tokens below the
    threshold come from the cloud, the others stay local, and no candidate is fed and rolled back."""
    from hybrid_llm_adapters.local.reward import STAT_NAMES, CandidateRewardHead, candidate_stats

    cloud = TransformersCloud(cloud_model)
    manifest = RewardManifest(kind="candidate", slm="tiny", cloud="tiny-cloud",
                              tokenizer_sha256=tokenizer_fingerprint(slm.tokenizer))
    g = torch.Generator().manual_seed(0)
    n, vocab = len(STAT_NAMES), slm.model.config.vocab_size
    head = CandidateRewardHead({
        "stat_mean": torch.zeros(n), "stat_scale": torch.ones(n), "mlp_in_weight": torch.randn(4, n, generator=g),
        "mlp_in_bias": torch.zeros(4), "mlp_out_weight": torch.randn(4, generator=g),
        "hidden_weight": torch.randn(slm.hidden_size, generator=g) * 0.1,
        "token_bias": torch.randn(vocab, generator=g), "bias": torch.tensor(0.0)}, manifest)
    alone = HybridEngine(slm, RewardRouter(head, threshold=-1e9), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(alone)
    local_scores = sorted(e.score for e in alone.generate(ids, GenerationConfig(max_new_tokens=30)).events)
    threshold = local_scores[len(local_scores) // 2]  # about half the SLM's own tokens would go to the cloud
    router = RewardRouter(head, threshold=threshold)
    assert router.needs_context_hidden and not router.needs_hidden
    engine = HybridEngine(slm, router, cloud, SELF_HOSTED)  # type: ignore[arg-type]
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30))
    scored = [e for e in result.events if e.score is not None]
    assert any(e.score < threshold for e in scored) and any(e.score >= threshold for e in scored)
    for e in scored:
        assert (e.source == "cloud") == (e.score < threshold)
    # the same scores from one full forward over the final text (the teacher-forced path)
    full = ids + result.token_ids
    with torch.inference_mode():
        out = slm.model(input_ids=torch.tensor([full]), output_hidden_states=True)
    for i, e in enumerate(result.events):
        if e.score is None:
            continue
        pos = len(ids) + i - 1
        cand = torch.tensor([e.candidate_id])
        fresh = head.score_tensors(candidate_stats(out.logits[0, pos][None].float(), cand),
                                   out.hidden_states[-1][0, pos][None].float(), cand)
        assert abs(float(fresh) - e.score) < 0.1 * (1 + abs(e.score))


def test_text_handover_between_different_tokenizers(tmp_path: Path, slm) -> None:
    """With no shared tokenizer the prefix goes as text and the tail is re-tokenized."""
    from tiny_models import build_tiny_model

    other = load_local_model(build_tiny_model(tmp_path / "other", seed=3, vocab_size=330))
    cloud = TransformersCloud(other, shared_tokenizer=False)
    engine = HybridEngine(slm, AlwaysCloudRouter(), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=12))
    assert all(isinstance(c, str) for c in cloud.calls)
    assert result.text == slm.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert result.ledger.cloud_calls == len(cloud.calls)


def test_sampling_is_reproducible_with_seed(slm) -> None:
    engine = HybridEngine(slm, AlwaysLocalRouter())
    ids = prompt(engine)
    cfg = GenerationConfig(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=7)
    a = engine.generate(ids, cfg).token_ids
    b = engine.generate(ids, cfg).token_ids
    c = engine.generate(ids, cfg.model_copy(update={"seed": 8})).token_ids
    assert a == b
    assert a != c


def test_stop_sequence_is_never_streamed(slm) -> None:
    engine = HybridEngine(slm, AlwaysLocalRouter())
    ids = prompt(engine)
    full = engine.generate(ids, GenerationConfig(max_new_tokens=40)).text
    assert len(full) > 6
    stop = full[3:6]
    gen = engine.stream(ids, GenerationConfig(max_new_tokens=40, stop=[stop]))
    streamed = "".join(e.text for e in gen)
    assert gen.result is not None
    assert streamed == gen.result.text == full[: full.find(stop)]
    assert gen.result.finish_reason == "stop"


def test_streamed_text_equals_final_text(slm) -> None:
    engine = HybridEngine(slm, AlwaysLocalRouter())
    gen = engine.stream(prompt(engine, "héllo 你好"), GenerationConfig(max_new_tokens=25))
    assert "".join(e.text for e in gen) == gen.result.text  # type: ignore[union-attr]


def test_async_stream_matches_sync_and_does_not_block(slm) -> None:
    engine = HybridEngine(slm, AlwaysLocalRouter())
    ids = prompt(engine)
    cfg = GenerationConfig(max_new_tokens=25)
    sync = engine.generate(ids, cfg)

    async def main() -> tuple[list[int], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await engine.agenerate(ids, cfg)
        task.cancel()
        return result.token_ids, ticks

    ids_async, ticks = asyncio.run(main())
    assert ids_async == sync.token_ids
    assert ticks > 5, "the event loop was blocked during generation"


def test_engine_without_cloud_rejects_cloud_router(slm) -> None:
    with pytest.raises(ConfigError, match="no cloud was configured"):
        HybridEngine(slm, AlwaysCloudRouter(), None)


def test_empty_prompt_is_rejected(slm) -> None:
    engine = HybridEngine(slm, AlwaysLocalRouter())
    with pytest.raises(ConfigError, match="prompt is empty"):
        engine.generate([])


def test_ledger_cost_counts_each_call(slm, cloud_model) -> None:
    prices = PriceTable(input_per_mtok=1.0, cached_input_per_mtok=0.5, output_per_mtok=2.0, per_call=0.0)
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, CloudPerTokenRouter(), cloud, prices)  # type: ignore[arg-type]
    ids = prompt(engine)
    led = engine.generate(ids, GenerationConfig(max_new_tokens=10)).ledger
    expected_prompt = sum(len(c) for c in cloud.calls)
    assert led.billed_prompt_tokens == expected_prompt
    assert led.cost_usd == pytest.approx((expected_prompt * 1.0 + led.billed_completion_tokens * 2.0) / 1e6)
    # every call re-sends the prefix: one-token calls cost more than one cloud-only call
    assert led.cost_usd > led.cloud_only_cost_usd
    assert led.savings_usd < 0


def test_fallback_forward_for_other_architectures_matches_the_ragged_one(tiny_model_dir: Path) -> None:
    """Models outside the Llama/Qwen2 family decode through transformers' own forward (``HFRowForward``), one
    row at a time: same cache contract (append, crop, release), same logits as the ragged forward."""
    from hybrid_llm_adapters.local.slm import HFRowForward, LocalModel, load_local_model

    ragged = load_local_model(tiny_model_dir)
    assert ragged.batched
    fallback = LocalModel(ragged.path, ragged.model, ragged.tokenizer)
    fallback.forward = HFRowForward(ragged.model)
    fallback.batcher = type(ragged.batcher)(fallback.forward)
    assert not fallback.batched
    gen = GenerationConfig(max_new_tokens=12)
    for local in (ragged, fallback):
        engine = HybridEngine(local, AlwaysLocalRouter())
        ids = engine.render([{"role": "user", "content": "Janet has 3 apples and buys 5 more."}])
        state = local.new_state(ids)
        first, _ = state.forward()
        state.append([5, 6, 7])
        state.forward()
        state.truncate(len(ids))  # roll back three tokens, then re-feed the last prompt token
        again, _ = state.forward()
        state.close()
        assert torch.equal(first, again)
        assert engine.generate(ids, gen).token_ids == HybridEngine(ragged, AlwaysLocalRouter()).generate(
            ids, gen).token_ids
