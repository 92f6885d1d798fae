"""How the cloud helps at a flagged position: one strategy class per cloud mode, behind one table (as
transformers keeps its candidate generators).

Each strategy takes the SLM's proposal for the flagged position and returns the tokens it produced, leaving
the request's SLM state in step with them. A strategy returns None when its cloud call failed and the request
continues locally (the loop then keeps the SLM's candidate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cloud.verify import verify_draft
from ..local.sampling import choose, warp
from .types import Produced, Proposal

if TYPE_CHECKING:
    from .loop import RequestDecoder


class CloudMode:
    """One way of asking the cloud about a flagged position."""

    name = "mode"

    def __init__(self, decoder: RequestDecoder):
        self.d = decoder

    def handle(self, p: Proposal) -> list[Produced] | None:
        raise NotImplementedError


class Replace(CloudMode):
    """The reward paper's rule: the cloud supplies the token (lookahead: m tokens, doubling while consecutive
    steps go to the cloud, back to 1 after a local one)."""

    name = "replace"

    def __init__(self, decoder: RequestDecoder, lookahead: bool = False):
        super().__init__(decoder)
        self.lookahead = lookahead
        self.m = 1

    def size(self) -> int:
        d = self.d
        if not self.lookahead or not d.use_ids:
            return 1
        self.m = min(self.m * 2, d.gen.max_lookahead) if d.last_was_cloud else 1
        return self.m

    def handle(self, p: Proposal, window: int | None = None) -> list[Produced] | None:
        """``window``: a decision point's tokens, all written by the cloud in this one call. When the cloud
        ends the answer within a call of several tokens (a window, lookahead), the answer ends there."""
        d = self.d
        prefix_len = len(d.state.ids) - p.fed
        m = window or self.size()
        reply = d.call(lambda prefix: d.cloud.next_tokens(prefix, d.gen, m, d.seed()), prefix_len)
        if reply is None:
            return None
        fed = p.fed
        if fed and not (d.use_ids and reply.first.token_id == p.candidate):
            d.state.truncate(prefix_len)  # the one-token roll-back when a fed candidate is replaced
            fed = False
        new_ids = d.reply_ids(reply)
        d.state.append(new_ids[1:] if fed else new_ids)
        produced = [Produced(new_ids[0], "cloud", p.score, p.candidate)] + [Produced(t, "cloud") for t in new_ids[1:]]
        if reply.finish_reason == "stop" and new_ids[-1] not in d.eos:  # ended by its end token, not in the text
            produced.append(Produced(next(iter(d.eos)), "cloud"))
        return produced


class Verify(CloudMode):
    """U-HLM's speculative check of one draft: accept with min(1, q/p), else resample from the residual."""

    name = "verify"

    def handle(self, p: Proposal) -> list[Produced] | None:
        d = self.d
        prefix_len = len(d.state.ids) - p.fed
        k = d.cloud.capabilities.max_logprobs or d.cloud.config.logprobs
        reply = d.call(lambda prefix: d.cloud.next_token(prefix, d.gen, d.seed(), logprobs=k), prefix_len)
        if reply is None:
            return None
        token, accepted = verify_draft(p.candidate, p.probs, reply.first.top_logprobs, d.gen, d.rng)
        d.ledger.cloud_checked_tokens += 1
        d.ledger.accepted_drafts += accepted
        if p.fed and not accepted:
            d.state.truncate(prefix_len)
        if not p.fed or not accepted:
            d.state.append(token)
        return [Produced(token, "verified" if accepted else "cloud", p.score, p.candidate)]


class BlockVerify(CloudMode):
    """Draft up to k tokens from the flagged position and check them all in one echo call; k grows after a
    clean block and shrinks after a miss (as transformers' assisted generation does)."""

    name = "block_verify"

    def __init__(self, decoder: RequestDecoder):
        super().__init__(decoder)
        self.k = decoder.gen.draft_tokens

    def handle(self, p: Proposal, max_drafts: int | None = None) -> list[Produced] | None:
        """``max_drafts`` caps this block below ``k`` (what the cost guard lets one call re-send)."""
        d = self.d
        prefix_len = len(d.state.ids) - p.fed
        drafts, probs = [p.candidate], [p.probs]
        if not p.fed:
            d.state.append(p.candidate)
        size = self.k if max_drafts is None else min(self.k, max_drafts)
        while len(drafts) < size and drafts[-1] not in d.eos:
            logits, _ = d.state.forward()
            probs.append(None if d.gen.greedy else warp(logits, d.gen))
            nxt = choose(logits, d.gen, d.rng)
            drafts.append(nxt)
            d.state.append(nxt)
        k = d.cloud.capabilities.max_logprobs or d.cloud.config.logprobs
        block = d.call(lambda prefix: d.cloud.score_block(prefix, drafts, d.gen, d.seed(), k), prefix_len, drafts)
        if block is None:
            d.state.truncate(prefix_len + 1)  # keep the candidate (fed), drop the unchecked drafts
            return [Produced(p.candidate, "fallback", p.score, p.candidate)]
        produced: list[Produced] = []
        all_accepted = True
        d.ledger.cloud_checked_tokens += len(drafts)
        for j, draft in enumerate(drafts):
            token, accepted = verify_draft(draft, probs[j], block.positions[j], d.gen, d.rng)
            score = p.score if j == 0 else None
            if not accepted:
                all_accepted = False
                d.state.truncate(prefix_len + j)
                d.state.append(token)
                produced.append(Produced(token, "cloud", score, draft))
                break
            d.ledger.accepted_drafts += 1
            produced.append(Produced(draft, "verified", score, draft))
            if draft in d.eos:
                break
        else:
            bonus = block.bonus.token_id
            if bonus is not None:
                d.state.append(bonus)
                produced.append(Produced(bonus, "cloud"))
        self.k = min(self.k + 2, d.gen.max_draft_tokens) if all_accepted else max(1, self.k - 1)
        return produced


MODES: dict[str, type[CloudMode]] = {"replace": Replace, "verify": Verify, "block_verify": BlockVerify}


def build_mode(name: str, decoder: RequestDecoder) -> CloudMode:
    """The strategy for a resolved mode name ('lookahead' is replace with m tokens per call)."""
    if name == "lookahead":
        return Replace(decoder, lookahead=True)
    return MODES.get(name, Replace)(decoder)
