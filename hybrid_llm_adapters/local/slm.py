"""The on-device SLM: a transformers causal LM whose requests share batched forwards and keep their own KV cache.

``SLMState`` holds one request's token ids and KV cache. Tokens are appended lazily and fed in one
forward pass only when logits are needed, so a run of cloud tokens (or a re-tokenized text tail) costs
one SLM forward, and rejecting a candidate is a crop of the cache, never a re-run of the prefix. The forward
itself goes through the model's ``StepBatcher``: requests in flight at the same time share one forward per step.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from ..errors import ModelIntegrityError
from .batcher import StepBatcher
from .ragged import RaggedForward, RowInput, RowOutput, supports_ragged


class HFRowCache:
    """A transformers ``DynamicCache`` with the ``RowCache`` interface, for models outside the ragged family."""

    def __init__(self) -> None:
        self.cache = DynamicCache()
        self.length = 0

    def crop(self, length: int) -> None:
        if length < self.length:
            self.cache.crop(-(self.length - length))  # transformers takes the number of tokens to drop
            self.length = length

    def release(self) -> None:
        self.cache = DynamicCache()
        self.length = 0


class HFRowForward:
    """The fallback for architectures ``RaggedForward`` does not cover: transformers' own forward, one row at a
    time (correct, not batched)."""

    def __init__(self, model: PreTrainedModel):
        self.model = model

    def new_cache(self) -> HFRowCache:
        return HFRowCache()

    def __call__(self, rows: Sequence[RowInput]) -> list[RowOutput]:
        outputs = []
        for row in rows:
            cache = row.cache
            assert isinstance(cache, HFRowCache)
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([row.new_ids]), cache=cache.cache, use_cache=True,
                                 output_hidden_states=True, logits_to_keep=1)
            cache.length += len(row.new_ids)
            outputs.append(RowOutput(out.logits[0, -1].float(), out.hidden_states[-1][0, -1].float()))
        return outputs


@dataclass
class LocalModel:
    """A loaded SLM and its tokenizer. Shared by every engine that names the same folder, and so is its batcher."""

    path: Path
    model: PreTrainedModel
    tokenizer: object
    forward: RaggedForward | HFRowForward = field(init=False, repr=False)
    batcher: StepBatcher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.forward = RaggedForward(self.model) if supports_ragged(self.model) else HFRowForward(self.model)
        self.batcher = StepBatcher(self.forward)

    @property
    def batched(self) -> bool:
        """Whether concurrent requests share forwards (the Llama/Qwen2 family) or take turns."""
        return isinstance(self.forward, RaggedForward)

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
    pending and is fed by the next :meth:`forward`. The state is a member of the model's batcher from its first
    forward until :meth:`close`; :meth:`away` marks the time it spends elsewhere (a cloud call).
    """

    def __init__(self, local: LocalModel, ids: list[int]):
        self.local = local
        self.ids: list[int] = ids
        self.cache = local.forward.new_cache()
        self.forward_calls = 0
        self._key = object()  # the batcher's handle on this row (never the state itself: see close)
        self._registered: weakref.finalize | None = None
        self._logits: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None

    @property
    def cached_len(self) -> int:
        return self.cache.length

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
        if self.cached_len == len(self.ids) and self._logits is not None:
            return self._logits, self._hidden if need_hidden else None
        if self.cached_len >= len(self.ids):
            # Everything is cached but its logits were dropped: re-feed the last token.
            self.truncate_cache(len(self.ids) - 1)
        if self._registered is None:
            self.local.batcher.register(self._key)
            # a state dropped without close() (an abandoned generator) still leaves the batch when collected
            self._registered = weakref.finalize(self, self.local.batcher.unregister, self._key)
        out = self.local.batcher.submit(RowInput(self.cache, self.ids[self.cached_len:]))
        self.forward_calls += 1
        self._logits, self._hidden = out.logits, out.hidden
        return self._logits, self._hidden if need_hidden else None

    def away(self):  # type: ignore[no-untyped-def]
        """Context manager: the request is busy elsewhere, the other rows' steps need not wait for it."""
        return self.local.batcher.away(self._key)

    def close(self) -> None:
        """Leave the batcher (the request ended or was cancelled) and hand the cache's buffers back for reuse."""
        if self._registered is not None:
            self._registered()  # runs unregister once
            self._registered = None
            self.cache.release()  # its buffers serve the next request

    def truncate_cache(self, length: int) -> None:
        """Roll the KV cache back to cover ``ids[:length]``; the ids themselves stay (pending)."""
        if length < self.cached_len:
            self.cache.crop(length)
            self._logits = self._hidden = None
