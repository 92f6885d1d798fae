"""Configuration: clear errors naming the value and the fix; secrets never shown."""

from __future__ import annotations

import pickle
import warnings

import pytest
from pydantic import ValidationError

from hybrid_llm_adapters import CloudConfig, EngineConfig, GenerationConfig, RouterConfig, UsageLedger
from hybrid_llm_adapters.accounting import call_cost
from hybrid_llm_adapters.chat import forced_tool_prefix, parse_tool_calls
from hybrid_llm_adapters.config import DEFAULT_ENTROPY_THRESHOLD, PriceTable
from hybrid_llm_adapters.errors import ConfigError

SECRET = "sk-live-abcdef-SECRET"


def test_bad_url_names_value_and_fix() -> None:
    with pytest.raises(ValidationError, match="not an http"):
        CloudConfig(base_url="127.0.0.1:8000")


def test_router_threshold_validation() -> None:
    with pytest.raises(ValidationError, match="must lie in"):
        RouterConfig(kind="max_prob", threshold=2.0)
    assert RouterConfig(kind="entropy").threshold == DEFAULT_ENTROPY_THRESHOLD == 0.27
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RouterConfig(kind="local", threshold=0.3)
    assert any("ignored" in str(w.message) for w in caught)


def test_generation_config_rules() -> None:
    with pytest.raises(ValidationError):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValidationError, match="empty string"):
        GenerationConfig(stop=[""])
    assert GenerationConfig(stop="###").stop == ["###"]
    with pytest.warns(UserWarning, match="top_p"):
        GenerationConfig(temperature=0.0, top_p=0.5)


def test_secret_never_in_repr_dump_or_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = EngineConfig(cloud=CloudConfig(api_key=SECRET))  # type: ignore[arg-type]
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    assert SECRET not in cfg.model_dump_json()
    assert SECRET not in cfg.cache_key()
    assert SECRET.encode() not in pickle.dumps(cfg.model_dump(mode="json"))
    assert cfg.cloud.api_key.get_secret_value() == SECRET


def test_api_key_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    assert CloudConfig().api_key.get_secret_value() == "from-openai"
    monkeypatch.setenv("HYBRID_LLM_API_KEY", "from-hybrid")
    assert CloudConfig().api_key.get_secret_value() == "from-hybrid"
    assert CloudConfig(api_key="explicit").api_key.get_secret_value() == "explicit"  # type: ignore[arg-type]


def test_ledger_adds_and_shows_loss() -> None:
    prices = PriceTable(input_per_mtok=3.0, cached_input_per_mtok=0.3, output_per_mtok=15.0)
    # 60 one-token calls over a ~200-token prefix vs one cloud-only call of 300 tokens (DESIGN.md)
    hybrid = sum(call_cost(prices, 200 + i, 1) for i in range(60))
    cloud_only = call_cost(prices, 200, 300)
    assert hybrid > cloud_only * 2
    a = UsageLedger(requests=1, local_tokens=3, cloud_tokens=1, cost_usd=0.5, cloud_only_cost_usd=0.2)
    b = UsageLedger(requests=1, local_tokens=5, cloud_tokens=3, cost_usd=0.1, cloud_only_cost_usd=0.4)
    total = a + b
    assert total.requests == 2 and total.generated_tokens == 12
    assert total.activation_ratio == pytest.approx(4 / 12)
    assert a.savings_usd < 0 < b.savings_usd
    cached = call_cost(prices, 1000, 0, cached_tokens=800)
    assert cached == pytest.approx((200 * 3.0 + 800 * 0.3) / 1e6)


def test_a_ledger_revives_from_its_own_dump() -> None:
    """Adapters put ``model_dump()`` (computed views included) in response metadata; it must load back."""
    ledger = UsageLedger(requests=1, local_tokens=7, cloud_tokens=2, cloud_calls=2, cost_usd=0.1,
                         cloud_only_cost_usd=0.3, cloud_mode="block_verify")
    dump = ledger.model_dump()
    assert {"generated_tokens", "activation_ratio", "savings_usd"} <= dump.keys()
    assert UsageLedger.model_validate(dump) == ledger
    assert UsageLedger(**dump).savings_usd == pytest.approx(0.2)
    with pytest.raises(ValidationError, match="local_tokenz"):
        UsageLedger(**{**dump, "local_tokenz": 1})


def test_tool_call_parsing() -> None:
    text = 'Let me compute.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me compute."
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2})]
    # cut off before the closing tag, arguments as a JSON string
    content, calls = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 3}"}')
    assert calls[0].arguments == {"x": 3} and content == ""
    assert parse_tool_calls("no tools here") == ("no tools here", [])
    # the call object written again inside its own arguments (seen after a forced prefix) is unwrapped ...
    nested = '<tool_call>\n{"name": "Person", "arguments": {"name": "Person", "arguments": {"name": "Ada", "age": 36}}}'
    assert parse_tool_calls(nested)[1][0].arguments == {"name": "Ada", "age": 36}
    # ... but real parameters called name and arguments are not
    real = '<tool_call>\n{"name": "run", "arguments": {"name": "build", "arguments": {"j": 2}}}'
    assert parse_tool_calls(real)[1][0].arguments == {"name": "build", "arguments": {"j": 2}}


def test_forced_tool_prefix() -> None:
    assert forced_tool_prefix("auto", ["a"]) == ""
    assert '"name": "a"' in forced_tool_prefix("any", ["a"])
    assert forced_tool_prefix("required", ["a", "b"]).endswith('{"name": "')
    with pytest.raises(ConfigError, match="names no bound tool"):
        forced_tool_prefix("c", ["a", "b"])


def test_forced_call_of_a_tool_without_arguments_writes_them() -> None:
    from hybrid_llm_adapters.chat_api import no_argument_tools

    tools = [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
             {"type": "function", "function": {"name": "add", "parameters": {
                 "type": "object", "properties": {"a": {"type": "integer"}}}}}]
    assert no_argument_tools(tools) == {"now"}
    prefix = forced_tool_prefix("now", ["now", "add"], no_argument_tools(tools))
    assert prefix.endswith('{"name": "now", "arguments": {}}')
    assert parse_tool_calls(prefix + "\n</tool_call>")[1][0].arguments == {}
    assert forced_tool_prefix("add", ["now", "add"], no_argument_tools(tools)).endswith('"arguments":')


def test_tool_choice_none_offers_no_tools(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from hybrid_llm_adapters.chat_api import finish_chat, prepare_chat
    from hybrid_llm_adapters.events import GenerationResult
    from hybrid_llm_adapters.local.slm import load_local_model

    tok = load_local_model(tiny_model_dir).tokenizer
    tools = [{"type": "function", "function": {"name": "lookup", "description": "find a fact",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "user", "content": "hi"}]
    offered, refused = prepare_chat(tok, messages, tools, "auto"), prepare_chat(tok, messages, tools, "none")
    assert offered.tools == tools and refused.tools == []  # nothing to render or parse calls for
    assert refused.prompt_ids == prepare_chat(tok, messages).prompt_ids
    call_text = '<tool_call>\n{"name": "lookup", "arguments": {}}\n</tool_call>'
    answer = GenerationResult(text=call_text, token_ids=[], events=[], ledger=UsageLedger(), finish_reason="stop")
    assert finish_chat(offered, answer).tool_calls and not finish_chat(refused, answer).tool_calls
