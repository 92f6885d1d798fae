"""Reward scorers: how well an SLM token agrees with the cloud LLM (higher = keep it local).

Three kinds:
- ``CandidateRewardHead`` (the default): scores the candidate where it is chosen, from what the decoder already
  has at that step: the SLM's logits there (the candidate's log-probability and rank, entropy, top-2 margin,
  the sorted top-k), the hidden state of that position, and the candidate's embedding. No extra forward: the
  score costs one log-softmax, a top-k and a few dot products. Trained on token labels by teacher forcing
  (:mod:`hybrid_llm_adapters.training.labels`); its score is the log-odds that the cloud keeps the SLM's token.
- ``LinearRewardHead``: a linear head on the SLM's own last hidden state. The hidden state of a candidate
  comes out of the forward pass that also yields the next logits, so scoring costs one dot product.
- ``SeparateRewardModel``: the paper's choice, a sequence-classification LM with its own KV cache
  (a second forward per token).

Both carry a manifest naming the SLM, the cloud model and a tokenizer fingerprint; loading refuses a
mismatched pair.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from ..errors import ModelMismatchError


class RewardManifest(BaseModel):
    """What a reward scorer was trained for."""

    model_config = ConfigDict(extra="allow")

    kind: str
    slm: str
    cloud: str
    tokenizer_sha256: str


def tokenizer_fingerprint(tokenizer: object) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id), stable across save/load."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])  # type: ignore[attr-defined]
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def check_manifest(manifest: RewardManifest, tokenizer: object, where: str) -> None:
    actual = tokenizer_fingerprint(tokenizer)
    if manifest.tokenizer_sha256 != actual:
        raise ModelMismatchError(
            f"reward scorer {where} was trained for SLM {manifest.slm!r} / cloud {manifest.cloud!r} with "
            f"tokenizer {manifest.tokenizer_sha256[:12]}, but the loaded SLM's tokenizer is {actual[:12]}. "
            "Use a reward scorer trained for this model pair (`hybrid-llm train-reward`)."
        )


TOP_K_STATS = 8
STAT_NAMES = ("candidate_logprob", "candidate_log_rank", "gap_to_top", "entropy", "top2_margin",
              *(f"top{i + 1}_logprob" for i in range(TOP_K_STATS)))


def candidate_stats(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Uncertainty features of each candidate under the SLM's logits at its position.

    ``logits``: [..., vocab] raw next-token logits; ``candidates``: [...] token ids. Returns [..., len(STAT_NAMES)]
    float32. One function serves decoding and training, so a head scores a token alike in both.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    cand = logp.gather(-1, candidates.long().unsqueeze(-1)).squeeze(-1)
    rank = (logp > cand.unsqueeze(-1)).sum(-1).float()
    top = logp.topk(TOP_K_STATS, dim=-1).values
    entropy = -(logp.exp() * logp).sum(-1)
    return torch.stack([cand, torch.log1p(rank), top[..., 0] - cand, entropy, top[..., 0] - top[..., 1],
                        *top.unbind(-1)], dim=-1)


class CandidateRewardHead:
    """score = mlp(standardized stats) + w . h_ctx + token_bias[candidate] + b.

    ``h_ctx`` is the SLM's final hidden state of the position whose logits chose the candidate (the state the
    decoder holds before feeding it); ``token_bias`` is the candidate's embedding times a learned vector,
    folded into one number per vocabulary entry. Higher = the cloud agrees with the SLM's token.
    """


    def __init__(self, tensors: dict[str, torch.Tensor], manifest: RewardManifest):
        self.t = {k: v.float() for k, v in tensors.items()}
        self.manifest = manifest

    @property
    def hidden_size(self) -> int:
        return int(self.t["hidden_weight"].numel())

    def score_tensors(self, stats: torch.Tensor, hidden: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of a batch: stats [n, S], hidden [n, H], candidates [n]."""
        t = self.t
        z = (stats.float() - t["stat_mean"]) / t["stat_scale"]
        mlp = torch.tanh(z @ t["mlp_in_weight"].T + t["mlp_in_bias"]) @ t["mlp_out_weight"]
        return mlp + hidden.float() @ t["hidden_weight"] + t["token_bias"][candidates.long()] + t["bias"]

    def score(self, logits: torch.Tensor, candidate: int, hidden: torch.Tensor) -> float:
        c = torch.tensor([candidate])
        return float(self.score_tensors(candidate_stats(logits[None], c), hidden[None], c)[0])

    def save(self, path: str | Path) -> None:
        meta = {"manifest": self.manifest.model_dump_json()}
        save_file({k: v.contiguous() for k, v in self.t.items()}, str(path), metadata=meta)


