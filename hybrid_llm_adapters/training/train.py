"""Reward-model training on chunk pairs, loss -log sigmoid(r(x, y_w) - r(x, y_l)).

Two kinds, both scoring every token position (a chunk's reward is the score at its last token):

- ``trunk``: a linear head w . h + b on the frozen SLM's final hidden state. Features are computed once
  (:mod:`.features`); training is a full-batch logistic regression on feature differences (the bias cancels
  in a pairwise loss; it is set afterwards so that the median token of the training responses scores 0).
- ``separate``: the paper's separate reward model, an ``AutoModelForSequenceClassification`` (num_labels=1)
  on the 0.5B of the family. What fits on this CPU: its top ``trainable_layers`` decoder layers, the final
  norm and the score head are fine-tuned; the frozen lower layers are run once (their output is cached as
  ``mid`` features). The score head starts from the trunk head when one is given (it is the same kind of
  head on the same final hidden state), so the separate model starts where the trunk head ends.

Pairwise accuracy = share of held-out chunks whose chosen side scores above the rejected side.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from ..config import DEFAULT_CLOUD_MODEL, DEFAULT_SLM
from ..local.reward import LinearRewardHead, RewardManifest, tokenizer_fingerprint
from .chunks import Chunk, make_chunks
from .features import compute_features
from .synth import read_pairs


class TrainConfig(BaseModel):
    kind: Literal["trunk", "separate"] = "trunk"
    epochs: int | None = None  # trunk: full-batch steps = epochs * 100; separate: passes over the pairs
    lr: float | None = None
    weight_decay: float | None = None  # trunk: None = chosen by 4-fold cross-validation grouped by prompt
    weight_decay_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 3e-1, 1.0)
    seed: int = 0
    chunks_per_pair: int = 8
    trainable_layers: int = 2
    max_train_pairs: int | None = None

    def resolved(self) -> tuple[int, float]:
        if self.kind == "trunk":
            return self.epochs or 3, self.lr or 3e-3
        return self.epochs or 1, self.lr or 2e-5


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    if chosen.numel() == 0:
        return float("nan")
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


# ----------------------------------------------------------------------------------------- trunk head


def chunk_features(store: dict[str, torch.Tensor], records: list[dict[str, Any]], chunks: list[Chunk]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) last-token features of each chunk: the response's hidden state at index L-1."""
    hc = torch.stack([store[f"{records[c.pair]['prompt_id']}/cloud/last"][c.length - 1] for c in chunks])
    hs = torch.stack([store[f"{records[c.pair]['prompt_id']}/slm/last"][c.length - 1] for c in chunks])
    return hc.float(), hs.float()


