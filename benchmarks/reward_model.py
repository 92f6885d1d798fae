"""Reward router benchmark: token labels by teacher forcing, the candidate head, and the routers side by side.

1. labels: a JSONL written by `hybrid-llm label` (SLM responses on vLLM, greedy and sampled, each scored by the
   cloud in one echo call; split train / held out by prompt);
2. SLM features from one teacher-forced forward per response (cached, safetensors);
3. the candidate head, weight decay and pair weight chosen by 3-fold cross-validation grouped by prompt;
4. on held-out prompts: per-token AUC for "the cloud's argmax differs from the SLM's token" (and for the
   differences that matter) of the candidate head, the SLM's entropy and max-probability, and the first
   build's trunk head; the share of disagreements caught at 10/20/30 % activation; paired bootstrap over
   prompts of the head minus max-probability;
5. calibration on the held-out greedy responses (what the router sees at decode time with default settings):
   the activation table is stored in the head's manifest; `--ship` copies the head into the package.

    python benchmarks/reward_model.py --labels .cache/reward/labels.jsonl --work .cache/reward --ship
    python benchmarks/reward_model.py --labels benchmarks/results/reward/labels.jsonl.gz --work .cache/reward
        # the committed labels of the published run (no cloud needed)

Writes benchmarks/results/reward_model.json and the table in docs/reward.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DOCS_PAGE = HERE.parent / "docs" / "reward.md"
FIRST_BUILD_HEAD = HERE / "baselines" / "trunk_head_first_build.safetensors"
sys.path.insert(0, str(HERE))

from readme_table import markdown_table, write_section

from hybrid_llm_adapters.local.reward import (
    STAT_NAMES,
    LinearRewardHead,
    RewardManifest,
    tokenizer_fingerprint,
)
from hybrid_llm_adapters.models import DEFAULT_CLOUD, DEFAULT_SLM, resolve_model
from hybrid_llm_adapters.training.calibrate import activation_at, calibration_table, write_calibration
from hybrid_llm_adapters.training.separate_model import (
    SeparateConfig,
    load_seq_model,
    response_scores,
    save_separate,
    train_separate,
)
from hybrid_llm_adapters.training.token_features import load_labelled
from hybrid_llm_adapters.training.token_head import (
    HeadConfig,
    TokenSet,
    fit_candidate_head,
    roc_auc,
    token_set,
)

ACTIVATIONS = (0.1, 0.2, 0.3)
ENTROPY, TOP1 = STAT_NAMES.index("entropy"), STAT_NAMES.index("top1_logprob")


def catch_rate(need_cloud: np.ndarray, positives: np.ndarray, activation: float) -> float:
    """Share of positives among the ``activation`` fraction of tokens with the highest need-cloud scores."""
    k = round(activation * len(need_cloud))
    flagged = np.argsort(-need_cloud, kind="stable")[:k]
    return float(positives[flagged].sum() / max(1, positives.sum()))


def need_cloud_scores(held: TokenSet, head_scores: np.ndarray, trunk: LinearRewardHead | None) -> dict[str, np.ndarray]:
    """Every router's score on the held-out tokens, oriented so that higher = send to the cloud."""
    out = {"candidate head": -head_scores, "SLM entropy": held.slm_stats[:, ENTROPY].numpy(),
           "SLM max-prob": -held.slm_stats[:, TOP1].numpy()}
    if trunk is not None:
        out["trunk head (first build)"] = -(held.fed.float() @ trunk.weight + trunk.bias).numpy()
    return out


