"""The local vLLM "cloud" server, for real: start (idempotent), status, token-id completions, errors.

The shared server on the default port is started once and left running for other tests and `make demo`;
only the tiny-model test on its own port stops what it started.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from hybrid_llm_adapters.devtools.vllm_server import (
    ServerStatus,
    VLLMServerConfig,
    server_status,
    start_server,
    stop_server,
)
from hybrid_llm_adapters.errors import CloudServerError
from hybrid_llm_adapters.models import DEFAULT_CLOUD, TINY_MODEL, model_dir

pytestmark = pytest.mark.cloud

PORT = 8765
TINY_PORT = 8791


@pytest.fixture(scope="module")
def server() -> ServerStatus:
    return start_server(VLLMServerConfig(port=PORT), progress=False)


@pytest.fixture(scope="module")
def prompt_ids() -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir(DEFAULT_CLOUD))
    return list(tok('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n')["input_ids"])


def _complete(status: ServerStatus, **body: object) -> dict:
    resp = httpx.post(f"{status.base_url}/completions", json={"model": DEFAULT_CLOUD, **body}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_start_is_idempotent(server: ServerStatus) -> None:
    assert server.running and DEFAULT_CLOUD in server.served_models
    t0 = time.perf_counter()
    again = start_server(VLLMServerConfig(port=PORT), progress=False)
    assert time.perf_counter() - t0 < 5
    assert again.running and again.base_url == f"http://127.0.0.1:{PORT}/v1"


def test_status(server: ServerStatus) -> None:
    status = server_status(PORT)
    assert status.running
    assert status.served_models == [DEFAULT_CLOUD]
    assert status.max_model_len == 4096
    assert status.log_path.is_file()


def test_token_id_prompt_next_token(server: ServerStatus, prompt_ids: list[int]) -> None:
    out = _complete(server, prompt=prompt_ids, max_tokens=1, logprobs=5, temperature=0.0)
    choice = out["choices"][0]
    assert len(choice["logprobs"]["top_logprobs"][0]) == 5
    assert out["usage"]["prompt_tokens"] == len(prompt_ids)
    assert out["usage"]["completion_tokens"] == 1


def test_echo_scores_prompt_tokens(server: ServerStatus, prompt_ids: list[int]) -> None:
    out = _complete(server, prompt=prompt_ids, max_tokens=1, logprobs=1, echo=True, temperature=0.0)
    lp = out["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(prompt_ids) + 1  # prompt + the generated token
    assert lp["token_logprobs"][0] is None  # the first token has no context
    assert all(isinstance(x, float) for x in lp["token_logprobs"][1:])


def test_prefix_cache_reports_cached_tokens(server: ServerStatus, prompt_ids: list[int]) -> None:
    prefix = (prompt_ids * 8)[:100]
    _complete(server, prompt=prefix, max_tokens=1, logprobs=5)
    out = _complete(server, prompt=prefix + [prompt_ids[0]], max_tokens=1, logprobs=5)
    details = out["usage"]["prompt_tokens_details"]
    assert details is not None, "server was started without --enable-prompt-tokens-details"
    assert details["cached_tokens"] >= 64  # full 32-token blocks of the re-sent prefix


def test_logprobs_limit(server: ServerStatus, prompt_ids: list[int]) -> None:
    resp = httpx.post(
        f"{server.base_url}/completions",
        json={"model": DEFAULT_CLOUD, "prompt": prompt_ids, "max_tokens": 1, "logprobs": 21},
        timeout=60,
    )
    assert resp.status_code == 400  # max_logprobs is 20


def test_missing_model_folder_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(CloudServerError) as err:
        start_server(VLLMServerConfig(model=str(missing), port=8797), progress=False)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


def test_port_serving_another_model_is_refused(server: ServerStatus) -> None:
    with pytest.raises(CloudServerError, match="already serves"):
        start_server(VLLMServerConfig(model=TINY_MODEL, port=PORT), progress=False)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        VLLMServerConfig(block_size=40)
    with pytest.raises(ValueError):
        VLLMServerConfig(host="0.0.0.0")  # type: ignore[arg-type]
    args = VLLMServerConfig().command_args(Path("/m"))
    assert "--enable-prefix-caching" in args and "--enable-prompt-tokens-details" in args
    assert args[args.index("--block-size") + 1] == "32"


@pytest.mark.timeout(900)
def test_tiny_server_start_stop() -> None:
    """A different tokenizer's model on its own port: start, complete, stop (and the port is freed)."""
    cfg = VLLMServerConfig(model=TINY_MODEL, port=TINY_PORT, max_model_len=1024, kv_cache_gib=1)
    status = start_server(cfg, timeout=900, progress=False)
    try:
        assert status.served_models == [TINY_MODEL]
        out = httpx.post(
            f"{status.base_url}/completions",
            json={"model": TINY_MODEL, "prompt": "The capital of France is", "max_tokens": 2, "logprobs": 2},
            timeout=60,
        ).json()
        assert out["choices"][0]["text"]
    finally:
        assert stop_server(TINY_PORT)
    assert not server_status(TINY_PORT).running
    assert server_status(TINY_PORT).pid is None
