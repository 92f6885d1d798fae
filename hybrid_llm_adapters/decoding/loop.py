"""One request's decode: the SLM proposes, the router decides, a cloud mode (``modes.py``) replaces or
verifies; on a pay-per-token API the cost guard and the hand-off (``handoff.py``) keep the request from paying
more than cloud-only.

``RequestDecoder`` holds the request's state (SLM row, ledger, released text) and runs the loop. It is given
what it needs (``DecodeContext``: the local model, the cloud client, the prices), never the engine. Emission
(EOS, stop sequences, max tokens, text release in ``release.py``) and ledger booking (``booking.py``) are
shared by all modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..accounting import UsageLedger, cloud_only_cost
from ..cloud.client import CloudClient
from ..cloud.replies import CloudReply
from ..config import GenerationConfig, PriceTable
from ..errors import CloudError
from ..events import FinishReason, GenerationResult, TokenEvent, TokenSource
from ..local.sampling import choose, warp
from ..local.slm import LocalModel
from ..local.threads import serial_torch
from ..routing import Router, RouterStep
from .booking import book_call, book_token
from .handoff import CostGuard, Handoff, shared_prefix
from .modes import BlockVerify, Replace, build_mode
from .release import TextRelease
from .tool_names import DecisionMarkers, ToolNameChoice
from .types import Produced, Proposal


@dataclass
class DecodeContext:
    """What a request's decode needs from its engine."""

    local: LocalModel
    cloud: CloudClient | None
    prices: PriceTable


def pick_mode(requested: str, cloud: CloudClient | None, use_ids: bool, router: Router, tokenizer: Any) -> str:
    """The mode a request really uses (the ledger records it); the endpoint is probed once, on first need."""
    if cloud is None:
        return "none"
    if not router.needs_slm and router.one_request:
        return "cloud_only"
    if requested == "replace" or not use_ids:
        return "replace"  # verification needs one token space: text hand-over is one token per call
    if requested == "lookahead":
        return requested
    if not router.needs_slm:
        return "cloud_only" if router.one_request else "replace"  # the SLM drafts nothing to verify
    caps = cloud.probe(tokenizer)
    if requested == "auto":
        return caps.best_mode()
    if requested == "block_verify" and not caps.echo_logprobs:
        return "verify"
    return requested