def metrics(scores: dict[str, np.ndarray], held: TokenSet) -> dict[str, dict]:
    disagree = (held.agree < 0.5).numpy()
    matters = (held.matters & (held.agree < 0.5)).numpy()
    return {name: {"auc": roc_auc(s, disagree), "auc_matters": roc_auc(s, matters),
                   "catch": {f"{a:.0%}": catch_rate(s, disagree, a) for a in ACTIVATIONS}}
            for name, s in scores.items()}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, held: TokenSet, resamples: int, seed: int) -> dict:
    """AUC and catch-rate differences a - b with 95 % intervals, resampling prompts with replacement."""
    disagree = (held.agree < 0.5).numpy()
    groups = held.group.numpy()
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)

    def diffs(idx: np.ndarray) -> list[float]:
        y = disagree[idx]
        return [roc_auc(a[idx], y) - roc_auc(b[idx], y),
                *(catch_rate(a[idx], y, x) - catch_rate(b[idx], y, x) for x in ACTIVATIONS)]

    point = diffs(np.arange(len(disagree)))
    draws = np.array([diffs(np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))]))
                      for _ in range(resamples)])
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    names = ["auc", *(f"catch {x:.0%}" for x in ACTIVATIONS)]
    return {n: {"diff": p, "ci95": [float(l_), float(h_)]} for n, p, l_, h_ in zip(names, point, lo, hi)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, required=True, help="JSONL written by `hybrid-llm label`")
    ap.add_argument("--work", type=Path, required=True, help="feature cache and the trained head")
    ap.add_argument("--cloud-model", default=DEFAULT_CLOUD)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--trainable-layers", type=int, default=2, help="separate RM: top layers tuned")
    ap.add_argument("--separate-epochs", type=int, default=1)
    ap.add_argument("--skip-separate", action="store_true", help="leave the separate reward model out")
    ap.add_argument("--ship", action="store_true", help="copy the head into hybrid_llm_adapters/assets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="rewrite the docs table from the JSON")
    args = ap.parse_args()
    out = HERE / "results" / "reward_model.json"
    if args.render_only:
        write_section("reward_model", render(json.loads(out.read_text())), DOCS_PAGE)
        return
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    slm_dir = resolve_model(DEFAULT_SLM)
    k = 0 if args.skip_separate else args.trainable_layers
    t0 = time.monotonic()
    lm, tok, records, store = load_labelled(args.labels, args.work / "token_features.safetensors", DEFAULT_SLM, k)
    feature_s = time.monotonic() - t0
    train_recs = [r for r in records if r["split"] == "train"]
    held_recs = [r for r in records if r["split"] == "heldout"]
    train, held = token_set(train_recs, store), token_set(held_recs, store)
    embeddings = lm.get_input_embeddings().weight.detach().float()

    t1 = time.monotonic()
    manifest = RewardManifest(kind="candidate", slm=DEFAULT_SLM, cloud=args.cloud_model,
                              tokenizer_sha256=tokenizer_fingerprint(tok))
    head, fit = fit_candidate_head(train, embeddings, manifest, HeadConfig(seed=args.seed))
    fit_s = time.monotonic() - t1
    head_path = args.work / "reward_head_candidate.safetensors"
    head.save(head_path)

    # what scoring costs at decode time: one SLM step with and without the head (same process, one row)
    from throughput import local_step_cost

    from hybrid_llm_adapters.local.slm import load_local_model

    step_cost = local_step_cost(load_local_model(str(slm_dir)), held_recs[0]["prompt_ids"], head)

    # the decoder's own scoring function on the held-out tokens (the same one RewardRouter calls)
    with torch.no_grad():
        head_scores = head.score_tensors(held.slm_stats, held.context, held.slm_token).numpy()
    trunk = LinearRewardHead.load(FIRST_BUILD_HEAD, tok) if FIRST_BUILD_HEAD.exists() else None
    scores = need_cloud_scores(held, head_scores, trunk)
    separate = None
    if k:
        seq = load_seq_model(slm_dir)
        top, separate = train_separate(train_recs, store, seq, SeparateConfig(
            trainable_layers=k, epochs=args.separate_epochs, seed=args.seed))
        with torch.no_grad():
            scores["separate RM (0.5B, top layers tuned)"] = -torch.cat(
                [response_scores(top, store, r, k) for r in held_recs]).numpy()
        save_separate(seq, tok, args.work / "separate_rm", manifest.model_copy(update={"kind": "separate"}))
    per_token = metrics(scores, held)
    greedy_mask = held.greedy.numpy()
    per_token_greedy = metrics({k: v[greedy_mask] for k, v in scores.items()}, held.subset(held.greedy))
    boot = paired_bootstrap(scores["candidate head"], scores["SLM max-prob"], held, args.bootstrap, args.seed)

    # calibration: thresholds from the held-out greedy responses, realised activation on all held-out text
    greedy_scores = head_scores[greedy_mask].tolist()
    table = calibration_table(greedy_scores)
    write_calibration(head_path, table)
    disagree_greedy = (held.agree < 0.5).numpy()[greedy_mask].astype(int).tolist()
    (args.work / "token_scores.json").write_text(json.dumps(  # input of `hybrid-llm calibrate --scores`
        {"token_scores": {"candidate": greedy_scores, "label": disagree_greedy}}))
    realised = {f"{a:.0%}": {"threshold": th, "greedy": activation_at(greedy_scores, th),
                             "all_heldout": activation_at(head_scores.tolist(), th)}
                for a, th in zip(table["activation"], table["threshold"]) if a in ACTIVATIONS}
    # the other routers' thresholds for the same shares on the same text (for matched-activation comparisons)
    ent = held.slm_stats[:, ENTROPY].numpy()[greedy_mask]
    top1 = np.exp(held.slm_stats[:, TOP1].numpy()[greedy_mask])
    matched = {f"{a:.0%}": {"reward": float(np.quantile(greedy_scores, a)), "entropy": float(np.quantile(ent, 1 - a)),
                            "max_prob": float(np.quantile(top1, a))} for a in ACTIVATIONS}
    shipped = None
    if args.ship:
        from hybrid_llm_adapters.assets import DEFAULT_HEAD_FILE

        shipped = DEFAULT_HEAD_FILE
        shutil.copyfile(head_path, shipped)

    def describe(recs: list[dict], data: TokenSet) -> dict:
        return {"responses": len(recs), "prompts": len({r["prompt_id"] for r in recs}), "tokens": len(data),
                "disagreements": int((data.agree < 0.5).sum()),
                "disagreements_that_matter": int((data.matters & (data.agree < 0.5)).sum()),
                "by_source": dict(Counter(r["source"] for r in recs)),
                "by_variant": dict(Counter(r["variant"] for r in recs))}

    result = {
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "note": "2 shared CPU cores; times are wall-clock"},
        "models": {"slm": DEFAULT_SLM, "cloud": args.cloud_model},
        "data": {"labels_file": args.labels.name, "max_tokens": max(len(r["response_ids"]) for r in records),
                 "train": describe(train_recs, train), "heldout": describe(held_recs, held)},
        "feature_seconds": round(feature_s, 1), "fit_seconds": round(fit_s, 1), "fit": fit,
        "separate": separate,
        "per_token_heldout": per_token, "per_token_heldout_greedy": per_token_greedy,
        "head_minus_max_prob": {"bootstrap_resamples": args.bootstrap, "unit": "prompt", **boot},
        "step_cost": step_cost, "calibration": realised, "matched_thresholds_greedy_heldout": matched,
        "activation_at_threshold_0_greedy_heldout": activation_at(greedy_scores, 0.0), "shipped_head": str(shipped.name) if shipped else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    write_section("reward_model", render(result), DOCS_PAGE)


def render(r: dict) -> str:
    d, pt = r["data"], r["per_token_heldout"]
    rows = [[name, f"{m['auc']:.3f}", f"{m['auc_matters']:.3f}",
             *(f"{m['catch'][f'{a:.0%}']:.3f}" for a in ACTIVATIONS)] for name, m in pt.items()]
    table = markdown_table(["router score", "AUC (cloud disagrees)", "AUC (differences that matter)",
                            *(f"caught @{a:.0%} act." for a in ACTIVATIONS)], rows)
    b = r["head_minus_max_prob"]
    diff = markdown_table(["candidate head minus max-prob", "difference", "95 % interval (prompt bootstrap)"],
                          [[k, f"{v['diff']:+.4f}", f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"]
                           for k, v in b.items() if isinstance(v, dict)])
    cal = markdown_table(["target activation", "threshold", "on held-out greedy text", "on all held-out text"],
                         [[k, f"{v['threshold']:.3f}", f"{v['greedy']:.3f}", f"{v['all_heldout']:.3f}"]
                          for k, v in r["calibration"].items()])
    tr, he = d["train"], d["heldout"]
    head = (f"Labels: {tr['responses'] + he['responses']} SLM responses (greedy and sampled) to "
            f"{tr['prompts'] + he['prompts']} prompts, {tr['tokens'] + he['tokens']} tokens, "
            f"{tr['disagreements'] + he['disagreements']} where the cloud's argmax differs; held out by prompt: "
            f"{he['prompts']} prompts, {he['tokens']} tokens ({he['disagreements']} disagreements, "
            f"{he['disagreements_that_matter']} that matter). Sources: "
            f"{', '.join(f'{k} {v}' for k, v in Counter({**tr['by_source']}).items())} (train responses). "
            f"Head chosen by cross-validation: weight decay {r['fit']['weight_decay']:g}, pair weight "
            f"{r['fit']['pair_weight']:g}. SLM features: "
            + (f"{r['feature_seconds']:.0f} s" if r["feature_seconds"] > 30 else "read from the cache of an earlier run")
            + f", fit {r['fit_seconds']:.0f} s. "
            f"Scoring cost: one SLM step {r['step_cost']['median_step_s_plain'] * 1000:.1f} ms, with the head's "
            f"scoring {r['step_cost']['median_step_s_with_reward_head'] * 1000:.1f} ms "
            f"(x{r['step_cost']['reward_overhead_ratio']:.3f}).")
    return f"{head}\n\n{table}\n\n{diff}\n\nCalibration (stored in the head's manifest):\n\n{cal}"


if __name__ == "__main__":
    main()
