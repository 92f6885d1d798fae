"""The API key is a secret: it reaches the server's Authorization header and nowhere else. All logging (root,
openai, httpx, httpcore at DEBUG), LangChain callbacks, LlamaIndex instrumentation events, reprs, dumps,
exceptions (with their chains), everything written to stdout / stderr (the CLI's rich tables included) and the
vLLM server's log are searched for it, across requests that use the cloud and ones refused with 401."""

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


def test_api_key_never_leaks(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture,
                             capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
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
            assert msg.response_metadata["hybrid_ledger"]["cloud_calls"] == 1  # it did use the cloud (one request)
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
            assert cli_chat(tiny_model_dir, ok.base_url, monkeypatch) == 0
            assert cli_chat(tiny_model_dir, refusing.base_url, monkeypatch) != 0  # the CLI reports the 401
    finally:
        dispatcher.event_handlers.remove(handler)
    console = capfd.readouterr()
    assert "usage ledger" in console.out  # the CLI's rich tables were captured
    assert "refused the API key" in console.out + console.err  # and its error for the 401
    texts += [caplog.text, *rec.seen, console.out, console.err]
    names = {r.name.split(".")[0] for r in caplog.records}
    assert {"openai", "httpcore"} <= names  # the DEBUG capture did capture the SDK's request logs
    assert any("on_chat_model_start" in s for s in rec.seen) and any("LLMCompletion" in s for s in rec.seen)
    assert any("401" in t for t in texts)
    for text in texts:
        assert SECRET not in text


def cli_chat(slm: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """``hybrid-llm chat`` with the key from the environment (as a user passes it), printing the ledger table."""
    from hybrid_llm_adapters import cli

    monkeypatch.setenv("HYBRID_LLM_API_KEY", SECRET)
    monkeypatch.setattr(cli.console, "width", 200)
    return cli.main(["chat", "hi", "--slm", str(slm), "--cloud-url", base_url, "--cloud-model", "stub",
                     "--router", "cloud", "--max-tokens", "3", "--on-failure", "raise"])


@pytest.mark.real
@pytest.mark.cloud
def test_api_key_absent_from_the_vllm_log_and_console(real_slm_dir: Path, cloud_base_url: str, cloud_model_name: str,
                                                      capfd: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A successful cloud request to the real vLLM carries the key (the server accepts any key when started
    without one) and a 401 comes from a keyed proxy in front of it: neither the server's log nor the console
    shows the key."""
    from urllib.parse import urlparse

    from hybrid_llm_adapters import cli
    from hybrid_llm_adapters.devtools.vllm_server import log_path

    log = log_path(urlparse(cloud_base_url).port or 8765)
    start = log.stat().st_size
    monkeypatch.setenv("HYBRID_LLM_API_KEY", SECRET)
    monkeypatch.setattr(cli.console, "width", 200)
    args = ["chat", "What is 2 + 2?", "--slm", str(real_slm_dir), "--cloud-model", cloud_model_name,
            "--router", "cloud", "--max-tokens", "4", "--on-failure", "raise", "--timeout", "120"]
    assert cli.main([*args, "--cloud-url", cloud_base_url]) == 0
    with FaultProxy(cloud_base_url, api_key="the-right-key") as keyed:
        assert cli.main([*args, "--cloud-url", keyed.base_url]) != 0
    console = capfd.readouterr()
    assert "refused the API key" in console.out + console.err
    server_log = log.read_bytes()[start:].decode(errors="replace")  # a byte offset: the log is not all ASCII
    assert "POST /v1/completions" in server_log  # the request did reach the server and its log
    assert "usage ledger" in console.out
    for text in (server_log, console.out, console.err):
        assert SECRET not in text
