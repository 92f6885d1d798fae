"""Throughput of SLM-only, cloud-only (vLLM directly) and the hybrid at ~10/30/50 % activation, one run.

On GSM8K public-split prompts, greedy. Hybrid thresholds are the entropy quantiles measured on the SLM-only
pass (so that about the target fraction of steps goes to the cloud). Also measures the local step's cost
with and without trunk reward scoring (the hidden state plus one dot product).

    python benchmarks/throughput.py --data ../shared/data/gsm8k/test_public.jsonl

Writes benchmarks/results/throughput.json and the README table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.cloud.server import VLLMServerConfig, start_server
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.models import DEFAULT_SLM, resolve_model
from hybrid_llm_adapters.routing import EntropyRouter

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "gsm8k" / "test_public.jsonl"


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


def run_cloud_only(client: CloudClient, prompts: list[list[int]], n: int) -> dict:
    tokens, seconds = 0, 0.0
    for ids in tqdm(prompts, desc="cloud-only (vLLM)", leave=False):
        t0 = time.perf_counter()
        r = client._client.completions.create(model=client.config.model, prompt=ids, max_tokens=n, temperature=0)
        seconds += time.perf_counter() - t0
        tokens += r.usage.completion_tokens
    return {"label": "cloud-only (vLLM, one request)", "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "activation_ratio": 1.0, "cloud_calls": len(prompts),
            "cloud_calls_per_cloud_token": len(prompts) / tokens}


def local_step_cost(engine: HybridEngine, ids: list[int], steps: int = 40) -> dict:
    """Mean seconds of one SLM decode step, without and with trunk reward scoring (hidden + dot)."""
    local = engine.local
    weight = torch.randn(local.hidden_size)

    def measure(with_reward: bool) -> float:
        state = local.new_state(list(ids))
        logits, _ = state.forward()
        times = []
        for _ in range(steps):
            tok = int(torch.argmax(logits))
            state.append(tok)
            t0 = time.perf_counter()
            logits, hidden = state.forward(need_hidden=with_reward)
            if with_reward:
                float(hidden @ weight)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    measure(False)  # warm-up
    plain, scored = measure(False), measure(True)
    return {"median_step_s_plain": plain, "median_step_s_with_reward_head": scored,
            "reward_overhead_ratio": scored / plain}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--block-verify-target", type=float, default=0.3,
                    help="also run block verification at this target's threshold")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "throughput.json")
    args = ap.parse_args()

    server = start_server(VLLMServerConfig())
    client = CloudClient(CloudConfig(base_url=server.base_url, model=VLLMServerConfig().name, timeout=300))
    local = load_local_model(resolve_model(DEFAULT_SLM))
    slm_engine = HybridEngine(local, EntropyRouter(float("inf")), client)  # scores entropy, never asks the cloud
    prompts = [slm_engine.render([{"role": "user", "content": p}]) for p in load_prompts(args.data, args.n)]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)

    rows = [run_engine(slm_engine, prompts, gen, "SLM-only (0.5B, transformers)")]
    rows[0]["activation_ratio"] = 0.0
    entropies = sorted(rows[0]["_entropies"])
    rows.append(run_cloud_only(client, prompts, args.max_new_tokens))
    for target in args.targets:
        threshold = entropies[int((1 - target) * (len(entropies) - 1))]
        engine = HybridEngine(local, EntropyRouter(threshold), client)
        row = run_engine(engine, prompts, gen, f"hybrid replace, entropy > {threshold:.3f} (target {target:.0%})")
        row.update(threshold=threshold, target_activation=target, cloud_mode="replace")
        rows.append(row)
        if target == args.block_verify_target:
            bgen = gen.model_copy(update={"cloud_mode": "block_verify"})
            row = run_engine(engine, prompts, bgen,
                             f"hybrid block-verify, entropy > {threshold:.3f} (target {target:.0%})")
            row.update(threshold=threshold, target_activation=target, cloud_mode="block_verify")
            rows.append(row)
    for row in rows:
        row.pop("_entropies", None)
    step = local_step_cost(slm_engine, prompts[0])

    result = {
        "benchmark": "throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "prompts": args.n,
        "max_new_tokens": args.max_new_tokens,
        "data": args.data.name,
        "rows": rows,
        "local_step": step,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    from readme_table import markdown_table, write_section

    table = markdown_table(
        ["configuration", "tokens/s", "activation", "cloud calls / cloud token",
         "cloud calls / cloud-decided token", "tokens"],
        [[r["label"], r["tokens_per_s"], f"{r['activation_ratio']:.0%}", _fmt(r.get("cloud_calls_per_cloud_token")),
          _fmt(r.get("cloud_calls_per_cloud_decided_token")), r["tokens"]] for r in rows],
    )
    table += (f"\n\nLocal SLM step (median): {step['median_step_s_plain'] * 1000:.1f} ms plain, "
              f"{step['median_step_s_with_reward_head'] * 1000:.1f} ms with the trunk reward head "
              f"(x{step['reward_overhead_ratio']:.2f}). {args.n} GSM8K prompts, {args.max_new_tokens} new tokens, "
              f"greedy, run {result['date']}.")
    write_section("throughput", table)
    print(table)


if __name__ == "__main__":
    main()
