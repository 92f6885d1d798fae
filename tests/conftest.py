"""Shared fixtures: tiny random models for mechanics, the real default pair and the real vLLM cloud."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[1] / "data"  # vendored with its licenses


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-slm"), seed=0)


@pytest.fixture(scope="session")
def tiny_cloud_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with the same tokenizer (different weights): the mechanics tests' 'cloud'."""
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-cloud"), seed=1)


@pytest.fixture(scope="session")
def real_slm_dir() -> Path:
    """The default SLM (Qwen2.5-Coder-0.5B-Instruct), installed and verified on first use."""
    from hybrid_llm_adapters.models import DEFAULT_SLM, resolve_model

    return resolve_model(DEFAULT_SLM, progress=False)


@pytest.fixture(scope="session")
def cloud_base_url() -> str:
    """The real cloud: vLLM serving Qwen2.5-Coder-1.5B-Instruct on 127.0.0.1 (started once, reused)."""
    from hybrid_llm_adapters.devtools.vllm_server import VLLMServerConfig, start_server

    status = start_server(VLLMServerConfig(), progress=False)
    return status.base_url


@pytest.fixture(scope="session")
def cloud_model_name() -> str:
    from hybrid_llm_adapters.devtools.vllm_server import VLLMServerConfig

    return VLLMServerConfig().name


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    path = DATA / "gsm8k" / "test_public.jsonl"
    if not path.exists():
        pytest.fail(f"GSM8K data not found at {path}; it ships in the repo under data/ (restore it with git checkout).")
    return path
