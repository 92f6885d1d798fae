"""Reward scorers: how well an SLM token agrees with the cloud LLM (higher = keep it local).

Two kinds, as DESIGN.md asks:
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


class LinearRewardHead:
    """score = w . h + b on the SLM's last hidden state of the candidate token."""

    uses_slm_hidden = True

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
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "manifest" not in meta:
            raise ModelMismatchError(f"{path} has no reward manifest; it was not written by LinearRewardHead.save.")
        manifest = RewardManifest.model_validate_json(meta["manifest"])
        if tokenizer is not None:
            check_manifest(manifest, tokenizer, str(path))
        tensors = load_file(str(path))
        head = cls(tensors["weight"], tensors["bias"], manifest)
        if hidden_size is not None and head.weight.numel() != hidden_size:
            raise ModelMismatchError(
                f"reward head {path} has width {head.weight.numel()} but the SLM's hidden size is {hidden_size}; "
                "use a head trained on this SLM."
            )
        return head


class SeparateRewardModel:
    """A sequence-classification LM scoring every position, with its own roll-back-able KV cache."""

    uses_slm_hidden = False

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
