"""Per-token check of a reward scorer on held-out prompts.

Along the cloud's greedy output g for a prompt x, at every step t the SLM proposes its greedy candidate
a_t = argmax p_SLM(. | x, g[:t]). The label is 1 where a_t != g_t (the token the cloud must supply). Each
router's score of that candidate is recorded exactly as the engine would compute it:

- trunk reward: w . h + b on the SLM's final hidden state after feeding a_t (a_t == g_t: the hidden state
  of the same full pass; otherwise one extra SLM step on a copy of the KV cache cropped to x + g[:t]);
- separate reward: the separate model's score of x + g[:t] + [a_t] (its frozen lower layers are the SLM's,
  so their outputs are shared; its own top layers run on them);
- entropy and max-probability of p_SLM(. | x, g[:t]).

ROC AUC is computed for "this token needs the cloud" with higher = more likely: -reward, entropy, -max_prob.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from .features import capture_layer_input


def roc_auc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random positive outscores a random negative (ties count half); rank formula."""
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    pos_rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def catch_rate(need_cloud_scores: list[float], labels: list[int], activation: float) -> float:
    """Share of label-1 tokens among the ``activation`` fraction with the highest scores."""
    n = len(need_cloud_scores)
    k = round(activation * n)
    top = sorted(range(n), key=lambda i: -need_cloud_scores[i])[:k]
    pos = sum(labels)
    return sum(labels[i] for i in top) / pos if pos else float("nan")


def token_scores(lm: Any, records: list[dict[str, Any]], greedy: dict[str, list[int]],
                 head: Any | None = None, top: Any | None = None, mid_layers: int = 0,
                 progress: bool = True) -> dict[str, list[float]]:
    """Per-token label, entropy, max-prob and reward scores along the cloud's greedy outputs."""
    from tqdm.auto import tqdm

    out: dict[str, list[float]] = {"label": [], "entropy": [], "max_prob": [], "trunk": [], "separate": [],
                                   "prompt": [], "position": []}
    n_layers = lm.config.num_hidden_layers
    mid_k = mid_layers if top is not None else 0
    for rec_i, rec in enumerate(tqdm(records, desc="per-token scores", disable=not progress)):
        g = greedy[rec["prompt_id"]]
        if not g:
            continue
        x = rec["prompt_ids"]
        n_p = len(x)
        ids = torch.tensor([x + g])
        from transformers import DynamicCache

        cache = DynamicCache()
        with (capture_layer_input(lm, n_layers - mid_k) if mid_k else _null()) as box, torch.inference_mode():
            o = lm(input_ids=ids, cache=cache, use_cache=True, output_hidden_states=True,
                   logits_to_keep=len(g) + 1)
        logits = o.logits[0, :-1].float()  # predicts g[0..]
        last = o.hidden_states[-1][0]
        mid = box[0][0] if mid_k else None
        logp = torch.log_softmax(logits, -1)
        ent = -(logp.exp() * logp).sum(-1)
        maxp = logp.max(-1).values.exp()
        cand = logits.argmax(-1)
        sep_full = None
        if top is not None:
            with torch.no_grad():
                sep_full = top(mid.float().unsqueeze(0))[0]
        for t in range(len(g)):
            a = int(cand[t])
            label = int(a != g[t])
            pos = n_p + t
            if not label:
                h = last[pos]
                sep = float(sep_full[pos]) if sep_full is not None else float("nan")
            else:
                c = copy.deepcopy(cache)
                c.crop(-(n_p + len(g) - pos))  # keep x + g[:t]
                with (capture_layer_input(lm, n_layers - mid_k) if mid_k else _null()) as box2, \
                        torch.inference_mode():
                    o2 = lm(input_ids=torch.tensor([[a]]), cache=c, use_cache=True,
                            output_hidden_states=True, logits_to_keep=1)
                h = o2.hidden_states[-1][0, -1]
                sep = float("nan")
                if top is not None:
                    seq = torch.cat([mid[:pos], box2[0][0]]).float().unsqueeze(0)
                    with torch.no_grad():
                        sep = float(top(seq)[0, -1])
            out["label"].append(label)
            out["entropy"].append(float(ent[t]))
            out["max_prob"].append(float(maxp[t]))
            out["trunk"].append(head.score_hidden(h) if head is not None else float("nan"))
            out["separate"].append(sep)
            out["prompt"].append(rec_i)
            out["position"].append(t)
    return out


class _null:
    def __enter__(self) -> list[Any]:
        return []

    def __exit__(self, *exc: object) -> None:
        return None


def summarize(scores: dict[str, list[float]], activations: tuple[float, ...] = (0.1, 0.2, 0.3)) -> dict[str, Any]:
    """AUCs and catch rates (share of mismatch tokens routed to the cloud at a given activation)."""
    labels = [int(v) for v in scores["label"]]
    routers = {"trunk_reward": [-s for s in scores["trunk"]], "entropy": scores["entropy"],
               "max_prob": [-s for s in scores["max_prob"]]}
    if scores.get("separate") and not any(math.isnan(s) for s in scores["separate"]):
        routers["separate_reward"] = [-s for s in scores["separate"]]
    out: dict[str, Any] = {"tokens": len(labels), "mismatch_tokens": sum(labels),
                           "mismatch_rate": sum(labels) / max(1, len(labels)), "auc": {}, "catch_rate": {}}
    for name, s in routers.items():
        if any(math.isnan(v) for v in s):
            continue
        out["auc"][name] = roc_auc(s, labels)
        out["catch_rate"][name] = {f"{a:.0%}": catch_rate(s, labels, a) for a in activations}
    return out
