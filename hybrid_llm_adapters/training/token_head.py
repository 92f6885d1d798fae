"""Training the candidate reward head on token labels (see :mod:`.labels` and :mod:`.token_features`).

The head's score r is the log-odds that the cloud's argmax is the SLM's token. Loss, averaged over tokens:

- token term: binary cross-entropy of r(x, y_j) against ``agree`` (keep the SLM token vs ask the cloud); being
  a calibrated log-odds, one threshold means the same at every position;
- pair term (weight ``pair_weight``): the paper's -log sigmoid(r(x, chosen) - r(x, rejected)) on the
  single-token pairs, chosen = the cloud's argmax, rejected = the SLM's token, same prefix (only where they
  differ); both sides share the context hidden state, so this term trains what depends on the candidate;
- L2 on all weights (``weight_decay``).

Weight decay and pair weight are chosen by cross-validation grouped by prompt (no prompt is on both sides of
a fold), on the AUC for "the cloud disagrees"; the final head is refit on all training prompts.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..local.reward import STAT_NAMES, CandidateRewardHead, RewardManifest
from .labels import agreement, cloud_argmax
from .token_features import key


class HeadConfig(BaseModel):
    hidden_units: int = Field(32, ge=1, description="width of the MLP on the logit statistics")
    steps: int = Field(400, ge=1, description="full-batch Adam steps")
    lr: float = 0.02
    weight_decay_grid: tuple[float, ...] = (1e-3, 1e-2, 3e-2, 1e-1)
    pair_weight_grid: tuple[float, ...] = (0.0, 0.25)
    folds: int = Field(3, ge=2)
    seed: int = 0


@dataclass
class TokenSet:
    """Every labelled token of some records, as tensors."""

    slm_stats: torch.Tensor  # [n, S]
    alt_stats: torch.Tensor  # [n, S]
    context: torch.Tensor  # [n, H]
    fed: torch.Tensor  # [n, H]
    slm_token: torch.Tensor  # [n]
    alt_token: torch.Tensor  # [n]
    agree: torch.Tensor  # [n] float, 1 = the cloud's argmax is the SLM's token
    matters: torch.Tensor  # [n] bool: not in the cloud's top-2, or more than 1 nat below its top
    group: torch.Tensor  # [n] record-set prompt index
    greedy: torch.Tensor  # [n] bool: from a greedy response

    def __len__(self) -> int:
        return int(self.agree.numel())

    def subset(self, mask: torch.Tensor) -> TokenSet:
        return TokenSet(**{f: getattr(self, f)[mask] for f in self.__dataclass_fields__})


def token_set(records: list[dict[str, Any]], store: dict[str, torch.Tensor]) -> TokenSet:
    groups: dict[str, int] = {}
    parts: dict[str, list[Any]] = {f: [] for f in TokenSet.__dataclass_fields__}
    for r in records:
        k = key(r)
        n = len(r["response_ids"])
        alt = cloud_argmax(r)
        parts["slm_stats"].append(store[f"{k}/slm_stats"])
        parts["alt_stats"].append(store[f"{k}/alt_stats"])
        parts["context"].append(store[f"{k}/context"])
        parts["fed"].append(store[f"{k}/fed"])
        parts["slm_token"].append(torch.tensor(r["response_ids"]))
        parts["alt_token"].append(torch.tensor(alt))
        parts["agree"].append(torch.tensor(agreement(r), dtype=torch.float32))
        matters = []
        for tok, top_ids, top_lps, own in zip(r["response_ids"], r["cloud_top_ids"], r["cloud_top_logprobs"],
                                              r["cloud_logprob_of_slm"]):
            far = own is None or (bool(top_lps) and own < top_lps[0] - 1.0)
            matters.append(tok not in top_ids[:2] or far)
        parts["matters"].append(torch.tensor(matters, dtype=torch.bool))
        parts["group"].append(torch.full((n,), groups.setdefault(r["prompt_id"], len(groups))))
        parts["greedy"].append(torch.full((n,), r["variant"] == "greedy", dtype=torch.bool))
    return TokenSet(**{f: torch.cat(v) for f, v in parts.items()})


class _Head(torch.nn.Module):
    """The trainable form of :class:`CandidateRewardHead` (standardized inputs; folded on export)."""

    def __init__(self, data: TokenSet, embeddings: torch.Tensor, hidden_units: int):
        super().__init__()
        self.stat_mean = data.slm_stats.mean(0)
        self.stat_scale = data.slm_stats.std(0).clamp_min(1e-3)
        ctx = data.context.float()
        self.h_mean = ctx.mean(0)
        self.h_scale = ctx.std(0).clamp_min(1e-3)
        self.embeddings = embeddings
        self.e_scale = embeddings[data.slm_token].float().std(0).clamp_min(1e-3)
        s, h = len(STAT_NAMES), ctx.shape[1]
        self.mlp_in = torch.nn.Linear(s, hidden_units)
        self.mlp_out = torch.nn.Parameter(torch.zeros(hidden_units))
        self.w_h = torch.nn.Parameter(torch.zeros(h))
        self.w_e = torch.nn.Parameter(torch.zeros(h))
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, stats: torch.Tensor, ctx_z: torch.Tensor, emb_z: torch.Tensor) -> torch.Tensor:
        z = (stats - self.stat_mean) / self.stat_scale
        return torch.tanh(self.mlp_in(z)) @ self.mlp_out + ctx_z @ self.w_h + emb_z @ self.w_e + self.bias

    def context_z(self, context: torch.Tensor) -> torch.Tensor:
        return (context.float() - self.h_mean) / self.h_scale

    def embedding_z(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embeddings[tokens].float() / self.e_scale

    def score(self, data: TokenSet) -> torch.Tensor:
        with torch.no_grad():
            return self(data.slm_stats, self.context_z(data.context), self.embedding_z(data.slm_token))

    def export(self, manifest: RewardManifest) -> CandidateRewardHead:
        with torch.no_grad():
            w_h = self.w_h / self.h_scale
            token_bias = (self.embeddings.float() / self.e_scale) @ self.w_e
            tensors = {
                "stat_mean": self.stat_mean, "stat_scale": self.stat_scale,
                "mlp_in_weight": self.mlp_in.weight.detach(), "mlp_in_bias": self.mlp_in.bias.detach(),
                "mlp_out_weight": self.mlp_out.detach(), "hidden_weight": w_h,
                "token_bias": token_bias, "bias": (self.bias - self.h_mean @ w_h).reshape(()),
            }
        return CandidateRewardHead({k: v.clone() for k, v in tensors.items()}, manifest)


def _fit(data: TokenSet, embeddings: torch.Tensor, cfg: HeadConfig, weight_decay: float,
         pair_weight: float) -> _Head:
    torch.manual_seed(cfg.seed)
    head = _Head(data, embeddings, cfg.hidden_units)
    ctx_z = head.context_z(data.context)
    emb_z = head.embedding_z(data.slm_token)
    differ = data.agree < 0.5
    alt_stats, alt_ctx, alt_emb = data.alt_stats[differ], ctx_z[differ], head.embedding_z(data.alt_token[differ])
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        opt.zero_grad()
        r = head(data.slm_stats, ctx_z, emb_z)
        loss = F.binary_cross_entropy_with_logits(r, data.agree)
        if pair_weight and differ.any():
            r_alt = head(alt_stats, alt_ctx, alt_emb)
            loss = loss + pair_weight * F.softplus(-(r_alt - r[differ])).mean()
        params = [head.mlp_in.weight, head.mlp_out, head.w_h, head.w_e]
        loss = loss + weight_decay * sum((p**2).sum() for p in params)
        loss.backward()
        opt.step()
    return head


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - counts + (counts + 1) / 2)[inverse]  # average ranks, 1-based
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_candidate_head(train: TokenSet, embeddings: torch.Tensor, manifest: RewardManifest,
                       cfg: HeadConfig | None = None, progress: bool = True
                       ) -> tuple[CandidateRewardHead, dict[str, Any]]:
    """Cross-validate (weight decay, pair weight) grouped by prompt, then refit on everything."""
    from tqdm.auto import tqdm

    cfg = cfg or HeadConfig()
    prompts = sorted(set(train.group.tolist()))
    random.Random(cfg.seed).shuffle(prompts)
    fold_of = {g: i % cfg.folds for i, g in enumerate(prompts)}
    fold = torch.tensor([fold_of[int(g)] for g in train.group])
    grid = list(itertools.product(cfg.weight_decay_grid, cfg.pair_weight_grid))
    cv: dict[str, float] = {}
    with tqdm(total=len(grid) * cfg.folds, desc="reward head CV", disable=not progress) as bar:
        for wd, pw in grid:
            aucs = []
            for f in range(cfg.folds):
                fit, val = train.subset(fold != f), train.subset(fold == f)
                head = _fit(fit, embeddings, cfg, wd, pw)
                r = head.score(val).numpy()
                aucs.append(roc_auc(-r, (val.agree < 0.5).numpy()))
                bar.update(1)
            cv[f"wd={wd:g},pair={pw:g}"] = float(np.mean(aucs))
    best = max(grid, key=lambda g: cv[f"wd={g[0]:g},pair={g[1]:g}"])
    final = _fit(train, embeddings, cfg, *best)
    manifest = manifest.model_copy(update={"weight_decay": best[0], "pair_weight": best[1],
                                           "train_tokens": len(train), "stats": list(STAT_NAMES)})
    return final.export(manifest), {"cv_auc": cv, "weight_decay": best[0], "pair_weight": best[1]}
