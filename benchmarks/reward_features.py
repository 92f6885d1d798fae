"""Which SLM-side signals predict where the cloud disagrees? A feature ablation of the candidate head.

Same labels, split and held-out tokens as benchmarks/reward_model.py. Each variant is the head's form (an MLP
on standardized features plus linear terms), fit alike: token term only, weight decay 0.01 (the shipped head's
cross-validated choice), 400 full-batch Adam steps. Variants add one signal at a time:

- logit stats: the candidate's statistics under the SLM's logits (what max-probability and entropy read);
- token embedding: the candidate's embedding (a learned bias per vocabulary entry);
- last hidden state: the SLM's final state at the producing position (the shipped head);
- layer-12 hidden state: the input of the middle decoder layer at that position;
- history: the previous two tokens' stats, the mean entropy of the last 8 tokens and the position;
- lookahead: the uncertainty at the next position, after the candidate is fed (routing would wait one token).

    python benchmarks/reward_features.py --labels benchmarks/results/reward/labels.jsonl.gz --work .cache/reward

Writes benchmarks/results/reward_features.json and its table in docs/reward.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from readme_table import markdown_table, write_section
from reward_model import DOCS_PAGE, ENTROPY, TOP1, paired_bootstrap

from hybrid_llm_adapters.local.reward import STAT_NAMES
from hybrid_llm_adapters.models import DEFAULT_SLM
from hybrid_llm_adapters.training.token_features import key, load_labelled
from hybrid_llm_adapters.training.token_head import roc_auc, token_set

TOP_LAYERS = 12  # token_features keeps the input of the top 12 of 24 decoder layers: the middle layer
WEIGHT_DECAY, STEPS, LR, UNITS = 0.01, 400, 0.02, 32
VARIANTS = {  # name: (extra MLP inputs, linear terms)
    "logit stats": ((), ()),
    "+ token embedding": ((), ("embedding",)),
    "+ last hidden state (shipped form)": ((), ("embedding", "last")),
    "+ layer-12 hidden state": ((), ("embedding", "last", "mid")),
    "logit stats + token embedding + history": (("history",), ("embedding",)),
    "... + lookahead (one-token delay)": (("history", "lookahead"), ("embedding",)),
}
POSITION_FREE = [i for i, n in enumerate(STAT_NAMES) if not n.startswith(("candidate", "gap"))]


def sequence_features(records: list[dict], store: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per token: the response's own stats before it (history) and at the next position (lookahead), and the
    layer-12 input at its producing position (mid)."""
    history, lookahead, mid = [], [], []
    for r in records:
        s = store[f"{key(r)}/slm_stats"].float()
        n = len(s)
        pad = torch.zeros(2, s.shape[1])
        prev1, prev2 = torch.cat([pad[:1], s[:-1]]), torch.cat([pad, s[:-2]])[:n]
        csum = torch.cat([torch.zeros(1), torch.cumsum(s[:, ENTROPY], 0)])
        idx = torch.arange(n)
        lo = (idx - 8).clamp_min(0)
        recent = (csum[idx] - csum[lo]) / (idx - lo).clamp_min(1)
        history.append(torch.cat([prev1[:, :5], prev2[:, :5], recent[:, None], torch.log1p(idx.float())[:, None]], 1))
        lookahead.append(torch.cat([s[1:, POSITION_FREE], torch.zeros(1, len(POSITION_FREE))]))
        p = len(r["prompt_ids"])
        mid.append(store[f"{key(r)}/mid{TOP_LAYERS}"][p - 1 : p - 1 + n].float())
    return {"history": torch.cat(history), "lookahead": torch.cat(lookahead), "mid": torch.cat(mid)}


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, scale = train.mean(0), train.std(0).clamp_min(1e-3)
    return [(x - mean) / scale for x in (train, *others)]


