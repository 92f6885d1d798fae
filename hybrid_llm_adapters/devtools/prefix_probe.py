"""A measurement of the server's prefix reuse: next-token calls that re-send a growing prefix, the hybrid's
cloud-call pattern (the figures in ``vllm_server``'s notes came from it)."""

from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from hybrid_llm_adapters.errors import CloudServerError

from .vllm_server import server_status


def _post_json(url: str, body: dict[str, Any], timeout: float = 120.0) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise CloudServerError(
            f"POST {url} -> HTTP {e.code}: {e.read().decode(errors='replace')[:500]}"
        ) from e


def measure_prefix_reuse(
    port: int = 8765,
    model: str | None = None,
    prefix_ids: list[int] | None = None,
    calls: int = 10,
    bust_cache: bool = False,
) -> dict[str, float]:
    """Latency of next-token calls (``max_tokens=1``, ``logprobs=5``) that re-send a growing prefix.

    This is the hybrid's cloud-call pattern. ``bust_cache`` adds a fresh ``cache_salt`` per call, which
    forces a full recompute on the same server: the no-cache baseline.
    """
    status = server_status(port)
    if not status.running:
        raise CloudServerError(f"No server answers on port {port}. Fix: start_server() first.")
    model = model or status.served_models[0]
    ids = list(prefix_ids or [(i * 7919) % 20000 + 1000 for i in range(200)])
    url = f"{status.base_url}/completions"
    base = {"model": model, "max_tokens": 1, "logprobs": 5, "temperature": 0.0}
    _post_json(url, {**base, "prompt": ids})  # warm: fill the cache with the prefix
    times: list[float] = []
    cached: list[int] = []
    for i in range(calls):
        ids.append(1000 + (i * 104729) % 20000)  # one more token, as after each accepted hybrid token
        extra = {"cache_salt": uuid.uuid4().hex} if bust_cache else {}
        t0 = time.perf_counter()
        out = _post_json(url, {**base, "prompt": ids, **extra})
        times.append(time.perf_counter() - t0)
        details = (out.get("usage") or {}).get("prompt_tokens_details") or {}
        cached.append(int(details.get("cached_tokens") or 0))
    return {
        "prompt_tokens_start": float(len(ids) - calls),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_cached_tokens": statistics.fmean(cached),
    }
