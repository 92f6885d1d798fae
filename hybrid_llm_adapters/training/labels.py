"""Token labels by teacher forcing: where would the cloud override the SLM's token?

For each prompt the SLM writes responses in this process, on the batched engine (one greedy, the others
sampled with a temperature, top-p and seed drawn per response, as the reward paper recommends). Each whole response is then scored by the cloud in one call
(token ids, ``echo``, ``logprobs=20``, ``max_tokens=1``): vLLM returns the cloud's top-20 at every position
of the response, with the cloud's log-probability of the SLM's own token. Every response token thus gets a
label with the same prefix on both sides, which two independently sampled responses (the first build's
pairs) never give:

- ``agree``: the cloud's argmax is the SLM's token (keep it local);
- the cloud's log-probability of the SLM's token and its gap to the cloud's top (the severity of a miss);
- a single-token pair: chosen = the cloud's argmax, rejected = the SLM's token, same prefix (the paper's
  chunk at length 1).

Records are JSONL, one response per line, written when its label is in: a stopped run resumes by skipping
the (prompt id, variant) keys already present. The split is by prompt (a hash), so a prompt's responses never
straddle train and held-out.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr

from ..chat import render_chat
from ..cloud.client import CloudClient
from ..config import CloudConfig, GenerationConfig
from ..errors import ConfigError
from .prompts import Prompt, split_of


class Endpoint(BaseModel):
    """The cloud's OpenAI-compatible completions endpoint (it must return token ids and echo logprobs)."""

    base_url: str
    model: str
    api_key: SecretStr = SecretStr("EMPTY")
    timeout: float = 600.0


def client_for(ep: Endpoint) -> CloudClient:
    """The package's one cloud client (retries, breaker, token ids), for this endpoint."""
    return CloudClient(CloudConfig(base_url=ep.base_url, model=ep.model, api_key=ep.api_key, timeout=ep.timeout,
                                   max_retries=3, max_retry_s=ep.timeout, logprobs=1))


TOP_K = 20  # vLLM's default max_logprobs: the most one call returns per position
KEEP_TOP = 3  # alternatives kept per position in the records (the argmax and two more)


class LabelConfig(BaseModel):
    """How responses are drawn and labelled."""

    max_tokens: int = Field(256, ge=1, description="longest SLM response")
    sampled_per_prompt: int = Field(1, ge=0, description="sampled responses per prompt, besides the greedy one")
    temperature: tuple[float, float] = (0.3, 1.1)
    top_p: tuple[float, float] = (0.8, 1.0)
    seed: int = 0
    heldout_fraction: float = Field(0.4, ge=0.0, lt=1.0, description="share of prompts held out")
    concurrency: int = Field(16, ge=1, description="responses in flight (one SLM batch; vLLM batches the labels)")


@dataclass(frozen=True)
class Variant:
    """One response to draw: greedy (index 0) or sampled."""

    index: int
    temperature: float
    top_p: float
    seed: int | None

    @property
    def name(self) -> str:
        return "greedy" if self.index == 0 else f"sample{self.index}"


def variants(prompt_id: str, cfg: LabelConfig) -> list[Variant]:
    """The greedy response and ``sampled_per_prompt`` draws, reproducible from (seed, prompt id)."""
    rng = random.Random(f"{cfg.seed}:{prompt_id}")
    out = [Variant(0, 0.0, 1.0, None)]
    for i in range(1, cfg.sampled_per_prompt + 1):
        out.append(Variant(i, round(rng.uniform(*cfg.temperature), 3), round(rng.uniform(*cfg.top_p), 3),
                           rng.randrange(2**31 - 1)))
    return out


def slm_response(engine: Any, prompt_ids: list[int], v: Variant, max_tokens: int) -> tuple[list[int], str]:
    """The SLM's response (token ids, the end-of-answer token included when it stopped) and finish reason."""
    gen = GenerationConfig(max_new_tokens=max_tokens, temperature=v.temperature, top_p=v.top_p, seed=v.seed)
    result = engine.generate(prompt_ids, gen)
    ids = list(result.token_ids)
    eos = engine.tokenizer.eos_token_id
    if result.finish_reason == "stop" and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)  # the end of the answer is a token the router scores too
    return ids, result.finish_reason


