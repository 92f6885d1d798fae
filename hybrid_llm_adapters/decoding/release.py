"""Text release for one request: decode the generated ids, cut at a stop sequence, and hand out only the text
that can no longer change (see ``stopping.py``); what was held back comes out when the answer ends."""

from __future__ import annotations

from typing import Any

from ..stopping import find_stop, releasable_length


class TextRelease:
    """The answer's text so far and how much of it has been released."""

    def __init__(self, tokenizer: Any, stops: list[str]):
        self.tokenizer = tokenizer
        self.stops = stops
        self.window = max((len(s) for s in stops), default=0)
        self.text = ""
        self.released = 0

    def update(self, generated_ids: list[int]) -> tuple[str, bool]:
        """Take the generated ids so far; return the newly releasable piece and whether a stop sequence
        ended the answer (the text is then cut where it begins)."""
        self.text = self.tokenizer.decode(generated_ids, skip_special_tokens=True)
        stop_at = find_stop(self.text, self.stops, max(0, self.released - self.window))
        if stop_at is not None:
            self.text = self.text[:stop_at]
        release_to = len(self.text) if stop_at is not None else releasable_length(self.text, self.stops)
        piece = self.text[self.released:release_to] if release_to > self.released else ""
        self.released = max(self.released, release_to)
        return piece, stop_at is not None

    def flush(self) -> str:
        """What was held back for a possible stop sequence, once the answer is over."""
        tail = self.text[self.released:]
        self.released = len(self.text)
        return tail
