"""Throughput, side by side in one run: SLM-only, the hybrid (entropy at about 15 % activation) in replace and
block_verify modes, each at 1, 4 and 16 concurrent requests, and cloud-only vLLM at 1 and 16.

On GSM8K public-split prompts, greedy. The hybrid's threshold is the entropy quantile measured on an SLM-only
pass. Concurrent rows keep N requests in flight (their SLM steps share batched forwards); tokens/s is all
tokens over the set's wall time. Also measures the local step's cost with and without the reward head's scoring.

    python benchmarks/throughput.py --data data/gsm8k/test_public.jsonl

Writes benchmarks/results/throughput.json and the table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.devtools.vllm_server import VLLMServerConfig, start_server
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.local.threads import apply_slm_threads
from hybrid_llm_adapters.models import DEFAULT_SLM, resolve_model
from hybrid_llm_adapters.routing import EntropyRouter

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "performance.md"
DEFAULT_DATA = HERE.parent / "data" / "gsm8k" / "test_public.jsonl"


def load_prompts(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [r["question"] + "\nPut the final answer in \\boxed{}." for r in rows]


def run_engine(engine: HybridEngine, prompts: list[list[int]], gen: GenerationConfig, label: str) -> dict:
    tokens = calls = cloud_tokens = decided = 0
    seconds = 0.0
    entropies: list[float] = []
    for ids in tqdm(prompts, desc=label, leave=False):
        t0 = time.perf_counter()
        result = engine.generate(ids, gen)
        seconds += time.perf_counter() - t0
        tokens += len(result.token_ids)
        calls += result.ledger.cloud_calls
        cloud_tokens += result.ledger.cloud_tokens
        decided += result.ledger.cloud_tokens + result.ledger.accepted_drafts
        entropies += [e.score for e in result.events if e.score is not None]
    return {
        "label": label,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "activation_ratio": cloud_tokens / tokens if tokens else 0.0,
        "cloud_calls": calls,
        "cloud_calls_per_cloud_token": calls / cloud_tokens if cloud_tokens else None,
        "cloud_calls_per_cloud_decided_token": calls / decided if decided else None,
        "_entropies": entropies,
    }


def run_concurrent(engine: HybridEngine, prompts: list[list[int]], gen: GenerationConfig, label: str,
                   concurrency: int) -> dict:
    """``concurrency`` requests in flight at once (a new one starts as one finishes), as a server would see them;
    tokens/s is all generated tokens over the wall time of the whole set."""
    stats = engine.local.batcher.stats
    forwards, rows = stats.forwards, stats.rows
    results = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=len(prompts), desc=label, leave=False) as bar:
        for result in pool.map(lambda ids: engine.generate(ids, gen), prompts):
            results.append(result)
            bar.update()
    seconds = time.perf_counter() - t0
    tokens = sum(len(r.token_ids) for r in results)
    cloud_tokens = sum(r.ledger.cloud_tokens for r in results)
    calls = sum(r.ledger.cloud_calls for r in results)
    decided = cloud_tokens + sum(r.ledger.accepted_drafts for r in results)
    n_forwards = stats.forwards - forwards
    return {
        "label": label, "concurrency": concurrency, "requests": len(prompts), "tokens": tokens,
        "seconds": seconds, "tokens_per_s": tokens / seconds,
        "activation_ratio": cloud_tokens / tokens if tokens else 0.0, "cloud_calls": calls,
        "cloud_calls_per_cloud_token": calls / cloud_tokens if cloud_tokens else None,
        "cloud_calls_per_cloud_decided_token": calls / decided if decided else None,
        "slm_forwards": n_forwards, "mean_rows_per_forward": (stats.rows - rows) / n_forwards if n_forwards else None,
    }


def run_cloud_only(client: CloudClient, prompts: list[list[int]], n: int, concurrency: int) -> dict:
    """The whole answer in one streamed-free completion per request, straight to vLLM, ``concurrency`` at once."""

    def one(ids: list[int]) -> tuple[int, int]:
        r = client._client.completions.create(model=client.config.model, prompt=ids, max_tokens=n, temperature=0)
        return r.usage.completion_tokens, 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(tqdm(pool.map(one, prompts), total=len(prompts), desc=f"cloud-only x{concurrency}", leave=False))
    seconds = time.perf_counter() - t0
    tokens, calls = sum(t for t, _ in done), sum(c for _, c in done)
    return {"label": f"cloud-only (vLLM 1.5B), {concurrency} concurrent", "concurrency": concurrency,
            "requests": len(prompts), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "activation_ratio": tokens / tokens if tokens else 0.0,  # every token came from the cloud
            "cloud_calls": calls, "cloud_calls_per_cloud_token": calls / tokens if tokens else None}


def local_step_cost(local: Any, ids: list[int], head: Any = None, steps: int = 40) -> dict:
    """Median seconds of one SLM decode step, and of the shipped reward head's scoring of its candidate (the
    function the reward router calls: logit statistics, the context hidden state, the candidate's bias), timed
    step by step in one loop so that both see the same load."""
    from hybrid_llm_adapters.assets import default_reward_head_path
    from hybrid_llm_adapters.local.reward import load_head

    head = head or load_head(default_reward_head_path(), local.tokenizer, local.hidden_size)
    state = local.new_state(list(ids))
    logits, _ = state.forward()
    step_s, score_s = [], []
    for i in range(steps + 2):
        state.append(int(torch.argmax(logits)))
        t0 = time.perf_counter()
        logits, hidden = state.forward(need_hidden=True)
        t1 = time.perf_counter()
        head.score(logits, int(torch.argmax(logits)), hidden)
        t2 = time.perf_counter()
        if i >= 2:  # warm-up
            step_s.append(t1 - t0)
            score_s.append(t2 - t1)
    state.close()
    plain, score = statistics.median(step_s), statistics.median(score_s)
    return {"median_step_s_plain": plain, "median_score_s": score,
            "median_step_s_with_reward_head": plain + score, "reward_overhead_ratio": (plain + score) / plain}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--single-n", type=int, default=4, help="prompts for the single-stream rows")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--target", type=float, default=0.15, help="hybrid rows: entropy threshold for this activation")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "throughput.json")
    args = ap.parse_args()

    server = start_server(VLLMServerConfig())
    client = CloudClient(CloudConfig(base_url=server.base_url, model=VLLMServerConfig().name, timeout=300))
    local = load_local_model(resolve_model(DEFAULT_SLM))
    slm_engine = HybridEngine(local, EntropyRouter(float("inf")), client)  # scores entropy, never asks the cloud
    n_max = max(args.concurrency)
    prompts = [slm_engine.render([{"role": "user", "content": p}]) for p in load_prompts(args.data, n_max)]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)

    def prompts_for(c: int) -> list[list[int]]:
        return prompts[: args.single_n] if c == 1 else prompts[: min(n_max, 2 * c)]

    rows = []
    # torch threads as a user's engine sets them: every core without a cloud, one core left to a local vLLM
    slm_threads = apply_slm_threads(None)
    probe = run_engine(slm_engine, prompts[: args.single_n], gen, "entropy probe")
    entropies = sorted(probe.pop("_entropies"))
    threshold = entropies[int((1 - args.target) * (len(entropies) - 1))]
    for c in args.concurrency:
        rows.append(run_concurrent(slm_engine, prompts_for(c), gen, f"SLM-only, {c} concurrent", c))
        rows[-1]["torch_threads"] = slm_threads
    step = local_step_cost(slm_engine.local, prompts[0])  # one row, SLM-only threads
    hybrid_threads = apply_slm_threads(server.base_url)
    hybrid = HybridEngine(local, EntropyRouter(threshold), client)
    for mode in ("replace", "block_verify"):
        mgen = gen.model_copy(update={"cloud_mode": mode})
        for c in args.concurrency:
            row = run_concurrent(hybrid, prompts_for(c), mgen, f"hybrid {mode}, entropy > {threshold:.2f}, {c} concurrent", c)
            row.update(threshold=threshold, cloud_mode=mode, torch_threads=hybrid_threads)
            rows.append(row)
    for c in sorted({1, n_max}):
        rows.append(run_cloud_only(client, prompts_for(c), args.max_new_tokens, c))

    def rate(label_start: str, c: int) -> float:
        return next(r["tokens_per_s"] for r in rows if r["label"].startswith(label_start) and r["concurrency"] == c)

    targets = [
        {"target": "SLM-only single stream >= 25 tokens/s", "measured": rate("SLM-only", 1), "goal": 25.0},
        {"target": f"hybrid replace at {n_max} concurrent >= 4x its single stream",
         "measured": rate("hybrid replace", n_max) / rate("hybrid replace", 1), "goal": 4.0},
        {"target": f"hybrid block_verify at {n_max} concurrent >= 4x its single stream",
         "measured": rate("hybrid block_verify", n_max) / rate("hybrid block_verify", 1), "goal": 4.0},
        {"target": "hybrid replace single stream >= cloud-only single stream",
         "measured": rate("hybrid replace", 1) / rate("cloud-only", 1), "goal": 1.0},
        {"target": "hybrid block_verify single stream >= cloud-only single stream",
         "measured": rate("hybrid block_verify", 1) / rate("cloud-only", 1), "goal": 1.0},
    ]
    for t in targets:
        t["met"] = t["measured"] >= t["goal"]
    result = {
        "benchmark": "throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform()},
        "max_new_tokens": args.max_new_tokens,
        "data": args.data.name,
        "rows": rows,
        "targets": targets,
        "local_step": step,
        "llama_cpp": "not built: no llama.cpp backend in this release (see docs/performance.md)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    from readme_table import markdown_table, write_section

    table = markdown_table(
        ["configuration", "requests", "tokens/s", "activation", "cloud calls / cloud token", "SLM rows / forward",
         "torch threads"],
        [[r["label"], r["requests"], r["tokens_per_s"], f"{r['activation_ratio']:.0%}",
          _fmt(r.get("cloud_calls_per_cloud_token")), _fmt(r.get("mean_rows_per_forward")),
          r.get("torch_threads", "-")] for r in rows],
    )
    table += "\n\n" + markdown_table(["target", "measured", "goal", "met"],
                                      [[t["target"], f"{t['measured']:.2f}", t["goal"], "yes" if t["met"] else "no"]
                                       for t in targets])
    table += (f"\n\nLocal SLM step (median, one row): {step['median_step_s_plain'] * 1000:.1f} ms plain, "
              f"{step['median_step_s_with_reward_head'] * 1000:.1f} ms with the reward head's scoring "
              f"(x{step['reward_overhead_ratio']:.2f}). GSM8K prompts, {args.max_new_tokens} new tokens, greedy, "
              f"{os.cpu_count()} cores; torch threads as the engine sets them (docs above); run {result['date']}.")
    write_section("throughput", table, DOC)
    print(table)


if __name__ == "__main__":
    main()
