"""The cost policies' mechanics on the tiny pair: price-table cache rules and presets, the cost guard's bound,
and the hand-off's continuation (the real pair and vLLM: tests/test_cost_real.py)."""

from __future__ import annotations

import pytest
from doubles import TransformersCloud
from test_engine_mechanics import EveryOtherRouter, greedy_reference, prompt

from hybrid_llm_adapters import GenerationConfig, HybridEngine, PriceTable
from hybrid_llm_adapters.errors import ConfigError
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.routing import Router

SHEET = PriceTable(input_per_mtok=1.0, cached_input_per_mtok=0.1, output_per_mtok=4.0, cached_from="rules")
TEXTS = ["add 3 and 5", "say hello", "count to four", "name a color"]


@pytest.fixture(scope="module")
def slm(tiny_model_dir):  # type: ignore[no-untyped-def]
    return load_local_model(tiny_model_dir)


@pytest.fixture(scope="module")
def cloud_model(tiny_cloud_dir):  # type: ignore[no-untyped-def]
    return load_local_model(tiny_cloud_dir)


def test_cache_rules() -> None:
    rules = PriceTable(min_cached_prefix=1024, cache_granularity=128)
    assert rules.cached_by_rules(1000, 900) == 0  # below the minimum prompt
    assert rules.cached_by_rules(2000, 1000) == 0  # the shared prefix is below the minimum too
    assert rules.cached_by_rules(2000, 1300) == 1280  # whole steps of 128
    assert PriceTable().cached_by_rules(300, 250) == 250
    assert PriceTable(kind="self_hosted").bills_tokens is False and PriceTable().bills_tokens


def test_presets_are_data_and_an_unknown_one_names_the_choices() -> None:
    presets = PriceTable.presets()
    assert {"example-api", "example-cached-10pct", "example-cached-10pct-min1024", "self-hosted"} <= set(presets)
    assert presets["example-cached-10pct"].cached_input_per_mtok == 0.1
    with pytest.raises(ConfigError, match="example-api"):
        PriceTable.preset("gpt-99")


def test_generation_settings_of_the_policies_are_checked() -> None:
    with pytest.raises(ValueError, match="handoff_flags"):
        GenerationConfig(handoff_flags=9, handoff_window=8)
    with pytest.raises(ValueError, match="max_cost_ratio"):
        GenerationConfig(max_cost_ratio=0.0)
    gen = GenerationConfig()
    assert gen.cost_ratio(SHEET) == 1.0 and gen.cost_ratio(PriceTable(kind="self_hosted")) is None
    assert gen.handoff_on(SHEET) and not gen.handoff_on(PriceTable(kind="self_hosted"))


def test_the_guard_bounds_every_request_by_its_cloud_only_cost(slm, cloud_model) -> None:  # type: ignore[no-untyped-def]
    for text in TEXTS:
        unguarded = HybridEngine(slm, EveryOtherRouter(), TransformersCloud(cloud_model), SHEET)
        ids = prompt(unguarded, text)
        free = unguarded.generate(ids, GenerationConfig(max_new_tokens=30, max_cost_ratio=None, handoff="off"))
        assert free.ledger.cost_usd > free.ledger.cloud_only_cost_usd  # a call every other token pays more
        guarded = HybridEngine(slm, EveryOtherRouter(), TransformersCloud(cloud_model), SHEET)
        led = guarded.generate(ids, GenerationConfig(max_new_tokens=30, max_cost_ratio=1.0, handoff="off")).ledger
        assert led.cost_usd <= led.cloud_only_cost_usd * (1 + 1e-9)
        assert led.cost_guard_trips > 0 and led.cloud_calls > 0
        half = HybridEngine(slm, EveryOtherRouter(), TransformersCloud(cloud_model), SHEET)
        led = half.generate(ids, GenerationConfig(max_new_tokens=30, max_cost_ratio=0.5, handoff="off")).ledger
        assert led.cost_usd <= 0.5 * led.cloud_only_cost_usd * (1 + 1e-9)


class FlagsAt(Router):
    """Flags the given steps (1-based) and no others."""

    name = "flags_at"

    def __init__(self, *steps: int) -> None:
        self.steps, self.step = set(steps), 0

    def use_cloud(self, score: float | None, step: object) -> bool:
        self.step += 1
        return self.step in self.steps