def read_manifest(path: str | Path) -> RewardManifest:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "manifest" not in meta:
        raise ModelMismatchError(f"{path} has no reward manifest; it was not written by this package's trainer.")
    return RewardManifest.model_validate_json(meta["manifest"])


def load_head(path: str | Path, tokenizer: object | None = None, hidden_size: int | None = None
              ) -> LinearRewardHead | CandidateRewardHead:
    """A head file of either kind, checked against the SLM's tokenizer and width."""
    manifest = read_manifest(path)
    if tokenizer is not None:
        check_manifest(manifest, tokenizer, str(path))
    tensors = load_file(str(path))
    head: LinearRewardHead | CandidateRewardHead
    if manifest.kind == "candidate":
        head = CandidateRewardHead(tensors, manifest)
        width = head.hidden_size
    else:
        head = LinearRewardHead(tensors["weight"], tensors["bias"], manifest)
        width = head.weight.numel()
    if hidden_size is not None and width != hidden_size:
        raise ModelMismatchError(
            f"reward head {path} has width {width} but the SLM's hidden size is {hidden_size}; "
            "use a head trained on this SLM."
        )
    return head


class LinearRewardHead:
    """score = w . h + b on the SLM's last hidden state of the candidate token."""


    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, manifest: RewardManifest):
        self.weight = weight.float().reshape(-1)
        self.bias = bias.float().reshape(())
        self.manifest = manifest

    def score_hidden(self, hidden: torch.Tensor) -> float:
        return float(hidden.float() @ self.weight + self.bias)

    def save(self, path: str | Path) -> None:
        meta = {"manifest": self.manifest.model_dump_json()}
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.reshape(1)}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, tokenizer: object | None = None, hidden_size: int | None = None) -> LinearRewardHead:
        head = load_head(path, tokenizer, hidden_size)
        if not isinstance(head, LinearRewardHead):
            raise ModelMismatchError(f"{path} holds a {head.manifest.kind!r} head, not a trunk head.")
        return head


class SeparateRewardModel:
    """A sequence-classification LM scoring every position, with its own roll-back-able KV cache."""


    def __init__(self, path: str | Path, tokenizer: object | None = None):
        from transformers import AutoModelForSequenceClassification

        path = Path(path)
        manifest_file = path / "reward_manifest.json"
        if not manifest_file.exists():
            raise ModelMismatchError(
                f"{path} has no reward_manifest.json; train a separate reward model with `hybrid-llm train-reward`."
            )
        self.manifest = RewardManifest.model_validate_json(manifest_file.read_text())
        if tokenizer is not None:
            check_manifest(self.manifest, tokenizer, str(path))
        from .slm import require_safetensors

        require_safetensors(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.bfloat16, use_safetensors=True, trust_remote_code=False)
        self.model.eval()

    def new_state(self) -> RewardModelState:
        return RewardModelState(self)


class RewardModelState:
    """One request's KV cache on a separate reward model; mirrors ``SLMState``'s lazy feeding."""

    def __init__(self, rm: SeparateRewardModel):
        from transformers import DynamicCache

        self.rm = rm
        self.cache = DynamicCache()
        self.cached_ids: list[int] = []

    def score(self, ids: list[int]) -> float:
        """Reward of the last token of ``ids`` (rolls the cache back to the common prefix first)."""
        common = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        if common < len(self.cached_ids):
            self.cache.crop(-(len(self.cached_ids) - common))
            del self.cached_ids[common:]
        pending = ids[common:]
        base = self.rm.model.base_model
        with torch.inference_mode():
            out = base(input_ids=torch.tensor([pending]), cache=self.cache, use_cache=True)
            value = self.rm.model.score(out.last_hidden_state[:, -1])
        self.cached_ids = list(ids)
        return float(value.float().reshape(()))