def fit_and_score(mlp_in: list[torch.Tensor], linear: list[torch.Tensor], agree: torch.Tensor,
                  held_mlp: list[torch.Tensor], held_linear: list[torch.Tensor]) -> np.ndarray:
    """Fit on the training tokens; need-cloud scores (higher = ask the cloud) on the held-out tokens."""
    torch.manual_seed(0)
    x = torch.cat(mlp_in, 1)
    layer = torch.nn.Linear(x.shape[1], UNITS)
    out = torch.nn.Parameter(torch.zeros(UNITS))
    weights = [torch.nn.Parameter(torch.zeros(t.shape[1])) for t in linear]
    bias = torch.nn.Parameter(torch.zeros(()))

    def score(x_: torch.Tensor, lin: list[torch.Tensor]) -> torch.Tensor:
        return torch.tanh(layer(x_)) @ out + sum((t @ w for t, w in zip(lin, weights)), torch.zeros(())) + bias

    opt = torch.optim.Adam([*layer.parameters(), out, *weights, bias], lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(score(x, linear), agree)
        loss = loss + WEIGHT_DECAY * sum((p**2).sum() for p in [layer.weight, out, *weights])
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (-score(torch.cat(held_mlp, 1), held_linear)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, required=True, help="JSONL (or .gz) written by `hybrid-llm label`")
    ap.add_argument("--work", type=Path, required=True, help="feature cache")
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--render-only", action="store_true", help="rewrite the docs table from the JSON")
    args = ap.parse_args()
    out_json = HERE / "results" / "reward_features.json"
    if args.render_only:
        write_section("reward_features", render(json.loads(out_json.read_text())), DOCS_PAGE)
        return
    start = time.perf_counter()
    lm, _, records, store = load_labelled(args.labels, args.work / f"features_mid{TOP_LAYERS}.safetensors", DEFAULT_SLM,
                                          mid_layers=TOP_LAYERS)
    feature_s = time.perf_counter() - start
    embeddings = lm.get_input_embeddings().weight.detach().float()
    split = {s: [r for r in records if r["split"] == s] for s in ("train", "heldout")}
    train, held = (token_set(split[s], store) for s in ("train", "heldout"))
    seq = {s: sequence_features(split[s], store) for s in split}
    blocks = {"stats": (train.slm_stats.float(), held.slm_stats.float()),
              "embedding": (embeddings[train.slm_token], embeddings[held.slm_token]),
              "last": (train.context.float(), held.context.float()),
              **{k: (seq["train"][k], seq["heldout"][k]) for k in ("history", "lookahead", "mid")}}
    z = {k: standardize(*v) for k, v in blocks.items()}
    disagree = (held.agree < 0.5).numpy()
    max_prob = -held.slm_stats[:, TOP1].numpy()
    rows: dict[str, dict] = {"SLM max-prob": {"auc": roc_auc(max_prob, disagree)}}
    from tqdm.auto import tqdm

    for name, (mlp_extra, linear) in tqdm(VARIANTS.items(), desc="feature variants"):
        scores = fit_and_score([z["stats"][0], *(z[k][0] for k in mlp_extra)], [z[k][0] for k in linear],
                               train.agree, [z["stats"][1], *(z[k][1] for k in mlp_extra)], [z[k][1] for k in linear])
        boot = paired_bootstrap(scores, max_prob, held, args.bootstrap, seed=0)
        rows[name] = {"auc": roc_auc(scores, disagree), "minus_max_prob": boot["auc"],
                      "catch_minus_max_prob": {k: v for k, v in boot.items() if k != "auc"}}
    result = {"labels": str(args.labels.name), "train_tokens": len(train), "heldout_tokens": len(held),
              "heldout_disagreements": int(disagree.sum()), "mid_layer_input_of_top": TOP_LAYERS,
              "fit": {"weight_decay": WEIGHT_DECAY, "steps": STEPS, "lr": LR, "mlp_units": UNITS},
              "bootstrap_resamples": args.bootstrap, "feature_seconds": round(feature_s, 1), "variants": rows}
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    write_section("reward_features", render(result), DOCS_PAGE)
    print(render(result))


def render(r: dict) -> str:
    table = []
    for name, v in r["variants"].items():
        if "minus_max_prob" not in v:
            table.append([name, f"{v['auc']:.4f}", "-", "-", "-"])
            continue
        d, c = v["minus_max_prob"], v["catch_minus_max_prob"]
        table.append([name, f"{v['auc']:.4f}", f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]",
                      f"{c['catch 10%']['diff']:+.3f}", f"{c['catch 20%']['diff']:+.3f}"])
    head = (f"Held-out: {r['heldout_tokens']} tokens ({r['heldout_disagreements']} disagreements); trained on "
            f"{r['train_tokens']}. Each variant fit alike (weight decay {r['fit']['weight_decay']}, "
            f"{r['fit']['steps']} steps); intervals: {r['bootstrap_resamples']} prompt-bootstrap resamples.\n\n")
    return head + markdown_table(["score", "AUC (cloud disagrees)", "minus max-prob [95 %]", "caught @10% vs max-prob",
                                  "caught @20% vs max-prob"], table)


if __name__ == "__main__":
    main()
