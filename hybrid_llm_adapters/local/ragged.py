"""One SLM forward over many requests' rows, each with its own KV cache and its own new tokens.

The linear layers (projections, MLP, LM head) run once over the tokens of every row stacked together, which
is where a CPU step spends its time (reading the weights); attention runs row by row on that row's own cache,
with exactly the shapes the row would have alone. No row is padded, so a row's numbers do not depend on which
other rows share the step (bf16 matmuls on this CPU give each row the same result at any batch size), and a
request decoded in a batch gives token for token what it gives alone.

Supported: the Llama / Qwen2 decoder family (``model.model.layers[i].self_attn.{q,k,v,o}_proj``, RMSNorm, a
gated MLP, rotary positions, full attention). ``supports_ragged`` says whether a loaded model qualifies; other
models decode one row per forward through transformers (``slm.HFRowForward``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

RAGGED_MODEL_TYPES = ("qwen2", "llama")


# bf16 matmuls on this CPU give a row the same result for any row count up to 32; from 33 rows on, oneDNN picks
# another kernel that rounds differently. Every token-wise layer therefore runs on chunks of at most 32 tokens,
# so a row's numbers never depend on how many tokens share its step (measured: docs/performance.md).
INVARIANT_ROWS = 32


def by_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn`` (token-wise) over ``x`` [1, tokens, ...] in chunks of at most ``INVARIANT_ROWS`` tokens."""
    if x.shape[1] <= INVARIANT_ROWS:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(INVARIANT_ROWS, dim=1)], dim=1)


def padded_token_count(tokens: int) -> int:
    """The step's token count rounded up to a bucket (8 up to 32 tokens, then 32): the matmul kernels and the
    allocator then see a few dozen shapes instead of one per step, which bounds their caches. Padding rows
    cost little (a CPU step is bound by reading the weights) and, being separate rows, change no real row."""
    step = 8 if tokens <= 32 else 32
    return -(-tokens // step) * step


def supports_ragged(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in RAGGED_MODEL_TYPES:
        return False
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


class BufferPool:
    """Reuses KV buffers of finished requests, so that steady traffic stops allocating them: per-request
    buffers of a megabyte and more, freed from other threads, fragmented the allocator (resident memory grew
    about 80 MB over 200 short requests on the real pair, and kept growing)."""

    def __init__(self, keep: int = 64):
        self.keep = keep
        self._free: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        with self._lock:
            free = self._free.get(shape)
            if free:
                return free.pop()
        return torch.empty(shape, dtype=dtype)

    def give(self, buffer: torch.Tensor) -> None:
        with self._lock:
            free = self._free.setdefault(tuple(buffer.shape), [])
            if len(free) < self.keep:
                free.append(buffer)


class RowCache:
    """One request's KV cache: key and value buffers [layers, kv_heads, capacity, head_dim] and a length.

    Appending writes in place (the buffers grow by doubling); rolling back is moving ``length``, no copy. The
    buffers come from, and go back to, the model's ``BufferPool``.
    """

    def __init__(self, pool: BufferPool, n_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 capacity: int = 256):
        self.pool = pool
        self.length = 0
        shape = (n_layers, kv_heads, capacity, head_dim)
        self.keys = pool.take(shape, dtype)
        self.values = pool.take(shape, dtype)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def reserve(self, total: int) -> None:
        if total <= self.capacity:
            return
        # powers of two only: the pool then holds a few shapes, not one per prompt length
        new_cap = 1 << (total - 1).bit_length()
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = self.pool.take((old.shape[0], old.shape[1], new_cap, old.shape[3]), old.dtype)
            grown[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, grown)
            self.pool.give(old)

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def release(self) -> None:
        """Hand the buffers back for the next request (the cache is unusable after)."""
        for buffer in (self.keys, self.values):
            self.pool.give(buffer)
        self.keys = self.values = torch.empty(0)
        self.length = 0


@dataclass
class RowInput:
    cache: RowCache
    new_ids: list[int]


@dataclass
class RowOutput:
    logits: torch.Tensor  # float32 [vocab], the next-token logits after the row's last new token
    hidden: torch.Tensor  # float32 [hidden], the final hidden state of that token (what a trunk head reads)


class RaggedForward:
    """The forward pass of a Llama/Qwen2-family causal LM over ragged rows (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        config = model.config
        self.n_layers = int(config.num_hidden_layers)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scaling = self.head_dim**-0.5
        self.dtype = next(model.parameters()).dtype
        self.pool = BufferPool()

    def new_cache(self) -> RowCache:
        return RowCache(self.pool, self.n_layers, self.kv_heads, self.head_dim, self.dtype)

    @torch.no_grad()
    def __call__(self, rows: Sequence[RowInput]) -> list[RowOutput]:
        inner = self.model.model
        starts = [r.cache.length for r in rows]
        sizes = [len(r.new_ids) for r in rows]
        for row, start, n in zip(rows, starts, sizes):
            row.cache.reserve(start + n)
        real = sum(sizes)
        pad = padded_token_count(real) - real
        ids = torch.tensor([t for r in rows for t in r.new_ids] + [0] * pad, dtype=torch.long)
        positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, sizes)] + [torch.zeros(pad, dtype=torch.long)])
        hidden = inner.embed_tokens(ids)[None]  # [1, tokens, hidden]: every row's tokens side by side
        cos, sin = inner.rotary_emb(hidden, positions[None])
        bounds = [0]
        for n in sizes:
            bounds.append(bounds[-1] + n)
        for layer_idx, layer in enumerate(inner.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = by_chunks(attn.q_proj, x).view(1, -1, self.heads, self.head_dim).transpose(1, 2)
            k = by_chunks(attn.k_proj, x).view(1, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = by_chunks(attn.v_proj, x).view(1, -1, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            outs = []
            for i, row in enumerate(rows):
                a, b = bounds[i], bounds[i + 1]
                start, end = starts[i], starts[i] + sizes[i]
                keys, values = row.cache.keys[layer_idx], row.cache.values[layer_idx]
                keys[:, start:end] = k[0, :, a:b]
                values[:, start:end] = v[0, :, a:b]
                outs.append(self._attend(q[:, :, a:b], keys[None, :, :end], values[None, :, :end], start))
            if pad:
                outs.append(q.new_zeros((1, self.heads, pad, self.head_dim)))
            attn_out = torch.cat(outs, dim=2).transpose(1, 2).reshape(1, -1, self.heads * self.head_dim)
            hidden = hidden + by_chunks(attn.o_proj, attn_out)
            hidden = hidden + by_chunks(layer.mlp, layer.post_attention_layernorm(hidden))
        for row, start, n in zip(rows, starts, sizes):
            row.cache.length = start + n
        last = torch.tensor([b - 1 for b in bounds[1:]])
        final = inner.norm(hidden)[0, last]  # [rows, hidden]
        logits = by_chunks(self.model.lm_head, final[None])[0].float()
        return [RowOutput(logits[i], final[i].float()) for i in range(len(rows))]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """One row's attention: its new queries over its whole cache (causal within the new tokens)."""
        n, total = q.shape[2], k.shape[2]
        mask = None
        if n > 1:
            mask = torch.arange(total)[None, :] <= (start + torch.arange(n))[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling,
                                              enable_gqa=self.kv_heads != self.heads)
