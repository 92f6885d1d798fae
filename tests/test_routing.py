"""Routers: U-HLM perturbation uncertainty, its thresholds, and the budget controller."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from doubles import TransformersCloud
from test_engine_mechanics import prompt

from hybrid_llm_adapters import GenerationConfig, HybridEngine, RouterConfig
from hybrid_llm_adapters.config import PriceTable
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import (
    BudgetRouter,
    EntropyRouter,
    PerturbationRouter,
    build_router,
    calibrate_threshold,
)
from hybrid_llm_adapters.routing.uhlm import perturbation_uncertainty

# the per-token machinery under test: a self-hosted price table keeps the cost guard and hand-off off
SELF_HOSTED = PriceTable(kind="self_hosted")


def test_perturbation_uncertainty_orders_confidence() -> None:
    confident = torch.tensor([8.0, 0.0, 0.0, 0.0])
    unsure = torch.tensor([1.0, 0.9, 0.8, 0.7])
    assert perturbation_uncertainty(confident, 0, (0.5, 1.0, 1.5)) < 0.01
    assert perturbation_uncertainty(unsure, 0, (0.5, 1.0, 1.5)) > 0.6
    # the expectation equals the Monte-Carlo rate the paper counts
    temps = (0.5, 1.0, 1.5)
    rng = torch.Generator().manual_seed(0)
    samples = [int(torch.multinomial(torch.softmax(unsure / t, -1), 1, generator=rng)) for t in temps * 4000]
    rate = sum(s != 0 for s in samples) / len(samples)
    assert perturbation_uncertainty(unsure, 0, temps) == pytest.approx(rate, abs=0.02)


def test_thresholds_from_risk_and_calibration() -> None:
    risk_config = RouterConfig(kind="perturbation", rejection_risk=0.1)
    assert risk_config.threshold == pytest.approx(0.1)
    # the derived threshold survives re-validation (inside EngineConfig, and a dump/load round trip)
    assert RouterConfig.model_validate(risk_config.model_dump()) == risk_config
    from hybrid_llm_adapters.engine import EngineConfig

    assert EngineConfig(router=risk_config).router.threshold == pytest.approx(0.1)
    with pytest.raises(ValueError, match="either threshold or rejection_risk"):
        RouterConfig(kind="perturbation", threshold=0.3, rejection_risk=0.1)
    with pytest.raises(ValueError, match="applies to kind='perturbation'"):
        RouterConfig(kind="entropy", rejection_risk=0.1)
    us = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
    rejected = [False, False, False, True, False, True, True, True]
    # u <= 0.05: 0/3 rejected; u <= 0.1: 1/4 = 25 %; u <= 0.2: 1/5 = 20 %; u <= 0.3: 2/6
    assert calibrate_threshold(us, rejected, risk=0.2) == 0.2
    assert calibrate_threshold(us, rejected, risk=0.1) == 0.05


def test_perturbation_router_routes_by_threshold(tiny_model_dir: Path) -> None:
    slm = load_local_model(tiny_model_dir)
    cloud = TransformersCloud(slm)  # the same model: routing changes no token, so both runs see the same text
    never = build_router(RouterConfig(kind="perturbation", threshold=1.0), slm.tokenizer, slm.hidden_size)
    engine = HybridEngine(slm, never, cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(engine)
    first = engine.generate(ids, GenerationConfig(max_new_tokens=20))
    tokens = [e for e in first.events if not e.final_flush]  # the closing release event carries no new token
    scores = sorted(e.score for e in tokens if e.score is not None)
    assert len(scores) == len(tokens) == 20  # every token is scored
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # between two observed scores
    router = build_router(RouterConfig(kind="perturbation", threshold=threshold), slm.tokenizer, slm.hidden_size)
    assert isinstance(router, PerturbationRouter)
    result = HybridEngine(slm, router, cloud, SELF_HOSTED).generate(ids, GenerationConfig(max_new_tokens=20, cloud_mode="replace"))  # type: ignore[arg-type]
    tokens = [e for e in result.events if not e.final_flush]
    assert len(tokens) == 20 and all(e.score is not None for e in tokens)
    for e in tokens:
        assert (e.source == "cloud") == (e.score > threshold)
    assert {e.source for e in tokens} == {"local", "cloud"}  # both routes were taken


def test_budget_controller_holds_target_activation(tiny_model_dir: Path, tiny_cloud_dir: Path) -> None:
    slm = load_local_model(tiny_model_dir)
    cloud = TransformersCloud(load_local_model(tiny_cloud_dir))
    # a random tiny model is uncertain everywhere: a static threshold sends (almost) everything to the cloud
    static = HybridEngine(slm, EntropyRouter(0.5), cloud, SELF_HOSTED)  # type: ignore[arg-type]
    ids = prompt(static)
    assert static.generate(ids, GenerationConfig(max_new_tokens=60)).ledger.activation_ratio > 0.8
    router = build_router(RouterConfig(kind="entropy", threshold=0.5, target_activation=0.3), slm.tokenizer,
                          slm.hidden_size)
    assert isinstance(router, BudgetRouter)
    result = HybridEngine(slm, router, cloud, SELF_HOSTED).generate(ids, GenerationConfig(max_new_tokens=60))  # type: ignore[arg-type]
    assert len(result.token_ids) == 60
    assert 0.2 <= result.ledger.activation_ratio <= 0.32


def test_budget_controller_holds_cost_budget(tiny_model_dir: Path, tiny_cloud_dir: Path) -> None:
    slm = load_local_model(tiny_model_dir)
    cloud = TransformersCloud(load_local_model(tiny_cloud_dir))
    prices = PriceTable(input_per_mtok=100.0, output_per_mtok=100.0)
    budget = 0.03  # about ten one-token calls on a ~30-token prefix
    router = build_router(RouterConfig(kind="entropy", threshold=0.5, max_cost_usd=budget), slm.tokenizer,
                          slm.hidden_size, prices)
    engine = HybridEngine(slm, router, cloud, prices)  # type: ignore[arg-type]
    result = engine.generate(prompt(engine), GenerationConfig(max_new_tokens=40))
    assert 0 < result.ledger.cost_usd <= budget
    assert result.ledger.cloud_calls < 40
