"""Bad input, through the LangChain and LlamaIndex adapters on the tiny models: each is refused with an error
that names the problem and the fix (the README's table of them is this list)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fault_proxy import FaultProxy

from hybrid_llm_adapters import CloudError, ConfigError
from hybrid_llm_adapters.errors import ModelMismatchError
from hybrid_llm_adapters.local.reward import LinearRewardHead, RewardManifest


@pytest.fixture(scope="module")
def stub() -> Any:
    with FaultProxy(None, api_key=None) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def keyed() -> Any:
    with FaultProxy(None, api_key="the-right-key") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def foreign_head(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> str:
    """A reward head trained for another SLM / cloud pair (another tokenizer)."""
    manifest = RewardManifest(kind="linear", slm="other-slm", cloud="other-cloud", tokenizer_sha256="0" * 64)
    path = tmp_path_factory.mktemp("head") / "head.safetensors"
    LinearRewardHead(torch.ones(64), torch.tensor(0.0), manifest).save(path)
    return str(path)


@pytest.fixture(scope="module")
def other_cloud_head(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> str:
    """A reward head for this SLM (same tokenizer) but trained against another cloud model."""
    from hybrid_llm_adapters.local.reward import tokenizer_fingerprint
    from hybrid_llm_adapters.local.slm import load_local_model

    local = load_local_model(tiny_model_dir)
    manifest = RewardManifest(kind="linear", slm="tiny", cloud="other-cloud",
                              tokenizer_sha256=tokenizer_fingerprint(local.tokenizer))
    path = tmp_path_factory.mktemp("head-cloud") / "head.safetensors"
    LinearRewardHead(torch.ones(local.hidden_size), torch.tensor(0.0), manifest).save(path)
    return str(path)


def lc(tiny_model_dir: Path, **kw: Any) -> Any:
    from langchain_hybrid_llm import HybridChatModel

    return HybridChatModel(model=str(tiny_model_dir), **{"router": "local", "max_retries": 0, **kw})


def li(tiny_model_dir: Path, **kw: Any) -> Any:
    from llama_index.llms.hybrid import HybridChatModel

    return HybridChatModel(model=str(tiny_model_dir), **{"router": "local", "max_retries": 0, **kw})


def _image() -> Any:
    from langchain_core.messages import HumanMessage

    return [HumanMessage(content=[{"type": "text", "text": "what is this?"},
                                  {"type": "image_url", "image_url": {"url": "http://x.invalid/a.png"}}])]


def _li_image() -> Any:
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock

    return [ChatMessage(role="user", blocks=[TextBlock(text="what is this?"), ImageBlock(url="http://x.invalid/a.png")])]


def _role() -> Any:
    from langchain_core.messages import ChatMessage

    return [ChatMessage(role="wizard", content="hi")]


# (name, call, error type, what the message must say: the problem ... the fix)
Case = tuple[str, Callable[..., Any], type[BaseException], str]
CASES: list[Case] = [
    ("empty message list (LangChain)", lambda d, **_: lc(d).invoke([]), ConfigError,
     "messages is empty; pass at least one user message"),
    ("empty message list (LlamaIndex)", lambda d, **_: li(d).chat([]), ConfigError,
     "messages is empty; pass at least one user message"),
    ("unknown role", lambda d, **_: lc(d).invoke(_role()), ValueError, "role 'wizard'.*use one of"),
    ("non-text content (LangChain)", lambda d, **_: lc(d).invoke(_image()), ValueError,
     "text content only; got a 'image_url' block. Fix: remove non-text blocks"),
    ("non-text content (LlamaIndex)", lambda d, **_: li(d).chat(_li_image()), ValueError,
     "takes text only; got a ImageBlock. Remove non-text blocks"),
    ("non-text content (core)", lambda d, **_: _core_image(d), ConfigError,
     "holds a 'image_url' part; the SLM takes text only. Fix"),
    ("prompt longer than the SLM's context", lambda d, **_: lc(d).invoke("word " * 5000), ConfigError,
     r"the prompt is \d+ tokens, but the SLM .* holds 4096.*Fix: shorten the prompt"),
    ("max_tokens <= 0 (constructor)", lambda d, **_: lc(d, max_tokens=0), ValueError,
     "max_tokens=0 must be >= 1.*pass a positive budget"),
    ("max_tokens <= 0 (per call)", lambda d, **_: li(d).complete("hi", max_tokens=-1), ValueError,
     "max_tokens=-1 must be >= 1.*pass a positive budget"),
    ("NaN threshold", lambda d, **_: lc(d, router="entropy", threshold=float("nan")), ValueError,
     "threshold=nan is not a finite number; pass a real value"),
    ("infinite threshold", lambda d, **_: li(d, router="max_prob", threshold=float("inf")), ValueError,
     "threshold=inf is not a finite number; pass a real value"),
    ("reward model trained for another pair", lambda d, head, **_: lc(d, router="reward", reward_head=head)
     .invoke("hi"), ModelMismatchError,
     "trained for SLM 'other-slm' / cloud 'other-cloud'.*Use a reward scorer trained for this model pair"),
    ("reward model trained against another cloud", lambda d, cloud_head, stub, **_: lc(
        d, router="reward", reward_head=cloud_head, base_url=stub.base_url, cloud_model="stub").invoke("hi"),
     ModelMismatchError, "trained for cloud model 'other-cloud', but the cloud serves 'stub'.*check_reward_cloud=False"),
    ("unreachable base_url", lambda d, **_: lc(d, router="cloud", base_url="http://127.0.0.1:9/v1", timeout=2)
     .invoke("hi"), CloudError, "failed 1 time.*APIConnectionError.*Check that the server is up"),
    ("wrong API key (401)", lambda d, keyed, **_: lc(d, router="cloud", base_url=keyed.base_url,
                                                     cloud_model="stub", api_key="wrong").invoke("hi"),
     CloudError, r"refused the API key \(401.*Fix: pass the endpoint's key as api_key"),
    ("model name the server does not serve", lambda d, stub, **_: lc(d, router="cloud", base_url=stub.base_url,
                                                                     cloud_model="gpt-99").invoke("hi"),
     CloudError, r"does not serve model 'gpt-99' \(404; it serves \['stub'\]\). Fix: set the cloud model name"),
]


def _core_image(d: Path) -> Any:
    from hybrid_llm_adapters.chat import render_chat
    from hybrid_llm_adapters.local.slm import load_local_model

    content = [{"type": "image_url", "image_url": {"url": "http://x.invalid/a.png"}}]
    return render_chat(load_local_model(d).tokenizer, [{"role": "user", "content": content}])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(case: Case, tiny_model_dir: Path, stub: FaultProxy, keyed: FaultProxy,
                                      foreign_head: str, other_cloud_head: str) -> None:
    _name, call, error, pattern = case
    with pytest.raises(error, match=pattern):
        call(tiny_model_dir, stub=stub, keyed=keyed, head=foreign_head, cloud_head=other_cloud_head)


@pytest.mark.parametrize("framework", ["langchain", "llama_index"])
def test_misspelt_settings_are_refused_with_the_closest_name(framework: str) -> None:
    """A misspelt keyword used to be ignored silently by LangChain; both adapters now name the closest setting."""
    if framework == "langchain":
        from langchain_hybrid_llm import HybridChatModel
    else:
        from llama_index.llms.hybrid import HybridChatModel
    with pytest.raises(ValueError) as info:
        HybridChatModel(on_failure="local", tempreature=0.2)
    message = str(info.value)
    assert "'on_failure' (did you mean 'on_cloud_failure'?)" in message
    assert "'tempreature' (did you mean 'temperature'?)" in message
    HybridChatModel(on_cloud_failure="local", temperature=0.2)  # the right names are accepted
