"""U-HLM's perturbation-uncertainty router at several thresholds on GSM8K: activation ratio and tokens/s,
in replace and block-verify modes, one run.

    python benchmarks/uncertainty_sweep.py --data data/gsm8k/test_public.jsonl

Writes benchmarks/results/uncertainty_sweep.json and the README table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from throughput import DEFAULT_DATA, HERE, _fmt, load_prompts, run_engine

from hybrid_llm_adapters import CloudConfig, GenerationConfig, HybridEngine
from hybrid_llm_adapters.cloud.client import CloudClient
from hybrid_llm_adapters.devtools.vllm_server import VLLMServerConfig, start_server
from hybrid_llm_adapters.local.slm import load_local_model
from hybrid_llm_adapters.models import DEFAULT_SLM, resolve_model
from hybrid_llm_adapters.routing import PerturbationRouter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=6)  # 2 CPU cores: ~20 min for 6 configurations
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.15, 0.3])
    ap.add_argument("--modes", nargs="+", default=["replace", "block_verify"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "uncertainty_sweep.json")
    args = ap.parse_args()

    server = start_server(VLLMServerConfig())
    client = CloudClient(CloudConfig(base_url=server.base_url, model=VLLMServerConfig().name, timeout=300))
    local = load_local_model(resolve_model(DEFAULT_SLM))
    prompts_text = load_prompts(args.data, args.n)
    rows = []
    for threshold in args.thresholds:
        engine = HybridEngine(local, PerturbationRouter(threshold), client)
        prompts = [engine.render([{"role": "user", "content": p}]) for p in prompts_text]
        for mode in args.modes:
            gen = GenerationConfig(max_new_tokens=args.max_new_tokens, cloud_mode=mode)
            row = run_engine(engine, prompts, gen, f"perturbation u > {threshold} ({mode})")
            row.pop("_entropies", None)
            row.update(threshold=threshold, cloud_mode=mode)
            rows.append(row)
    result = {"benchmark": "uncertainty_sweep", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "prompts": args.n,
              "max_new_tokens": args.max_new_tokens, "data": args.data.name, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    from readme_table import markdown_table, write_section

    table = markdown_table(
        ["router (mode)", "tokens/s", "activation", "cloud calls / cloud-decided token", "cloud calls", "tokens"],
        [[r["label"], r["tokens_per_s"], f"{r['activation_ratio']:.0%}",
          _fmt(r.get("cloud_calls_per_cloud_decided_token")), r["cloud_calls"], r["tokens"]] for r in rows],
    )
    table += f"\n\n{args.n} GSM8K prompts, {args.max_new_tokens} new tokens, greedy, run {result['date']}."
    write_section("uncertainty_sweep", table, HERE.parent / "docs" / "evaluation.md")
    print(table)


if __name__ == "__main__":
    main()
