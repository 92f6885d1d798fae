"""Reward-model pipeline benchmark, end to end on the real pair (one run; results are never typed in).

1. pairs: a JSONL written by `hybrid-llm synth` (SLM and cloud on vLLM, sampled with randomized
   temperature / top-p, held-out split by prompt);
2. SLM features computed once (cached, safetensors);
3. trunk head: linear head on the frozen SLM's final hidden state;
4. separate RM: 0.5B sequence-classification model, top layers + norm + score head fine-tuned (score head
   initialised from the trunk head);
5. per-token check on held-out prompts along the cloud's greedy output: ROC AUC of each score for
   "the SLM's greedy token differs from the cloud's", beside SLM entropy and max-probability, and the share
   of those tokens caught at 10/20/30 % activation;
6. calibration: the threshold giving ~30 % activation; the table is stored in the trunk head's manifest and
   the head is copied into the package assets (`--ship`).

    python benchmarks/reward_model.py --pairs .cache/reward/pairs.jsonl --work .cache/reward --ship

Writes benchmarks/results/reward_model.json and the README section.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DOCS_PAGE = HERE.parent / "docs" / "reward.md"
sys.path.insert(0, str(HERE))

from readme_table import markdown_table, write_section

from hybrid_llm_adapters.local.reward import LinearRewardHead
from hybrid_llm_adapters.models import DEFAULT_CLOUD, DEFAULT_SLM, resolve_model
from hybrid_llm_adapters.training.calibrate import (
    activation_at,
    calibration_table,
    threshold_for_activation,
    write_calibration,
)
from hybrid_llm_adapters.training.evaluate import summarize, token_scores
from hybrid_llm_adapters.training.features import compute_features
from hybrid_llm_adapters.training.synth import Endpoint, cloud_greedy, read_pairs
from hybrid_llm_adapters.training.train import (
    TopLayers,
    TrainConfig,
    load_seq_model,
    manifest_for,
    save_separate,
    train_separate,
    train_trunk,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="feature cache, trained models, token scores")
    ap.add_argument("--cloud-url", default="http://127.0.0.1:8765/v1")
    ap.add_argument("--cloud-model", default=DEFAULT_CLOUD)
    ap.add_argument("--eval-tokens", type=int, default=64, help="cloud greedy tokens per held-out prompt")
    ap.add_argument("--trainable-layers", type=int, default=2)
    ap.add_argument("--separate-epochs", type=int, default=1)
    ap.add_argument("--skip-separate", action="store_true")
    ap.add_argument("--reuse-separate", action="store_true",
                    help="load WORK/separate_rm and its training report instead of training again")
    ap.add_argument("--separate-max-pairs", type=int, default=None, help="cap the separate RM's training steps")
    ap.add_argument("--extra-eval", default="gsm8k=8,svamp=6,mmlu=8,chitchat=8,code=6",
                    help="fresh prompts (not in the pairs file) added to the per-token check; cloud greedy only")
    ap.add_argument("--gsm8k-path", help="for --extra-eval")
    ap.add_argument("--svamp-path", help="for --extra-eval")
    ap.add_argument("--target-activation", type=float, default=0.3)
    ap.add_argument("--ship", action="store_true", help="copy the trunk head into hybrid_llm_adapters/assets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="rewrite the README section from the JSON")
    args = ap.parse_args()
    if args.render_only:
        write_section("reward_model", render(json.loads((HERE / "results" / "reward_model.json").read_text())),
                      DOCS_PAGE)
        return
    torch.manual_seed(args.seed)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    slm_dir = resolve_model(DEFAULT_SLM)
    tok = AutoTokenizer.from_pretrained(str(slm_dir))
    train_recs, held = read_pairs(args.pairs, "train"), read_pairs(args.pairs, "heldout")
    k = args.trainable_layers
    lm = AutoModelForCausalLM.from_pretrained(str(slm_dir), dtype=torch.bfloat16)
    lm.eval()

    features_cached = (work / "features.safetensors").exists()
    t0 = time.monotonic()
    store = compute_features(lm, train_recs + held, work / "features.safetensors", mid_layers=k)
    feature_s = time.monotonic() - t0

    # trunk head
    tcfg = TrainConfig(kind="trunk", seed=args.seed)
    w, bias, trunk = train_trunk(train_recs, held, store, tcfg)
    head_path = work / "reward_head_trunk.safetensors"
    LinearRewardHead(w, torch.tensor(bias), manifest_for(
        "linear", DEFAULT_SLM, args.cloud_model, tok,
        train=json.dumps({k_: v for k_, v in trunk.items() if isinstance(v, (int, float))}))).save(head_path)
    head = LinearRewardHead.load(head_path, tok, lm.config.hidden_size)

    # separate RM
    sep: dict | None = None
    top = None
    sep_dir = work / "separate_rm"
    if args.reuse_separate and (sep_dir / "train_report.json").exists():
        sep = json.loads((sep_dir / "train_report.json").read_text())
        top = TopLayers(load_seq_model(sep_dir), k).float().eval()
    elif not args.skip_separate:
        seq = load_seq_model(slm_dir)
        scfg = TrainConfig(kind="separate", epochs=args.separate_epochs, trainable_layers=k, seed=args.seed,
                           max_train_pairs=args.separate_max_pairs)
        sep_train = train_recs[: args.separate_max_pairs] if args.separate_max_pairs else train_recs
        sep = train_separate(sep_train, held, store, seq, scfg, init_head=w)
        save_separate(seq, tok, sep_dir, manifest_for("separate", DEFAULT_SLM, args.cloud_model, tok,
                                                      trainable_layers=k))
        (sep_dir / "train_report.json").write_text(json.dumps(sep, indent=2))
        top = TopLayers(seq, k).float().eval()  # the saved (bf16-rounded) weights, as deployed
    del store

    # per-token check on held-out prompts
    t1 = time.monotonic()
    eval_recs = held + extra_eval_records(args, tok, {r["prompt_id"] for r in train_recs + held})
    greedy = cloud_greedy(eval_recs, Endpoint(base_url=args.cloud_url, model=args.cloud_model), args.eval_tokens,
                          cache=work / f"cloud_greedy_{args.eval_tokens}.jsonl")
    scores = token_scores(lm, eval_recs, greedy, head=head, top=top, mid_layers=k)
    eval_s = time.monotonic() - t1
    summary = summarize(scores)

    # calibration on the same held-out tokens (the dev set): ~30 % activation
    cal = {}
    for name in ("trunk", "separate"):
        s = scores[name]
        if s and not any(math.isnan(v) for v in s):
            th = threshold_for_activation(s, args.target_activation)
            cal[name] = {"target_activation": args.target_activation, "threshold": th,
                         "activation": activation_at(s, th), "table": calibration_table(s)}
    write_calibration(head_path, cal["trunk"]["table"])
    if sep is not None and "separate" in cal:
        write_calibration(work / "separate_rm", cal["separate"]["table"])
    shipped = None
    if args.ship:
        from hybrid_llm_adapters.assets import ASSETS

        shipped = ASSETS / "reward_head_qwen2.5-coder-0.5b_1.5b.safetensors"
        shutil.copyfile(head_path, shipped)

    (work / "token_scores.json").write_text(json.dumps({"token_scores": scores}))
    src = Counter(r["source"] for r in train_recs + held)
    result = {
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "note": "2 shared CPU cores, other jobs running; times are wall-clock"},
        "models": {"slm": DEFAULT_SLM, "cloud": args.cloud_model},
        "data": {
            "pairs": len(train_recs) + len(held), "train_pairs": len(train_recs), "heldout_pairs": len(held),
            "by_source": dict(src),
            "max_tokens": train_recs[0]["max_tokens"] if train_recs else None,
            "mean_cloud_tokens": sum(len(r["cloud_ids"]) for r in train_recs + held) / max(1, len(train_recs + held)),
            "mean_slm_tokens": sum(len(r["slm_ids"]) for r in train_recs + held) / max(1, len(train_recs + held)),
        },
        "feature_seconds": feature_s,
        "features_cached": features_cached,
        "trunk": trunk,
        "separate": sep,
        "per_token": {**summary, "prompts": len(eval_recs), "heldout_pair_prompts": len(held),
                      "fresh_prompts": len(eval_recs) - len(held), "eval_seconds": eval_s, "eval_tokens_per_prompt": args.eval_tokens},
        "calibration": {n: {k_: v for k_, v in c.items() if k_ != "table"} for n, c in cal.items()},
        "shipped_head": str(shipped) if shipped else None,
    }
    out = HERE / "results" / "reward_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    write_section("reward_model", render(result), DOCS_PAGE)


def extra_eval_records(args: argparse.Namespace, tok: object, exclude: set[str]) -> list[dict]:
    """Fresh prompts for the per-token check (never in the pairs file, so held out by construction)."""
    from hybrid_llm_adapters.chat import render_chat
    from hybrid_llm_adapters.training.cli import _counts
    from hybrid_llm_adapters.training.prompts import build_prompt_pool

    if not args.extra_eval:
        return []
    counts = _counts(args.extra_eval)
    if args.gsm8k_path is None:
        counts.pop("gsm8k", None)
    if args.svamp_path is None:
        counts.pop("svamp", None)
    wanted = dict(counts)
    pool = build_prompt_pool({k: v * 4 for k, v in counts.items()}, seed=args.seed + 12345,
                             gsm8k_path=args.gsm8k_path, svamp_path=args.svamp_path)
    out = []
    for p in pool:
        if p.id in exclude or wanted.get(p.source, 0) <= 0:
            continue
        wanted[p.source] -= 1
        out.append({"prompt_id": p.id, "source": p.source, "prompt": p.text,
                    "prompt_ids": render_chat(tok, [{"role": "user", "content": p.text}])})
    return out


def render(r: dict) -> str:
    d = r["data"]
    rows = []
    for name, key, auc_key in (("trunk head (linear on SLM hidden)", "trunk", "trunk_reward"),
                               ("separate RM (0.5B, top layers tuned)", "separate", "separate_reward")):
        t = r.get(key)
        if not t:
            continue
        pt = r["per_token"]
        rows.append([name, t["train_chunks"], f"{t['train_seconds']:.1f}", t.get("heldout_pairwise_accuracy", "n/a"),
                     pt["auc"].get(auc_key, "n/a"), pt["catch_rate"].get(auc_key, {}).get("30%", "n/a"),
                     f"{r['calibration'].get(key, {}).get('threshold', float('nan')):.3f}"])
    pt = r["per_token"]
    for name, key in (("SLM entropy", "entropy"), ("SLM max-prob", "max_prob")):
        rows.append([name, "-", "-", "-", pt["auc"][key], pt["catch_rate"][key]["30%"], "-"])
    table = markdown_table(["router score", "train chunks", "train s", "held-out pairwise acc",
                            "token AUC (SLM argmax != cloud)", "mismatches caught @30% act.",
                            "threshold @30%"], rows)
    head = (f"{d['pairs']} prompt pairs ({d['train_pairs']} train / {d['heldout_pairs']} held out by prompt; "
            f"{', '.join(f'{k} {v}' for k, v in d['by_source'].items())}), responses <= {d['max_tokens']} tokens; "
            f"per-token check: {pt['tokens']} tokens along the cloud's greedy output on {pt['prompts']} held-out prompts "
            f"({pt['heldout_pair_prompts']} held-out pair prompts + {pt['fresh_prompts']} fresh ones), "
            f"{pt['mismatch_rate']:.1%} where the SLM's greedy token differs. SLM features: "
            + ("read from the cache of an earlier run." if r.get("features_cached", r["feature_seconds"] < 1.0)
               else f"{r['feature_seconds']:.0f} s."))
    return head + "\n\n" + table


if __name__ == "__main__":
    main()