class RequestDecoder:
    """The decode loop of one request."""

    def __init__(self, ctx: DecodeContext, prompt_ids: list[int], gen: GenerationConfig, router: Router):
        self.ctx = ctx
        self.gen = gen
        self.router = router
        self.tokenizer = ctx.local.tokenizer
        self.cloud = ctx.cloud
        self.state = ctx.local.new_state(list(prompt_ids))
        self.n_prompt = len(prompt_ids)
        self.eos = ctx.local.eos_token_ids
        self.rng = torch.Generator().manual_seed(gen.seed) if gen.seed is not None else None
        self.scorer_state = router.new_scorer_state()
        self.use_ids = self.cloud.shares_tokenizer(self.tokenizer) if self.cloud is not None else True
        self.probe_failure: CloudError | None = None  # the endpoint was down when its modes were probed
        try:
            self.mode = pick_mode(gen.cloud_mode, self.cloud, self.use_ids, router, self.tokenizer)
        except CloudError as e:  # reported at the first cloud need, as that call's failure (one, not two)
            self.mode, self.probe_failure = "replace", e
        self.strategy = build_mode(self.mode, self)
        self._replace: Replace | None = None  # plain calls beside the mode's own (see _plain)
        self.ledger = UsageLedger(requests=1, prompt_tokens=self.n_prompt, cloud_mode=self.mode)
        self.release = TextRelease(self.tokenizer, gen.stop)
        self.events: list[TokenEvent] = []
        self.cloud_down = False
        self.finish: FinishReason = "length"
        self.last_was_cloud = False
        self.limit = min(gen.max_new_tokens, ctx.local.context_length - self.n_prompt)
        self.produced_total = 0
        self.ended_by_eos = False
        self.sent: list[int] = []  # the prompt of this request's last cloud call (what a prompt cache holds)
        self.guard = CostGuard(self)
        self.handoff = Handoff(self)
        self.tool_names = ToolNameChoice(gen.tool_names, self.tokenizer, self.n_prompt)
        self.markers = DecisionMarkers(gen.decision_markers, gen.decision_window)

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self, out: Any) -> Iterator[TokenEvent]:
        try:
            yield from self._run(out)
        finally:
            self.handoff.close()  # a stop sequence or a cancel ends a hand-off's stream
            self.state.close()  # finished, failed or cancelled: the row leaves the batch

    def _run(self, out: Any) -> Iterator[TokenEvent]:
        # the answer also ends where the SLM's context does (the engine refused prompts that fill it)
        limit = self.limit
        while self.produced_total < limit and self.finish != "stop":
            t0 = time.perf_counter()
            cloud_before = self.ledger.cloud_seconds
            with serial_torch():  # only the SLM batcher's thread runs torch on several threads
                produced = self._step()
            step_s = time.perf_counter() - t0
            self.ledger.local_seconds += step_s - (self.ledger.cloud_seconds - cloud_before)
            for item in produced:
                if self.produced_total >= limit:
                    self._drop_from(self.produced_total)
                    break
                event = self._emit(item, self.produced_total, step_s / max(len(produced), 1))
                if event is None:  # EOS or a stop sequence ended the answer
                    break
                self.produced_total += 1
                yield event
                if self.finish == "stop":
                    break
        self.handoff.close()  # book a stream the answer's end cut short
        tail = self.release.flush()
        if tail:
            last = self.events[-1]
            event = TokenEvent(tail, last.token_id, last.source, None, 0.0, final_flush=True)
            self.events.append(event)
            yield event
        # the cloud alone would have generated (and billed) the same tokens, and the end-of-answer token too
        self.ledger.cloud_only_cost_usd = cloud_only_cost(self.ctx.prices, self.n_prompt,
                                                          self.ledger.generated_tokens + self.ended_by_eos)
        out.result = GenerationResult(
            text=self.release.text,
            token_ids=self.state.ids[self.n_prompt:],
            events=self.events,
            ledger=self.ledger,
            finish_reason=self.finish,
            prompt_token_ids=self.state.ids[: self.n_prompt],
        )

    def _step(self) -> list[Produced]:
        produced = self.handoff.next() if self.handoff.active else None
        if produced is not None:
            pass
        elif self.mode != "cloud_only" and (partial := self.tool_names.due(self.state.ids)) is not None:
            ids = self.tool_names.choose(self.state, partial)  # a call's name: a bound one, chosen on the SLM
            self.state.append(ids)
            produced = [Produced(t, "local") for t in ids]
        elif self.mode == "cloud_only" and not self.cloud_down and not self.handoff.done:
            produced = self.handoff.start(len(self.state.ids), reason="router")
        elif not self.router.needs_slm and not self.cloud_down:
            produced = self._cloud_per_token()
        if produced is None:
            proposal = self._propose()
            if proposal.want_cloud and not self.cloud_down:
                produced = self._ask_cloud(proposal)
            else:
                self.handoff.record(False)
            if produced is None:
                produced = self._keep_local(proposal)
        self.last_was_cloud = any(p.source == "cloud" for p in produced)
        return produced

    def _ask_cloud(self, p: Proposal) -> list[Produced] | None:
        """A flagged position: the mode's call, or a hand-off when flags come densely or the guard refuses
        the call; None keeps the SLM's candidate."""
        prefix_len = len(self.state.ids) - p.fed
        if self.probe_failure is not None:
            error, self.probe_failure = self.probe_failure, None
            self.cloud_failed(error, prefix_len)
            return None
        dense = self.handoff.record(True)
        call = self._decision_call(p, prefix_len) or self._affordable_call(prefix_len)
        self.ledger.cost_guard_trips += call is None
        if dense or call is None:
            if p.fed:
                self.state.truncate(prefix_len)  # the hand-off continues from before the candidate
            produced = self.handoff.start(prefix_len, reason="dense flags" if dense else "cost guard")
            if produced is not None:
                return produced
            if p.fed:
                self.state.append(p.candidate)
            if call is None:
                return None
        return call(p)

    def _decision_call(self, p: Proposal, prefix_len: int) -> Callable[[Proposal], list[Produced] | None] | None:
        """A decision window of several tokens: the cloud writes all of it in one call (a block check stops at
        the first miss, and the guard refuses the calls that would cover the rest); None when there is no
        such window or the guard refuses it (the mode's own call is tried next)."""
        if p.window < 2 or not self.guard.allows(prefix_len, prefix_len, tokens=p.window):
            return None

        def window_call(q: Proposal) -> list[Produced] | None:
            produced = self._plain().handle(q, window=p.window)
            if produced:  # the positions after this one that the call decided (this one is counted already)
                self.ledger.decision_checks += len(produced) - 1
            return produced

        return window_call

    def _plain(self) -> Replace:
        """A plain replace call in any mode: block_verify's one-token call where only that fits the guard, and
        decision windows."""
        self._replace = self._replace or Replace(self)
        return self._replace

    def _affordable_call(self, prefix_len: int) -> Callable[[Proposal], list[Produced] | None] | None:
        """The mode's call, shrunk to what the cost guard allows; None when not even one token's call fits.

        A block's echo call re-sends its drafts as input and may still yield one token, so near the start of an
        answer (little cloud-only output to measure against) only a smaller block, or one replaced token, stays
        within the ratio: shrinking keeps the request hybrid where refusing would hand the whole answer off."""
        if isinstance(self.strategy, BlockVerify):
            block = self.strategy
            for k in range(block.k, 0, -1):
                if self.guard.allows(prefix_len + k, prefix_len, echo=True):
                    return lambda p, k=k: block.handle(p, max_drafts=k)  # type: ignore[misc]
            if self.guard.allows(prefix_len, prefix_len):
                return self._plain().handle
            return None
        return self.strategy.handle if self.guard.allows(prefix_len, prefix_len) else None

    def _propose(self) -> Proposal:
        logits, context_hidden = self.state.forward(need_hidden=self.router.needs_context_hidden)
        probs = None if self.gen.greedy else warp(logits, self.gen)
        candidate = choose(logits, self.gen, self.rng)
        fed = False
        hidden = None
        if self.router.needs_hidden:
            self.state.append(candidate)
            fed = True
            _, hidden = self.state.forward(need_hidden=True)
        ids = self.state.ids if fed else self.state.ids + [candidate]
        step = RouterStep(logits, candidate, ids, hidden, context_hidden, self.scorer_state, self.gen)
        score = self.router.score(step)
        want_cloud = self.router.use_cloud(score, step)
        window = max((self.gen.decision_tokens or 0) - self.produced_total, 0)
        if self.cloud is not None and (window or self.markers.active()):
            want_cloud = True  # a decision point: the cloud decides it whatever the score
            self.ledger.decision_checks += 1
        return Proposal(candidate, probs, score, want_cloud, fed, window)

    def _keep_local(self, p: Proposal) -> list[Produced]:
        if not p.fed:
            self.state.append(p.candidate)
        source: TokenSource = "fallback" if p.want_cloud and self.cloud_down else "local"
        return [Produced(p.candidate, source, p.score, p.candidate)]

    def _cloud_per_token(self) -> list[Produced]:
        """Per-token always-cloud routing: the cloud supplies every token in its own call (measurement only;
        router 'cloud' asks for the whole answer in one request)."""
        m = self.strategy.size() if isinstance(self.strategy, Replace) else 1
        reply = self.call(lambda prefix: self.cloud.next_tokens(prefix, self.gen, m, self.seed()), len(self.state.ids))
        if reply is None:
            logits, _ = self.state.forward()
            return self._keep_local(Proposal(choose(logits, self.gen, self.rng), None, None, True, False))
        new_ids = self.reply_ids(reply)
        self.state.append(new_ids)
        return [Produced(t, "cloud") for t in new_ids]

    # -- what the cloud modes use -----------------------------------------------------------------------

    def seed(self) -> int | None:
        return self.gen.seed + len(self.state.ids) if self.gen.seed is not None else None

    def call(self, request: Any, prefix_len: int, drafts: list[int] | None = None) -> Any:
        """Run one cloud request on the prefix (``drafts``: what the request appends to it); book it; None
        when the cloud failed and we continue locally."""
        prefix = self.state.ids[:prefix_len]
        prompt: list[int] | str = prefix if self.use_ids else self.tokenizer.decode(prefix, skip_special_tokens=False)
        try:
            with self.state.away():  # other requests' SLM steps go ahead while this one waits on the cloud
                reply = request(prompt)
        except CloudError as e:
            self.cloud_failed(e, prefix_len)
            return None
        self.book(reply, prefix + (drafts or []), echo=drafts is not None)
        return reply

    def book(self, reply: Any, sent: list[int], echo: bool = False) -> None:
        """Book an answered call whose prompt was ``sent`` (the prefix a prompt cache may already hold)."""
        book_call(self.ledger, reply, self.ctx.prices, shared_prefix(sent, self.sent))
        self.guard.spend(sent, reply.usage.prompt_tokens, reply.usage.completion_tokens, echo)
        self.sent = sent

    def cloud_failed(self, e: CloudError, kept_len: int) -> None:
        """A failed call: raise with everything generated so far (on_failure='raise'), or go on locally."""
        self.ledger.failed_cloud_calls += 1
        if self.cloud is None or self.cloud.config.on_failure == "raise":
            # the same error (its type says whether the breaker skipped the call), now carrying the text
            # released so far and the tokens behind it: nothing generated is lost
            e.partial_text = self.release.text
            e.partial_token_ids = self.state.ids[self.n_prompt:kept_len]
            e.ledger = self.ledger.model_copy()  # what the request used up to the fault, failed call included
            raise e
        self.cloud_down = True  # no more round trips in this request that would each time out

    def reply_ids(self, reply: CloudReply) -> list[int]:
        """SLM token ids for the cloud's reply; [eos] when the cloud ended the answer.

        Text hand-over (different tokenizers): the generated text plus the cloud's piece is re-tokenized,
        the SLM's ids are rolled back to the common prefix, and the differing tail is returned.
        """
        eos = next(iter(self.eos))
        if self.use_ids and reply.tokens and all(t.token_id is not None for t in reply.tokens):
            return [t.token_id for t in reply.tokens]  # type: ignore[misc]
        if not reply.text:
            return [eos]
        generated = self.state.ids[self.n_prompt:]
        old_text = self.tokenizer.decode(generated, skip_special_tokens=False)
        new_ids = self.tokenizer.encode(old_text + reply.text, add_special_tokens=False)
        common = 0
        for a, b in zip(generated, new_ids):
            if a != b:
                break
            common += 1
        self.state.truncate(self.n_prompt + common)
        tail = new_ids[common:]
        return tail or [eos]

    # -- emission ---------------------------------------------------------------------------------------

    def _drop_from(self, n_generated: int) -> None:
        self.state.truncate(self.n_prompt + n_generated)

    def _emit(self, item: Produced, index: int, latency: float) -> TokenEvent | None:
        """Book one produced token and release its text; None when the answer ends here."""
        if item.token_id in self.eos:
            self._drop_from(index)
            self.finish = "stop"
            self.ended_by_eos = True
            return None
        book_token(self.ledger, item.source)
        self.ledger.handed_off_tokens += item.handed_off
        piece, stopped = self.release.update(self.state.ids[self.n_prompt: self.n_prompt + index + 1])
        self.markers.update(self.release.text)
        if stopped:
            self.finish = "stop"
            self._drop_from(index + 1)
        event = TokenEvent(piece, item.token_id, item.source, item.score, latency, item.candidate)
        self.events.append(event)
        return event
