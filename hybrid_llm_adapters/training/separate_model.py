"""The reward paper's separate reward model, trained on the same token labels as the candidate head.

An ``AutoModelForSequenceClassification`` (num_labels=1) on the 0.5B of the family scores every position;
its score of x + y[:j+1] (the candidate fed, as :class:`~hybrid_llm_adapters.local.reward.SeparateRewardModel`
computes it at decode time) is trained as the log-odds that the cloud agrees with y[j] (binary cross-entropy,
the token term of the candidate head; the pair term would need a second forward per token with the cloud's
token fed, which this CPU cannot afford). What fits here: the top ``trainable_layers`` decoder layers, the final
norm and the score head are tuned; the frozen lower layers run once (their output is cached as ``mid``
features by :func:`~.token_features.compute_token_features`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ..local.reward import RewardManifest
from .labels import agreement
from .token_features import key


class SeparateConfig(BaseModel):
    trainable_layers: int = Field(2, ge=1)
    epochs: int = Field(1, ge=1)
    lr: float = 2e-5
    seed: int = 0


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


def response_scores(top: TopLayers, store: dict[str, torch.Tensor], record: dict[str, Any], k: int) -> torch.Tensor:
    """Scores of x + y[:j+1] for every response token j of one record."""
    mid = store[f"{key(record)}/mid{k}"].float()
    p = len(record["prompt_ids"])
    return top(mid[None])[0, p : p + len(record["response_ids"])]


def train_separate(records: list[dict[str, Any]], store: dict[str, torch.Tensor], seq_model: Any,
                   cfg: SeparateConfig, progress: bool = True) -> tuple[TopLayers, dict[str, Any]]:
    from tqdm.auto import tqdm

    k = cfg.trainable_layers
    torch.manual_seed(cfg.seed)
    for p in seq_model.parameters():
        p.requires_grad_(False)
    top = TopLayers(seq_model, k).float()
    for p in top.parameters():
        p.requires_grad_(True)
    top.rotary.requires_grad_(False)
    params = [p for p in top.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([
        {"params": [p for n, p in top.named_parameters() if p.requires_grad and not n.startswith("score")],
         "lr": cfg.lr},
        {"params": list(top.score.parameters()), "lr": cfg.lr * 50},
    ], weight_decay=0.0)
    order = list(range(len(records)))
    rng = random.Random(cfg.seed)
    losses: list[float] = []
    t0 = time.monotonic()
    top.train()
    with tqdm(total=cfg.epochs * len(order), desc="train separate RM", unit="resp", disable=not progress) as bar:
        for _ in range(cfg.epochs):
            rng.shuffle(order)
            for i in order:
                loss = F.binary_cross_entropy_with_logits(response_scores(top, store, records[i], k),
                                                          torch.tensor(agreement(records[i]), dtype=torch.float32))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    top.eval()
    return top, {"train_responses": len(records), "epochs": cfg.epochs, "trainable_layers": k,
                 "train_seconds": round(time.monotonic() - t0, 1),
                 "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


def save_separate(seq_model: Any, tokenizer: Any, out: str | Path, manifest: RewardManifest) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seq_model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "reward_manifest.json").write_text(manifest.model_dump_json(indent=2))