def label_tokens(client: CloudClient, prompt_ids: list[int], response_ids: list[int]) -> dict[str, Any]:
    """The cloud's view of every response token, from one echo call: its top ``KEEP_TOP`` (ids, logprobs) and
    its logprob of the SLM's token (from the top-20, or the echoed token's own logprob)."""
    score = client.score_block(prompt_ids, response_ids, GenerationConfig(max_new_tokens=1, temperature=0.0),
                               logprobs=TOP_K)
    top_ids, top_lps, own = [], [], []
    for token, top, lp in zip(response_ids, score.positions, score.draft_logprobs):
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[:KEEP_TOP]
        top_ids.append([t for t, _ in ranked])
        top_lps.append([round(v, 4) for _, v in ranked])
        value = top.get(token, lp)
        own.append(None if value is None else round(float(value), 4))
    return {"cloud_top_ids": top_ids, "cloud_top_logprobs": top_lps, "cloud_logprob_of_slm": own,
            "cloud_prompt_tokens": score.usage.prompt_tokens}


def cloud_argmax(record: dict[str, Any]) -> list[int]:
    """The cloud's top token at each response position (the SLM's own token where the cloud gave none)."""
    return [top[0] if top else tok for tok, top in zip(record["response_ids"], record["cloud_top_ids"])]


def agreement(record: dict[str, Any]) -> list[bool]:
    """Per response token: is the cloud's top token the SLM's (keep it local)?"""
    return [a == t for a, t in zip(cloud_argmax(record), record["response_ids"])]


def done_keys(out: Path) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                r = json.loads(line)
                seen.add((r["prompt_id"], r["variant"]))
            except (ValueError, KeyError):
                continue  # a torn last line is simply redone
    return seen


def read_labels(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Label records of a JSONL file (gzip-compressed when the name ends in .gz, as the committed run is)."""
    import gzip

    path = Path(path)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    rows = [json.loads(x) for x in text.splitlines() if x.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def build_labels(prompts: list[Prompt], engine: Any, cloud: Endpoint, out: str | Path,
                 cfg: LabelConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Draw and label every (prompt, variant) not yet in ``out``; returns counts and timing.

    ``engine``: a :class:`~hybrid_llm_adapters.engine.HybridEngine` with router kind 'local' (SLM only)."""
    from tqdm.auto import tqdm

    cfg = cfg or LabelConfig()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    todo = [(p, v) for p in prompts for v in variants(p.id, cfg) if (p.id, v.name) not in done]
    cloud_client = client_for(cloud)

    def one(p: Prompt, v: Variant) -> dict[str, Any]:
        prompt_ids = render_chat(engine.tokenizer, [{"role": "user", "content": p.text}])
        response_ids, finish = slm_response(engine, prompt_ids, v, cfg.max_tokens)
        labels = label_tokens(cloud_client, prompt_ids, response_ids)
        return {"prompt_id": p.id, "source": p.source, "split": split_of(p.id, cfg.heldout_fraction),
                "variant": v.name, "temperature": v.temperature, "top_p": v.top_p, "seed": v.seed,
                "slm_model": engine.local.path.name, "cloud_model": cloud.model, "prompt": p.text,
                "prompt_ids": prompt_ids, "response_ids": response_ids, "finish_reason": finish, **labels}

    t0 = time.monotonic()
    tokens = disagreements = 0
    errors: list[str] = []
    with (ThreadPoolExecutor(max_workers=cfg.concurrency) as pool, open(out, "a") as fh,
          tqdm(total=len(todo), desc="labelled responses", unit="resp", disable=not progress) as bar):
        futures = {pool.submit(one, p, v): (p, v) for p, v in todo}
        for fut in as_completed(futures):
            bar.update(1)
            try:
                rec = fut.result()
            except Exception as e:  # one failed response is redone by the next run, the others are kept
                p, v = futures[fut]
                errors.append(f"{p.id}/{v.name}: {type(e).__name__}: {e}")
                if len(errors) >= max(10, len(todo) // 5):
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise ConfigError(f"{len(errors)} label requests failed (first: {errors[0]}); what finished "
                                      f"is in {out}; fix the servers and rerun to resume.") from e
                continue
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            tokens += len(rec["response_ids"])
            disagreements += agreement(rec).count(False)
            bar.set_postfix(tokens=tokens, disagree=disagreements)
    return {"written": len(todo) - len(errors), "skipped_done": len(done), "tokens": tokens,
            "disagreements": disagreements, "failed": len(errors), "errors": errors[:5],
            "seconds": round(time.monotonic() - t0, 1), "out": str(out)}
