"""The on-device SLM: a transformers causal LM whose KV cache can roll back.

``SLMState`` holds one request's token ids and KV cache. Tokens are appended lazily and fed in one
forward pass only when logits are needed, so a run of cloud tokens (or a re-tokenized text tail) costs
one SLM forward, and rejecting a candidate is a crop of the cache, never a re-run of the prefix.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from ..errors import ModelIntegrityError


@dataclass
class LocalModel:
    """A loaded SLM and its tokenizer. Shared by every engine that names the same folder."""

    path: Path
    model: PreTrainedModel
    tokenizer: object
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        if tok_eos is not None:
            ids.add(int(tok_eos))
        return ids

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context_length(self) -> int:
        """Tokens (prompt + answer) the SLM can attend to."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)

    def new_state(self, prompt_ids: list[int]) -> SLMState:
        return SLMState(self, list(prompt_ids))


def require_safetensors(path: str | Path) -> None:
    """Refuse a model folder without safetensors weights: pickle (.bin/.pt) weights can run code on load."""
    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        raise ModelIntegrityError(
            f"model folder {str(folder)!r} has no .safetensors weights; pickled weights (.bin, .pt) can run "
            "code when loaded, so they are refused. Fix: convert once with "
            "`AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst)` (safetensors by default) in a "
            "sandbox you trust, or use a catalog model."
        )


@functools.lru_cache(maxsize=8)
def _load(path: str, dtype_name: str) -> LocalModel:
    dtype = getattr(torch, dtype_name)
    require_safetensors(path)
    # no model code from the folder or the hub runs here: trust_remote_code stays off
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    model.eval()
    return LocalModel(Path(path), model, tokenizer)


def load_local_model(path: str | Path, dtype: str = "bfloat16") -> LocalModel:
    """Load (once per process) a causal LM folder; later calls with the same folder share it."""
    return _load(str(Path(path).resolve()), dtype)


class SLMState:
    """One request's token ids and KV cache on the SLM.

    ``ids`` is the full sequence (prompt + generated). The cache covers ``ids[:cached_len]``; the rest is
    pending and is fed by the next :meth:`forward`.
    """

    def __init__(self, local: LocalModel, ids: list[int]):
        self.local = local
        self.ids: list[int] = ids
        self.cache = DynamicCache()
        self.cached_len = 0
        self.forward_calls = 0
        self._logits: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None

    def append(self, token_ids: list[int] | int) -> None:
        self.ids.extend([token_ids] if isinstance(token_ids, int) else token_ids)
        self._logits = self._hidden = None

    def truncate(self, length: int) -> None:
        """Drop ids beyond ``length`` and roll the KV cache back to match."""
        self.truncate_cache(length)
        del self.ids[length:]

    def forward(self, need_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed pending ids; return the next-token logits (float32, [vocab]) and the last hidden state.

        The hidden state belongs to the last fed token, i.e. it is the SLM's representation of the newest
        token in context, which is what a trunk reward head scores.
        """
        if (self.cached_len == len(self.ids) and self._logits is not None
                and (not need_hidden or self._hidden is not None)):
            return self._logits, self._hidden
        if self.cached_len >= len(self.ids):
            # Everything is cached but its logits were dropped: re-feed the last token.
            self.truncate_cache(len(self.ids) - 1)
        pending = self.ids[self.cached_len :]
        input_ids = torch.tensor([pending], dtype=torch.long)
        with self.local.lock, torch.inference_mode():
            out = self.local.model(
                input_ids=input_ids,
                cache=self.cache,
                use_cache=True,
                output_hidden_states=need_hidden,
                logits_to_keep=1,
            )
        self.forward_calls += 1
        self.cached_len = len(self.ids)
        self._logits = out.logits[0, -1].float()
        self._hidden = out.hidden_states[-1][0, -1].float() if need_hidden else None
        return self._logits, self._hidden

    def truncate_cache(self, length: int) -> None:
        """Roll the KV cache back to cover ``ids[:length]``; the ids themselves stay (pending)."""
        if length < self.cached_len:
            self.cache.crop(-(self.cached_len - length))
            self.cached_len = length
            self._logits = self._hidden = None