def fit_linear_head(hc: torch.Tensor, hs: torch.Tensor, steps: int, lr: float, weight_decay: float,
                    seed: int, progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Full-batch Adam on softplus(-(hc - hs) . w) + wd |w|^2; features standardized for conditioning
    (the returned w acts on raw features)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    diff = hc - hs
    scale = torch.cat([hc, hs]).std(0).clamp_min(1e-3)
    z = diff / scale
    w = torch.zeros(z.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc="train trunk head", disable=not progress):
        opt.zero_grad()
        loss = F.softplus(-(z @ w)).mean() + weight_decay * (w * w).sum()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return (w.detach() / scale), losses


def select_weight_decay(records: list[dict[str, Any]], store: dict[str, torch.Tensor], cfg: TrainConfig,
                        folds: int = 4) -> tuple[float, dict[str, float]]:
    """L2 strength by k-fold cross-validation on the TRAIN pairs, grouped by prompt (held-out untouched).
    896 features against ~1k strongly correlated chunks overfit badly without it."""
    epochs, lr = cfg.resolved()
    idx = list(range(len(records)))
    random.Random(cfg.seed).shuffle(idx)
    parts = [set(idx[i::folds]) for i in range(folds)]
    cv: dict[str, float] = {}
    for wd in cfg.weight_decay_grid:
        accs = []
        for part in parts:
            a = [records[i] for i in idx if i not in part]
            b = [records[i] for i in idx if i in part]
            ca = make_chunks([(r["cloud_ids"], r["slm_ids"]) for r in a], cfg.chunks_per_pair, cfg.seed)
            cb = make_chunks([(r["cloud_ids"], r["slm_ids"]) for r in b], cfg.chunks_per_pair, cfg.seed + 1)
            if not ca or not cb:
                continue
            hc, hs = chunk_features(store, a, ca)
            w, _ = fit_linear_head(hc, hs, epochs * 100, lr, wd, cfg.seed, progress=False)
            vc, vs = chunk_features(store, b, cb)
            accs.append(pairwise_accuracy(vc @ w, vs @ w))
        cv[str(wd)] = sum(accs) / len(accs) if accs else float("nan")
    best = max(cfg.weight_decay_grid, key=lambda wd: (cv[str(wd)], wd))
    return best, cv


def train_trunk(records: list[dict[str, Any]], heldout: list[dict[str, Any]], store: dict[str, torch.Tensor],
                cfg: TrainConfig, progress: bool = True) -> tuple[torch.Tensor, float, dict[str, Any]]:
    epochs, lr = cfg.resolved()
    t0 = time.monotonic()
    cv: dict[str, float] = {}
    wd = cfg.weight_decay
    if wd is None:
        wd, cv = select_weight_decay(records, store, cfg) if len(records) >= 8 else (1e-1, {})
    tr_chunks = make_chunks([(r["cloud_ids"], r["slm_ids"]) for r in records], cfg.chunks_per_pair, cfg.seed)
    ho_chunks = make_chunks([(r["cloud_ids"], r["slm_ids"]) for r in heldout], cfg.chunks_per_pair, cfg.seed + 1)
    hc, hs = chunk_features(store, records, tr_chunks)
    w, losses = fit_linear_head(hc, hs, epochs * 100, lr, wd, cfg.seed, progress)
    seconds = time.monotonic() - t0
    # centre: the median score of all training-response tokens becomes 0
    all_tokens = torch.cat([store[f"{r['prompt_id']}/{role}/last"].float() for r in records
                            for role in ("cloud", "slm")])
    bias = -float((all_tokens @ w).median())
    report: dict[str, Any] = {
        "train_pairs": len(records), "heldout_pairs": len(heldout),
        "train_chunks": len(tr_chunks), "heldout_chunks": len(ho_chunks),
        "train_seconds": seconds, "final_loss": losses[-1], "weight_decay": wd,
        "cv_pairwise_accuracy_by_weight_decay": cv,
        "train_pairwise_accuracy": pairwise_accuracy(hc @ w, hs @ w),
    }
    if ho_chunks:
        vc, vs = chunk_features(store, heldout, ho_chunks)
        report["heldout_pairwise_accuracy"] = pairwise_accuracy(vc @ w, vs @ w)
        report["heldout_loss"] = float(F.softplus(-((vc - vs) @ w)).mean())
    return w, bias, report


# -------------------------------------------------------------------------------- separate reward model


class TopLayers(torch.nn.Module):
    """The top k decoder layers + final norm + score head of a sequence-classification Qwen2-style LM."""

    def __init__(self, seq_model: Any, k: int):
        super().__init__()
        base = seq_model.model
        self.layers = torch.nn.ModuleList(base.layers[-k:])
        self.norm = base.norm
        self.rotary = base.rotary_emb
        self.score = seq_model.score

    def forward(self, mid: torch.Tensor) -> torch.Tensor:
        """mid: [B, T, H] right-padded inputs of the top layers -> per-position scores [B, T]."""
        pos = torch.arange(mid.shape[1]).unsqueeze(0).expand(mid.shape[0], -1)
        pe = self.rotary(mid, pos)
        h = mid
        for layer in self.layers:
            # no mask + causal attention: right padding never reaches the real positions before it
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
        return self.score(self.norm(h)).squeeze(-1)


def load_seq_model(slm_dir: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(slm_dir), num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    return model


def separate_scores(top: TopLayers, store: dict[str, torch.Tensor], rec: dict[str, Any], k: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response-position scores of (cloud, slm) responses of one record (one batched pass)."""
    mc = store[f"{rec['prompt_id']}/cloud/mid{k}"]
    ms = store[f"{rec['prompt_id']}/slm/mid{k}"]
    t = max(len(mc), len(ms))
    batch = torch.zeros(2, t, mc.shape[1])
    batch[0, : len(mc)] = mc.float()
    batch[1, : len(ms)] = ms.float()
    scores = top(batch)
    n_p = len(rec["prompt_ids"])
    return scores[0, n_p : len(mc)], scores[1, n_p : len(ms)]


def _chunk_index(chunks: list[Chunk]) -> dict[int, list[int]]:
    by_pair: dict[int, list[int]] = {}
    for c in chunks:
        by_pair.setdefault(c.pair, []).append(c.length)
    return by_pair


def train_separate(records: list[dict[str, Any]], heldout: list[dict[str, Any]], store: dict[str, torch.Tensor],
                   seq_model: Any, cfg: TrainConfig, init_head: torch.Tensor | None = None,
                   progress: bool = True) -> dict[str, Any]:
    from tqdm.auto import tqdm

    epochs, lr = cfg.resolved()
    k = cfg.trainable_layers
    torch.manual_seed(cfg.seed)
    for p in seq_model.parameters():
        p.requires_grad_(False)
    top = TopLayers(seq_model, k).float()
    if init_head is not None:
        with torch.no_grad():
            top.score.weight.copy_(init_head.reshape(1, -1))
    for p in top.parameters():
        p.requires_grad_(True)
    top.rotary.requires_grad_(False)
    params = [p for p in top.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([
        {"params": [p for n, p in top.named_parameters() if p.requires_grad and not n.startswith("score")],
         "lr": lr},
        {"params": list(top.score.parameters()), "lr": lr * 10},
    ], weight_decay=0.0)
    tr = _chunk_index(make_chunks([(r["cloud_ids"], r["slm_ids"]) for r in records], cfg.chunks_per_pair,
                                  cfg.seed))
    ho = _chunk_index(make_chunks([(r["cloud_ids"], r["slm_ids"]) for r in heldout], cfg.chunks_per_pair,
                                  cfg.seed + 1))
    order = [i for i in range(len(records)) if i in tr]
    rng = random.Random(cfg.seed)
    t0 = time.monotonic()
    losses: list[float] = []
    top.train()
    total = epochs * len(order)
    with tqdm(total=total, desc="train separate RM", unit="pair", disable=not progress) as bar:
        for _ in range(epochs):
            rng.shuffle(order)
            for i in order:
                sc, ss = separate_scores(top, store, records[i], k)
                idx = torch.tensor(tr[i]) - 1
                loss = F.softplus(-(sc[idx] - ss[idx])).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(float(loss))
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    seconds = time.monotonic() - t0
    top.eval()
    report: dict[str, Any] = {"train_pairs": len(records), "heldout_pairs": len(heldout),
                              "train_chunks": sum(map(len, tr.values())),
                              "heldout_chunks": sum(map(len, ho.values())),
                              "train_seconds": seconds, "steps": len(losses),
                              "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}
    with torch.no_grad():
        ch, rj = [], []
        for i, lengths in tqdm(ho.items(), desc="held-out pairs", disable=not progress):
            sc, ss = separate_scores(top, store, heldout[i], k)
            idx = torch.tensor(lengths) - 1
            ch.append(sc[idx])
            rj.append(ss[idx])
        if ch:
            report["heldout_pairwise_accuracy"] = pairwise_accuracy(torch.cat(ch), torch.cat(rj))
    return report


# ----------------------------------------------------------------------------------------------- driver


def manifest_for(kind: str, slm_name: str, cloud_name: str, tokenizer: Any, **extra: Any) -> RewardManifest:
    return RewardManifest(kind=kind, slm=slm_name, cloud=cloud_name,
                          tokenizer_sha256=tokenizer_fingerprint(tokenizer), **extra)


def run_training(pairs: str | Path, out: str | Path, cfg: TrainConfig, slm: str = DEFAULT_SLM,
                 cloud_name: str = DEFAULT_CLOUD_MODEL, feature_cache: str | Path | None = None,
                 init_head: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Everything ``hybrid-llm train-reward`` does: features (cached), chunks, training, saving."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_model

    torch.manual_seed(cfg.seed)
    slm_dir = resolve_model(slm, progress=progress)
    slm_name = Path(slm).name if Path(slm).exists() else slm
    tok = AutoTokenizer.from_pretrained(str(slm_dir))
    train_recs = read_pairs(pairs, "train")
    if cfg.max_train_pairs:
        train_recs = train_recs[: cfg.max_train_pairs]
    held = read_pairs(pairs, "heldout")
    mid = cfg.trainable_layers if cfg.kind == "separate" else 0
    t0 = time.monotonic()
    lm = AutoModelForCausalLM.from_pretrained(str(slm_dir), dtype=torch.bfloat16)
    lm.eval()
    store = compute_features(lm, train_recs + held, feature_cache, mid_layers=mid, progress=progress)
    feature_seconds = time.monotonic() - t0
    del lm
    out = Path(out)
    base = {"kind": cfg.kind, "pairs_file": str(pairs), "feature_seconds": feature_seconds,
            "config": cfg.model_dump()}
    if cfg.kind == "trunk":
        w, bias, report = train_trunk(train_recs, held, store, cfg, progress)
        manifest = manifest_for("linear", slm_name, cloud_name, tok, train=json.dumps(
            {k: v for k, v in report.items() if isinstance(v, (int, float))}))
        out.parent.mkdir(parents=True, exist_ok=True)
        LinearRewardHead(w, torch.tensor(bias), manifest).save(out)
        return {**base, **report, "out": str(out)}
    head = None
    if init_head is not None:
        head = LinearRewardHead.load(init_head, tok).weight
    seq = load_seq_model(slm_dir)
    report = train_separate(train_recs, held, store, seq, cfg, head, progress)
    save_separate(seq, tok, out, manifest_for("separate", slm_name, cloud_name, tok,
                                               trainable_layers=cfg.trainable_layers))
    return {**base, **report, "out": str(out)}


def save_separate(seq_model: Any, tokenizer: Any, out: str | Path, manifest: RewardManifest) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seq_model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "reward_manifest.json").write_text(manifest.model_dump_json(indent=2))
