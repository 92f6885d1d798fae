"""Equal-length chunk pairs (the reward paper's training unit).

For a prompt x with cloud response y_c and SLM response y_s, a chunk of length L (1 <= L <= min(|y_c|,
|y_s|)) pairs the chosen prefix y_c[:L] with the rejected prefix y_s[:L]. A reward model scores a prefix at
its last token, which is exactly what the router does at decode time (the candidate is the last token).

Because the scorers are causal, r(x, y[:L]) is the model's output at position L of ONE forward pass over
x + y: every chunk length of a response is scored by a single pass. Training exploits this; a chunk is
therefore just a length L (plus the pair it belongs to).

Chunks whose two sides are identical token for token (both models started the same way) carry no
preference and are dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    pair: int  # index of the pair in its list
    length: int  # L: tokens of each response in the chunk


def chunk_lengths(n_chosen: int, n_rejected: int, k: int, rng: random.Random, lo: int = 1) -> list[int]:
    """Up to ``k`` distinct lengths from lo..min(n_chosen, n_rejected) (lo = 1: the paper's range); always
    the shortest and the longest when k >= 2, the rest uniform in between. Sorted."""
    m = min(n_chosen, n_rejected)
    lo = max(1, lo)
    if m < lo or k <= 0:
        return []
    if k >= m - lo + 1:
        return list(range(lo, m + 1))
    picks = {lo, m} if k >= 2 else {rng.randint(lo, m)}
    middle = list(range(lo + 1, m))
    rng.shuffle(middle)
    for length in middle:
        if len(picks) >= k:
            break
        picks.add(length)
    return sorted(picks)


def make_chunks(pairs: list[tuple[list[int], list[int]]], k: int, seed: int = 0) -> list[Chunk]:
    """Chunks for (chosen_ids, rejected_ids) pairs, equal lengths, identical prefixes dropped."""
    rng = random.Random(seed)
    out: list[Chunk] = []
    for i, (chosen, rejected) in enumerate(pairs):
        # first position where the two differ: shorter prefixes are identical on both sides
        first_diff = next((j for j, (a, b) in enumerate(zip(chosen, rejected)) if a != b), None)
        if first_diff is None:
            continue  # one is a prefix of the other within the common length: no preference
        # lengths where the two sides differ: first_diff + 1 .. min(len)
        out += [Chunk(i, n) for n in chunk_lengths(len(chosen), len(rejected), k, rng, lo=first_diff + 1)]
    return out
