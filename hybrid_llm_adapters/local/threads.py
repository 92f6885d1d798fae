"""How many CPU threads the SLM's torch uses, so that it and a cloud server on the same machine do not starve
each other.

Measured on 2 cores with the vLLM CPU server we start on the same machine (docs/performance.md): with torch on
both cores, an SLM step takes 106 ms idle but about 1,060 ms right after each cloud call, because vLLM's
worker (pinned to core 0) keeps spinning for a while after a request and every torch parallel region waits for
the thread that shares its core. With one torch thread the step takes about 150-160 ms idle and after a call
alike. So: with a cloud on this machine (a loopback URL) and at most 4 cores, torch leaves one core to the
server; otherwise it uses every core. ``HYBRID_LLM_TORCH_THREADS`` overrides the choice.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlparse

import torch

THREADS_ENV = "HYBRID_LLM_TORCH_THREADS"
SHARED_BOX_MAX_CORES = 4


def cloud_is_local(base_url: str | None) -> bool:
    """Whether the cloud endpoint is on this machine (a loopback address)."""
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def slm_threads(base_url: str | None, cores: int | None = None) -> int:
    """The torch thread count for the SLM beside a cloud at ``base_url`` (None: no cloud)."""
    override = os.environ.get(THREADS_ENV)
    if override:
        return max(1, int(override))
    cores = cores or os.cpu_count() or 1
    if cloud_is_local(base_url) and cores <= SHARED_BOX_MAX_CORES:
        return max(1, cores - 1)
    return cores


def apply_slm_threads(base_url: str | None) -> int:
    """Set torch's intra-op thread count for this process (it is process-wide) and return it."""
    n = slm_threads(base_url)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
