"""Structural points inside the decode loop: the constrained tool-name choice, and decision markers.

Where a tool call's name opens (``<tool_call>`` then ``{"name": "``, or a bare ``{"name": "`` at the start of
the answer), the SLM does not write the name freely: a small SLM has invented names (seen: "hello" for two
bound tools). It scores each bound name as the continuation on its own state (the KV cache stays; each name
costs a few one-token forwards, rolled back after) and the loop appends the best one with ``", "arguments":``.
The answer is never stopped and re-decoded, so the prompt is prefilled once.
"""

from __future__ import annotations

from typing import Any

import torch

from ..chat import NAME_OPEN, TOOL_CALL_OPEN
from ..local.slm import SLMState

NAME_CLOSE = '", "arguments":'
_TAIL_TOKENS = 24  # decoded tail long enough to hold '<tool_call>\n{"name": "' and a partial name


class ToolNameChoice:
    """Watches the answer for an opening tool-call name and picks a bound name on the SLM."""

    def __init__(self, names: list[str], tokenizer: Any, n_prompt: int):
        self.names = list(names)
        self.tokenizer = tokenizer
        self.n_prompt = n_prompt

    def due(self, ids: list[int]) -> str | None:
        """The partial name already written when a call's name is open at the end of ``ids`` (often ""),
        else None. The forced prefix of ``tool_choice="any"`` counts: it ends the prompt with the opening."""
        if not self.names:
            return None
        tail = self.tokenizer.decode(ids[-_TAIL_TOKENS:], skip_special_tokens=False)
        at = tail.rfind(NAME_OPEN)
        if at < 0:
            return None
        partial = tail[at + len(NAME_OPEN):]
        if '"' in partial or not any(n.startswith(partial) for n in self.names):
            return None  # the name is written already, or it is none of ours: leave it to the model
        head = tail[:at].rstrip()
        if head.endswith(TOOL_CALL_OPEN):
            return partial
        generated = self.tokenizer.decode(ids[self.n_prompt:], skip_special_tokens=False)
        return partial if generated.lstrip().startswith(NAME_OPEN) and generated.count(NAME_OPEN) == 1 else None

    def choose(self, state: SLMState, partial: str) -> list[int]:
        """Token ids that finish the name (the SLM's most likely bound name starting with ``partial``) and
        open the arguments; the state is left as it was."""
        names = [n for n in self.names if n.startswith(partial)]
        if len(names) == 1:
            return self._ids(names[0], partial)
        n0 = len(state.ids)
        best, best_lp = names[0], float("-inf")
        try:
            for name in names:
                ids = self.tokenizer.encode(name[len(partial):] + '",', add_special_tokens=False)
                total = 0.0
                for tok in ids:
                    logits, _ = state.forward()
                    total += float(torch.log_softmax(logits, dim=-1)[tok])
                    state.append(tok)
                state.truncate(n0)
                if total > best_lp:
                    best, best_lp = name, total
        finally:
            state.truncate(n0)
        return self._ids(best, partial)

    def _ids(self, name: str, partial: str) -> list[int]:
        return self.tokenizer.encode(name[len(partial):] + NAME_CLOSE, add_special_tokens=False)


class DecisionMarkers:
    """After a marker string (e.g. ReAct's ``Action Input:``), the rest of the line is the cloud's: a text
    protocol's structural point, where a small SLM copies the prompt's example instead of following it (seen:
    ``{"input": "brassica row", "num_beams": 5}`` for a tool taking ``garden``)."""

    def __init__(self, markers: list[str], window: int):
        self.markers = [m for m in markers if m]
        self.window = window
        self.left = 0
        self.seen_at = -1  # where the last marker ended in the text (one trigger per marker)

    def active(self) -> bool:
        return self.left > 0

    def update(self, text: str) -> None:
        """Take the answer's text after a new token."""
        if self.left > 0:
            self.left -= 1
            if text.endswith("\n") and len(text.rstrip()) > self.seen_at:
                self.left = 0  # the line is over
        if not self.markers:
            return
        body = text.rstrip(" ")
        for marker in self.markers:
            if body.endswith(marker) and len(body) > self.seen_at:
                self.seen_at, self.left = len(body), self.window