def test_the_guard_shrinks_a_block_rather_than_refuse_it(slm, cloud_model) -> None:  # type: ignore[no-untyped-def]
    """At the first token a block's echo (prompt + drafts in, one token out) costs more than the cloud-only
    answer so far, a one-token call exactly as much: the guard takes the one-token call rather than refusing;
    a few tokens later a block fits again."""
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, FlagsAt(1, 6), cloud, SHEET)
    ids = prompt(engine)
    result = engine.generate(ids, GenerationConfig(max_new_tokens=20, cloud_mode="block_verify",
                                                   max_cost_ratio=1.0, handoff="off"))
    led = result.ledger
    assert led.cost_guard_trips == 0 and led.handed_off_tokens == 0, led
    assert led.cloud_calls == 2 and led.local_tokens > 10
    # the first call: the prompt alone (one token asked for); the second, at step 6: the prefix and a block
    assert len(cloud.calls[0]) == len(ids) and len(cloud.calls[1]) > len(ids) + 5
    assert led.cost_usd <= led.cloud_only_cost_usd * (1 + 1e-9)


def test_with_the_hand_off_on_the_guard_keeps_its_cost_and_a_refusal_hands_off(slm, cloud_model) -> None:  # type: ignore[no-untyped-def]
    """Without the reserve the per-token calls spend the budget, and later flags are refused with no hand-off
    left that fits: the answer is stranded on the SLM. With it, the first refused call hands off, and the
    request still ends at or below cloud-only."""
    for text in TEXTS:
        cloud = TransformersCloud(cloud_model)
        # flags every other step but never densely (handoff_flags=8 of 8): only a refusal can hand off
        engine = HybridEngine(slm, EveryOtherRouter(), cloud, SHEET)
        ids = prompt(engine, text)
        gen = GenerationConfig(max_new_tokens=30, max_cost_ratio=1.0, handoff="on", cloud_mode="replace",
                               handoff_flags=8, handoff_window=8)
        result = engine.generate(ids, gen)
        led = result.ledger
        assert led.cost_guard_trips == 1 and led.handed_off_tokens > 0, led  # one refusal, then the hand-off
        assert led.cost_usd <= led.cloud_only_cost_usd * (1 + 1e-9), led
        sources = [e.source for e in result.events if not e.final_flush]
        # the first call is exempt from the reserve (a hand-off before it would be the cloud-only answer)
        assert sources[:2] == ["local", "cloud"] and led.cloud_calls >= 2
        assert sources[len(sources) - led.handed_off_tokens:] == ["cloud"] * led.handed_off_tokens
        # the same flags with the hand-off off: calls until the budget is gone, then refusals the SLM absorbs
        alone = HybridEngine(slm, EveryOtherRouter(), TransformersCloud(cloud_model), SHEET)
        stranded = alone.generate(ids, gen.model_copy(update={"handoff": "off"})).ledger
        assert stranded.cost_guard_trips > 1 and stranded.handed_off_tokens == 0


def test_the_guard_holds_on_the_servers_bill_when_echo_calls_go_uncached(slm, cloud_model) -> None:  # type: ignore[no-untyped-def]
    """Billed by what the server reports (here: nothing cached, as vLLM serves echo calls), a second block
    re-sends its whole prefix at the full input price: the guard counts it so, and the request still never bills
    more than cloud-only (counting the first block's prompt as cached, it would)."""
    server_bill = SHEET.model_copy(update={"cached_from": "server"})
    for text in ["add 3 and 5", "count to four"]:
        engine = HybridEngine(slm, FlagsAt(3, 8, 13), TransformersCloud(cloud_model), server_bill)
        result = engine.generate(prompt(engine, text), GenerationConfig(
            max_new_tokens=20, cloud_mode="block_verify", max_cost_ratio=1.0, handoff="off"))
        led = result.ledger
        assert led.cached_prompt_tokens == 0 and led.cloud_calls > 0
        assert led.cost_usd <= led.cloud_only_cost_usd * (1 + 1e-9), led


def test_dense_flags_hand_off_to_one_streamed_call(slm, cloud_model) -> None:  # type: ignore[no-untyped-def]
    cloud = TransformersCloud(cloud_model)
    engine = HybridEngine(slm, EveryOtherRouter(), cloud, SHEET)
    ids = prompt(engine)
    # every other step flagged: 2 flags in a window of 3 happen at the 4th step, which hands off
    result = engine.generate(ids, GenerationConfig(max_new_tokens=30, max_cost_ratio=None, handoff="on",
                                                   handoff_flags=2, handoff_window=3))
    sources = [e.source for e in result.events if not e.final_flush]
    start = len(sources) - result.ledger.handed_off_tokens
    assert sources[start:] == ["cloud"] * result.ledger.handed_off_tokens and result.ledger.handed_off_tokens > 10
    assert sources[:start] == ["local", "cloud", "local"]
    # the hand-off is the cloud's own greedy continuation of that prefix, in one call after the per-token one
    assert result.token_ids[start:] == greedy_reference(cloud_model, ids + result.token_ids[:start], 30 - start)
    assert result.ledger.cloud_calls == 2 == len(cloud.calls)
