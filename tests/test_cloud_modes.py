"""Cloud modes on tiny models: verify, block verify and lookahead are lossless with greedy decoding, and
the verification rule reproduces the cloud's distribution when sampling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from doubles import TransformersCloud
from test_engine_mechanics import greedy_reference, prompt

from hybrid_llm_adapters import GenerationConfig, HybridEngine
from hybrid_llm_adapters.cloud.verify import cloud_distribution, verify_draft
from hybrid_llm_adapters.config import PriceTable
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import AlwaysLocalRouter, EntropyRouter
from hybrid_llm_adapters.routing.routers import CloudPerTokenRouter

# the per-token machinery under test: a self-hosted price table keeps the cost guard and hand-off off
SELF_HOSTED = PriceTable(kind="self_hosted")


@pytest.fixture()
def slm(tiny_model_dir: Path):
    return load_local_model(tiny_model_dir)


@pytest.fixture()
def cloud_model(tiny_cloud_dir: Path):
    return load_local_model(tiny_cloud_dir)


def assert_greedy_under_full_forward(model, ids: list[int], tokens: list[int], tie: float = 0.02) -> None:
    """Each token is the model's argmax given the real prefix (a full forward, as the echo call computes),
    except at bf16 near-ties, which tiny random models have often."""
    with torch.inference_mode():
        logp = torch.log_softmax(model.model(input_ids=torch.tensor([ids + tokens])).logits[0].float(), -1)
    for i, tok in enumerate(tokens):
        top = torch.topk(logp[len(ids) + i - 1], 2)
        assert tok == int(top.indices[0]) or float(top.values[0] - logp[len(ids) + i - 1, tok]) < tie, i


def check_all() -> EntropyRouter:
    return EntropyRouter(-1.0)  # every token flagged: the cloud checks everything


@pytest.mark.parametrize("mode", ["verify", "block_verify"])
def test_verify_modes_are_lossless_greedy(slm, cloud_model, mode: str) -> None:
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, check_all(), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30, cloud_mode=mode))
    assert result.token_ids == greedy_reference(cloud_model, ids, 30)
    assert result.ledger.cloud_mode == mode
    assert result.ledger.cloud_checked_tokens >= len(result.token_ids) - result.ledger.cloud_tokens


def test_block_verify_cuts_round_trips_when_drafts_agree(slm) -> None:
    """SLM == cloud: every draft is accepted, so one call settles several tokens."""
    cloud = TransformersCloud(slm)
    engine = HybridEngine(slm, check_all(), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=40, cloud_mode="block_verify"))
    led = result.ledger
    assert_greedy_under_full_forward(slm, ids, result.token_ids)
    assert led.accepted_drafts > 0.7 * len(result.token_ids)
    assert led.calls_per_checked_token is not None and led.calls_per_checked_token < 0.35
    assert {e.source for e in result.events} <= {"verified", "cloud"}


def test_lookahead_takes_several_cloud_tokens_per_call(slm, cloud_model) -> None:
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, CloudPerTokenRouter(), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30, cloud_mode="lookahead", max_lookahead=8))
    assert result.token_ids == greedy_reference(cloud_model, ids, 30)
    assert result.ledger.cloud_calls < len(result.token_ids) / 2
    assert result.ledger.cloud_mode == "lookahead"


def test_text_handover_forces_replace_mode(tmp_path: Path, slm) -> None:
    from tiny_models import build_tiny_model

    other = load_local_model(build_tiny_model(tmp_path / "o", seed=4, vocab_size=330))
    engine = HybridEngine(slm, check_all(), TransformersCloud(other, shared_tokenizer=False), SELF_HOSTED)  # type: ignore[arg-type]
    result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=5, cloud_mode="block_verify"))
    assert result.ledger.cloud_mode == "replace"


def test_block_verify_falls_back_to_verify_without_echo(slm, cloud_model) -> None:
    engine = HybridEngine(slm, check_all(), TransformersCloud(cloud_model, echo=False), SELF_HOSTED)  # type: ignore[arg-type]
    result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=5, cloud_mode="block_verify"))
    assert result.ledger.cloud_mode == "verify"


def test_verification_rule_samples_the_cloud_distribution() -> None:
    """Draft from p, accept with min(1, q/p), else residual: the kept token is distributed as q."""
    gen = GenerationConfig(temperature=1.0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])
    top = {i: float(torch.log(q[i])) for i in range(4)}
    assert cloud_distribution(top, gen) == pytest.approx({i: float(q[i]) for i in range(4)})
    rng = torch.Generator().manual_seed(0)
    counts: Counter[int] = Counter()
    n = 20000
    for _ in range(n):
        draft = int(torch.multinomial(p, 1, generator=rng))
        token, _ = verify_draft(draft, p, top, gen, rng)
        counts[token] += 1
    for i in range(4):
        assert counts[i] / n == pytest.approx(float(q[i]), abs=0.015)


def test_greedy_verification_accepts_only_the_argmax() -> None:
    gen = GenerationConfig()
    top = {7: -0.1, 3: -2.5}
    assert verify_draft(7, None, top, gen, None) == (7, True)  # type: ignore[arg-type]
    assert verify_draft(3, None, top, gen, None) == (7, False)  # type: ignore[arg-type]
    assert verify_draft(99, None, top, gen, None) == (7, False)  # type: ignore[arg-type]


@pytest.mark.parametrize("prices", [SELF_HOSTED, PriceTable()], ids=["self_hosted", "pay_per_token"])
@pytest.mark.parametrize("mode", ["replace", "block_verify"])
def test_a_decision_window_is_the_clouds_in_one_call(slm, cloud_model, mode: str, prices: PriceTable) -> None:
    """decision_tokens=N: the cloud writes the answer's first N tokens in one call (a block check would stop at
    its first miss and the cost guard refuse the calls for the rest); then the SLM goes on from them."""
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, EntropyRouter(1e9), cloud, prices)  # type: ignore[arg-type]  # never flags
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=14, cloud_mode=mode, decision_tokens=6))
    opening = greedy_reference(cloud_model, ids, 6)
    assert len(opening) == 6  # the tiny cloud does not end its answer this early
    assert result.token_ids[:6] == opening
    assert result.token_ids[6:] == greedy_reference(slm, ids + opening, 8)
    assert len(cloud.calls) == 1
    ledger = result.ledger
    assert (ledger.cloud_calls, ledger.decision_checks, ledger.cloud_tokens, ledger.local_tokens) == (1, 6, 6, 8)
    assert [e.source for e in result.events] == ["cloud"] * 6 + ["local"] * 8


class EndsAfterTwo(TransformersCloud):
    """The cloud's answer is its first two tokens, then its end, as vLLM reports it: finish 'stop', no end token
    in the reply."""

    def __init__(self, local, answer_start: int):  # type: ignore[no-untyped-def]
        super().__init__(local)
        self.answer_start = answer_start

    def next_tokens(self, prompt, gen, n, seed=None, logprobs=None):  # type: ignore[no-untyped-def]
        left = 2 - (len(self._ids(prompt)) - self.answer_start)
        reply = super().next_tokens(prompt, gen, min(n, left), seed, logprobs)
        if left <= n:
            reply.finish_reason = "stop"
            if reply.tokens:
                reply.tokens[-1].finish_reason = "stop"
        return reply


@pytest.mark.parametrize("mode", ["window", "lookahead"])
def test_an_answer_the_cloud_ends_inside_a_call_of_several_tokens_ends(slm, cloud_model, mode: str) -> None:
    """A decision window, or lookahead's second call (two tokens asked, one given, then the end): the answer
    ends where the cloud ended it, with no further call."""
    ids = prompt(HybridEngine(slm, AlwaysLocalRouter()))
    cloud = EndsAfterTwo(cloud_model, len(ids))
    engine = HybridEngine(slm, EntropyRouter(1e9 if mode == "window" else -1.0), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    gen = GenerationConfig(max_new_tokens=14, decision_tokens=6) if mode == "window" else \
        GenerationConfig(max_new_tokens=14, cloud_mode="lookahead")
    result = engine.generate(ids, gen)
    assert result.token_ids == greedy_reference(cloud_model, ids, 2)
    assert result.finish_reason == "stop" and len(cloud.calls) == (1 if mode == "window" else 2)
