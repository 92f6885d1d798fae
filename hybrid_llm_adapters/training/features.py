"""SLM features computed once per (prompt + response) sequence and cached in safetensors.

One frozen SLM forward pass over x + y gives, at every response position j:
- ``last``: the final (normed) hidden state, exactly what the engine hands a trunk head for the candidate
  y[j] (``SLMState.forward(need_hidden=True)`` -> ``hidden_states[-1]``); the trunk head's score of the
  chunk y[:j+1] is w . last[j] + b;
- ``mid``: the input of the top ``k`` decoder layers at every position (prompt included), from which a
  separate reward model that fine-tunes only those layers is trained without re-running the frozen trunk.

Keys: ``{prompt_id}/{role}/last`` (float16, [len(y), H]) and ``{prompt_id}/{role}/mid{k}`` (bfloat16,
[len(x)+len(y), H]). The cache is rewritten every ``save_every`` sequences, so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def capture_layer_input(model: Any, layer_index: int) -> Iterator[list[torch.Tensor]]:
    """Collect the hidden-state input of decoder layer ``layer_index`` during forward passes."""
    box: list[torch.Tensor] = []
    layer = model.model.layers[layer_index]

    def hook(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        box.append((args[0] if args else kwargs["hidden_states"]).detach())

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def sequence_features(model: Any, prompt_ids: list[int], response_ids: list[int],
                      mid_layers: int = 0) -> dict[str, torch.Tensor]:
    """``last`` hidden states at the response positions (and ``mid`` inputs of the top layers)."""
    return batch_features(model, [(prompt_ids, response_ids)], mid_layers)[0]


def batch_features(model: Any, seqs: list[tuple[list[int], list[int]]], mid_layers: int = 0
                   ) -> list[dict[str, torch.Tensor]]:
    """One padded forward for several (prompt, response) sequences. Right padding with plain causal
    attention (no mask): a real position never attends to the padding after it, so its outputs are those
    of the unpadded sequence (up to kernel rounding)."""
    n_layers = model.config.num_hidden_layers
    lens = [len(p) + len(r) for p, r in seqs]
    t = max(lens)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, (p, r) in enumerate(seqs):
        ids[i, : lens[i]] = torch.tensor(p + r)
    ctx = capture_layer_input(model, n_layers - mid_layers) if mid_layers else contextlib.nullcontext([])
    with ctx as box, torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    res = []
    for i, (p, _r) in enumerate(seqs):
        feats = {"last": out.hidden_states[-1][i, len(p) : lens[i]].to(torch.float16).clone()}
        if mid_layers:
            feats[f"mid{mid_layers}"] = box[0][i, : lens[i]].to(torch.bfloat16).clone()
        res.append(feats)
    return res


def compute_features(model: Any, records: list[dict[str, Any]], cache: str | Path | None,
                     mid_layers: int = 0, save_every: int = 64, progress: bool = True,
                     batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Features of both responses of every record, read from / added to the safetensors ``cache``."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    store: dict[str, torch.Tensor] = {}
    if cache is not None and Path(cache).exists():
        store = load_file(str(cache))
    need = [f"mid{mid_layers}"] if mid_layers else []
    todo = [(r, role) for r in records for role in ("cloud", "slm")
            if any(f"{r['prompt_id']}/{role}/{k}" not in store for k in ["last", *need])]
    dirty = 0

    def flush() -> None:
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(cache) + ".tmp")
            save_file({k: v.contiguous() for k, v in store.items()}, str(tmp))
            tmp.replace(cache)

    # similar lengths together: less padding
    todo.sort(key=lambda rr: len(rr[0]["prompt_ids"]) + len(rr[0][f"{rr[1]}_ids"]))
    with tqdm(total=len(todo), desc="SLM features", unit="seq", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            feats = batch_features(model, [(r["prompt_ids"], r[f"{role}_ids"]) for r, role in batch], mid_layers)
            for (r, role), f in zip(batch, feats):
                for k, v in f.items():
                    store[f"{r['prompt_id']}/{role}/{k}"] = v
            dirty += len(batch)
            bar.update(len(batch))
            if dirty >= save_every:
                flush()
                dirty = 0
    if dirty:
        flush()
    return store
