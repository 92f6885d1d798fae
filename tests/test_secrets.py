"""The API key is a secret: it reaches the server's Authorization header and nowhere else. All logging (root,
openai, httpx, httpcore at DEBUG), LangChain callbacks, LlamaIndex instrumentation events, reprs, dumps and
exceptions (with their chains) are searched for it, across a request that uses the cloud and one refused
with 401."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy

from hybrid_llm_adapters import CloudError

SECRET = "sk-live-SECRET-0123456789abcdef"


class Recorder:
    """Everything a tracer would see: the repr of every callback / event payload."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def langchain(self) -> Any:
        from langchain_core.callbacks import BaseCallbackHandler

        rec = self

        class Handler(BaseCallbackHandler):
            def __getattribute__(self, name: str) -> Any:
                if name.startswith("on_"):
                    return lambda *a, **k: rec.seen.append(repr((name, a, k)))
                return super().__getattribute__(name)

        return Handler()

    def llama_index(self) -> Any:
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler

        rec = self

        class Handler(BaseEventHandler):
            def handle(self, event: Any, **kwargs: Any) -> None:
                rec.seen.append(repr(event) + json.dumps(event.dict(), default=str))

        return Handler()


def everything_about(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error.args) + repr(vars(error))


def test_api_key_never_leaks(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    import llama_index.core.instrumentation as instrument
    from langchain_core.load import dumps
    from langchain_hybrid_llm import HybridChatModel as LCModel
    from llama_index.llms.hybrid import HybridChatModel as LIModel

    for name in ("", "openai", "httpx", "httpcore", "hybrid_llm_adapters", "langchain_hybrid_llm", "llama_index"):
        caplog.set_level(logging.DEBUG, logger=name)
    rec = Recorder()
    dispatcher = instrument.get_dispatcher()
    handler = rec.llama_index()
    dispatcher.add_event_handler(handler)
    texts: list[str] = []
    try:
        with FaultProxy(None, api_key=SECRET) as ok, FaultProxy(None, api_key="another-key") as refusing:
            common = {"model": str(tiny_model_dir), "cloud_model": "stub", "router": "cloud", "max_tokens": 3,
                      "max_retries": 0, "api_key": SECRET}
            lc_ok = LCModel(base_url=ok.base_url, **common)
            li_ok = LIModel(base_url=ok.base_url, **common)
            msg = lc_ok.invoke("hi", config={"callbacks": [rec.langchain()]})
            assert msg.response_metadata["hybrid_ledger"]["cloud_calls"] == 3  # it did use the cloud
            li_ok.complete("hi")
            assert ok.auth_headers and set(ok.auth_headers) == {f"Bearer {SECRET}"}  # the key reaches the server
            for model in (LCModel(base_url=refusing.base_url, **common), LIModel(base_url=refusing.base_url, **common)):
                with pytest.raises(CloudError, match="refused the API key") as info:
                    if isinstance(model, LCModel):
                        model.invoke("hi", config={"callbacks": [rec.langchain()]})
                    else:
                        model.complete("hi")
                texts.append(everything_about(info.value))
            for model in (lc_ok, li_ok):
                engine = model.engine
                texts += [repr(model), str(model), json.dumps(model.model_dump(), default=str), repr(engine),
                          repr(engine.cloud), repr(model.engine_config() if callable(model.engine_config)
                                                   else model.engine_config), engine.cloud.config.model_dump_json()]
            texts += [dumps(lc_ok), dumps(lc_ok, pretty=True), li_ok.to_json(), json.dumps(li_ok.to_dict(), default=str)]
    finally:
        dispatcher.event_handlers.remove(handler)
    texts += [caplog.text, *rec.seen]
    names = {r.name.split(".")[0] for r in caplog.records}
    assert {"openai", "httpcore"} <= names  # the DEBUG capture did capture the SDK's request logs
    assert any("on_chat_model_start" in s for s in rec.seen) and any("LLMCompletion" in s for s in rec.seen)
    assert any("401" in t for t in texts)
    for text in texts:
        assert SECRET not in text
