"""Stop sequences and safe text release for streaming.

Text is released only when it can no longer turn out to be the start of a stop sequence or a split
multi-byte character, so a stream never shows text that the final answer drops.
"""

from __future__ import annotations


def find_stop(text: str, stops: list[str], search_from: int = 0) -> int | None:
    """Index where the earliest stop sequence begins in ``text[search_from:]``, or None."""
    hits = [i for s in stops if (i := text.find(s, search_from)) >= 0]
    return min(hits) if hits else None


def releasable_length(text: str, stops: list[str]) -> int:
    """How much of ``text`` is safe to show: hold back a trailing partial stop or a U+FFFD placeholder."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text.endswith(stop[:k], 0, end):
                end = min(end, len(text[:end]) - k)
                break
    return end
