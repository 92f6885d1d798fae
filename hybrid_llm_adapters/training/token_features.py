"""What the decoder sees at every token of a labelled response, from one teacher-forced SLM forward.

For response token y[j] (prompt x, position p = len(x) + j):

- ``context``: the SLM's final hidden state at p - 1, whose logits chose y[j] (what a candidate head reads);
- ``fed``: the final hidden state at p, after y[j] is fed (what the first build's trunk head reads);
- ``slm_stats``: :func:`candidate_stats` of y[j] under the logits at p - 1;
- ``alt_stats``: the same for the cloud's argmax at p (the chosen side of the single-token pair);
- ``mid{k}`` (when asked): the input of the top k decoder layers at every position, prompt included, from
  which the separate reward model's tuned layers train without re-running the frozen trunk.

The logits themselves (vocabulary-sized) are reduced to these stats as they are computed and never stored.
Everything lands in one safetensors file keyed ``{prompt_id}/{variant}/{name}``, rewritten every few batches,
so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..local.reward import candidate_stats
from .labels import cloud_argmax

NAMES = ("context", "fed", "slm_stats", "alt_stats")


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


def key(record: dict[str, Any]) -> str:
    return f"{record['prompt_id']}/{record['variant']}"


def response_features(model: Any, records: list[dict[str, Any]], mid_layers: int = 0
                      ) -> list[dict[str, torch.Tensor]]:
    """One right-padded forward for several records (causal attention: padding after a real token never
    reaches it)."""
    lens = [len(r["prompt_ids"]) + len(r["response_ids"]) for r in records]
    ids = torch.zeros(len(records), max(lens), dtype=torch.long)
    for i, r in enumerate(records):
        ids[i, : lens[i]] = torch.tensor(r["prompt_ids"] + r["response_ids"])
    n_layers = model.config.num_hidden_layers
    capture = capture_layer_input(model, n_layers - mid_layers) if mid_layers else contextlib.nullcontext([])
    with capture as box, torch.inference_mode():
        out = model.model(input_ids=ids)
        final = out.last_hidden_state  # after the final norm: what the decoder's batched forward returns
        res = []
        for i, r in enumerate(records):
            p, n = len(r["prompt_ids"]), len(r["response_ids"])
            ctx = final[i, p - 1 : p - 1 + n]
            logits = model.lm_head(ctx).float()
            slm = torch.tensor(r["response_ids"])
            alt = torch.tensor(cloud_argmax(r))
            feats = {
                "context": ctx.to(torch.float16).clone(),
                "fed": final[i, p : p + n].to(torch.float16).clone(),
                "slm_stats": candidate_stats(logits, slm),
                "alt_stats": candidate_stats(logits, alt),
            }
            if mid_layers:
                feats[f"mid{mid_layers}"] = box[0][i, : p + n].to(torch.bfloat16).clone()
            res.append(feats)
    return res


def compute_token_features(model: Any, records: list[dict[str, Any]], cache: str | Path, mid_layers: int = 0,
                           batch_tokens: int = 2048, progress: bool = True) -> dict[str, torch.Tensor]:
    """Features of every record, read from / added to the safetensors ``cache``."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    cache = Path(cache)
    store: dict[str, torch.Tensor] = load_file(str(cache)) if cache.exists() else {}
    last = f"mid{mid_layers}" if mid_layers else "alt_stats"
    todo = sorted((r for r in records if f"{key(r)}/{last}" not in store),
                  key=lambda r: len(r["prompt_ids"]) + len(r["response_ids"]))

    def flush() -> None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in store.items()}, str(tmp))
        tmp.replace(cache)

    with tqdm(total=sum(len(r["response_ids"]) for r in todo), desc="SLM features", unit="tok",
              disable=not progress) as bar:
        start, since_flush = 0, 0
        while start < len(todo):
            longest = len(todo[start]["prompt_ids"]) + len(todo[start]["response_ids"])
            end = start + 1
            while end < len(todo) and (end - start + 1) * max(
                    longest, len(todo[end]["prompt_ids"]) + len(todo[end]["response_ids"])) <= batch_tokens:
                end += 1
            batch = todo[start:end]
            for r, feats in zip(batch, response_features(model, batch, mid_layers)):
                for name, value in feats.items():
                    store[f"{key(r)}/{name}"] = value
                bar.update(len(r["response_ids"]))
            since_flush += len(batch)
            if since_flush >= 32:
                flush()
                since_flush = 0
            start = end
    if todo:
        flush()
    return store


def load_labelled(labels: str | Path, feature_cache: str | Path, slm: str, mid_layers: int = 0,
                  progress: bool = True) -> tuple[Any, Any, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(SLM, tokenizer, label records, features) for a labels file; features computed once, then cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_model
    from .labels import read_labels

    slm_dir = resolve_model(slm, progress=progress)
    tok = AutoTokenizer.from_pretrained(str(slm_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(slm_dir), dtype=torch.bfloat16).eval()
    records = read_labels(labels)
    return lm, tok, records, compute_token_features(lm, records, feature_cache, mid_layers, progress=progress)
