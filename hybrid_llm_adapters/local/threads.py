"""How many CPU threads the SLM's torch uses, so that it and a cloud server on the same machine do not starve
each other, and which thread uses them.

Measured on 2 cores with the vLLM CPU server we start on the same machine (docs/performance.md): with torch on
both cores, an SLM step takes 106 ms idle but about 1,060 ms right after each cloud call, because vLLM's
worker (pinned to core 0) keeps spinning for a while after a request and every torch parallel region waits for
the thread that shares its core. With one torch thread the step takes about 150-160 ms idle and after a call
alike. So: with a cloud on this machine (a loopback URL) and at most 4 cores, torch leaves one core to the
server; otherwise it uses every core. ``HYBRID_LLM_TORCH_THREADS`` overrides the choice.

Only the SLM batcher's worker thread runs torch on several threads. OpenMP keeps one thread team per calling
thread, and a second team (a request thread's small ops on the logits) slowed every SLM step from about 90 to
about 120 ms here, so a request thread's own torch work runs single-threaded (``serial_torch``; its ops take
about 1 ms a token either way).
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
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


_desired: int | None = None


def apply_slm_threads(base_url: str | None) -> int:
    """Set torch's intra-op thread count for this process (it is process-wide) and return it; the batcher's
    worker adopts it before its next step."""
    global _desired
    n = slm_threads(base_url)
    _desired = n
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def adopt_slm_threads() -> None:
    """In the batcher's worker: follow the last ``apply_slm_threads`` (OpenMP keeps the count per thread)."""
    if _desired is not None and torch.get_num_threads() != _desired:
        torch.set_num_threads(_desired)


@functools.cache
def _libgomp() -> Any:
    """The OpenMP runtime torch loaded (Linux), or None where it cannot be found."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
        # torch's own copy when several are loaded (a wheel may bundle another for itself)
        ranked = sorted(paths, key=lambda p: ("torch" not in p, p))
        return ctypes.CDLL(ranked[0]) if ranked else None
    except OSError:
        return None


@contextmanager
def serial_torch() -> Iterator[None]:
    """Run this thread's torch ops on one thread (this thread's OpenMP setting only), restoring it after."""
    gomp = _libgomp()
    if gomp is None:
        yield
        return
    before = int(gomp.omp_get_max_threads())
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)
