"""One request's decode: the SLM proposes, the router decides, the cloud replaces or verifies.

``RequestDecoder`` holds the request's state (SLM KV cache, ledger, released text) and runs the loop; each
cloud mode is one method that returns the tokens it produced and leaves the SLM's ids in step with them.
Emission (EOS, stop sequences, max tokens, text release) is shared by all modes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .accounting import UsageLedger, call_cost, cloud_only_cost
from .cloud.client import CallUsage, CloudReply
from .cloud.verify import verify_draft
from .config import GenerationConfig
from .errors import CloudError
from .events import FinishReason, GenerationResult, TokenEvent, TokenSource
from .local.sampling import choose, warp
from .routing import Router, RouterStep
from .stopping import find_stop, releasable_length

if TYPE_CHECKING:
    from .engine import HybridEngine

ID_MODES = ("verify", "block_verify", "lookahead")


@dataclass
class Produced:
    token_id: int
    source: TokenSource
    score: float | None = None
    candidate: int | None = None


@dataclass
class Proposal:
    """The SLM's candidate for the next position and the router's verdict."""

    candidate: int
    probs: torch.Tensor | None  # the SLM's warped distribution (kept for sampling verification)
    score: float | None
    want_cloud: bool
    fed: bool  # the candidate is already appended to the SLM state (trunk reward scoring)


class RequestDecoder:
    """The decode loop of one request."""

    def __init__(self, engine: HybridEngine, prompt_ids: list[int], gen: GenerationConfig, router: Router):
        self.engine = engine
        self.gen = gen
        self.router = router
        self.tokenizer = engine.tokenizer
        self.state = engine.local.new_state(list(prompt_ids))
        self.n_prompt = len(prompt_ids)
        self.eos = engine.local.eos_token_ids
        self.rng = torch.Generator().manual_seed(gen.seed) if gen.seed is not None else None
        self.scorer_state = router.new_scorer_state()
        self.cloud = engine.cloud
        self.use_ids = self.cloud.shares_tokenizer(self.tokenizer) if self.cloud is not None else True
        self.mode = self._pick_mode(gen.cloud_mode)
        self.ledger = UsageLedger(requests=1, prompt_tokens=self.n_prompt, cloud_mode=self.mode)
        self.events: list[TokenEvent] = []
        self.text = ""
        self.released = 0
        self.cloud_down = False
        self.finish: FinishReason = "length"
        self.draft_k = gen.draft_tokens
        self.lookahead_m = 1
        self.last_was_cloud = False
        self.calls = 0

    # -- set-up -----------------------------------------------------------------------------------------

    def _pick_mode(self, requested: str) -> str:
        """The mode this request really uses; the ledger records it."""
        if self.cloud is None:
            return "none"
        if requested == "replace" or not self.use_ids:
            return "replace"  # verification needs one token space: text hand-over is one token per call
        if requested == "lookahead":
            return requested
        if not self.router.needs_slm:
            return "replace"  # always-cloud: the SLM drafts nothing to verify
        caps = self.cloud.probe(self.tokenizer)
        if requested == "auto":
            return caps.best_mode()
        if requested == "block_verify" and not caps.echo_logprobs:
            return "verify"
        return requested

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self, out: Any) -> Iterator[TokenEvent]:
        try:
            yield from self._run(out)
        finally:
            self.state.close()  # finished, failed or cancelled: the row leaves the batch

    def _run(self, out: Any) -> Iterator[TokenEvent]:
        produced_total = 0
        # the answer also ends where the SLM's context does (the engine refused prompts that fill it)
        limit = min(self.gen.max_new_tokens, self.engine.local.context_length - self.n_prompt)
        while produced_total < limit and self.finish != "stop":
            t0 = time.perf_counter()
            cloud_before = self.ledger.cloud_seconds
            produced = self._step()
            step_s = time.perf_counter() - t0
            self.ledger.local_seconds += step_s - (self.ledger.cloud_seconds - cloud_before)
            for item in produced:
                if produced_total >= limit:
                    self._drop_from(produced_total)
                    break
                event = self._emit(item, produced_total, step_s / max(len(produced), 1))
                if event is None:  # EOS or a stop sequence ended the answer
                    break
                produced_total += 1
                yield event
                if self.finish == "stop":
                    break
        yield from self._flush()
        self.ledger.cloud_only_cost_usd = cloud_only_cost(self.engine.prices, self.n_prompt,
                                                          self.ledger.generated_tokens)
        out.result = GenerationResult(
            text=self.text,
            token_ids=self.state.ids[self.n_prompt:],
            events=self.events,
            ledger=self.ledger,
            finish_reason=self.finish,
            prompt_token_ids=self.state.ids[: self.n_prompt],
        )

    def _step(self) -> list[Produced]:
        if not self.router.needs_slm and not self.cloud_down:
            produced = self._cloud_only()
        else:
            proposal = self._propose()
            if not proposal.want_cloud or self.cloud_down:
                produced = self._keep_local(proposal)
            elif self.mode == "block_verify":
                produced = self._block_verify(proposal)
            elif self.mode == "verify":
                produced = self._verify(proposal)
            else:
                produced = self._replace(proposal)
        self.last_was_cloud = any(p.source == "cloud" for p in produced)
        return produced

    def _propose(self) -> Proposal:
        logits, _ = self.state.forward()
        probs = None if self.gen.greedy else warp(logits, self.gen)
        candidate = choose(logits, self.gen, self.rng)
        fed = False
        hidden = None
        if self.router.needs_hidden:
            self.state.append(candidate)
            fed = True
            _, hidden = self.state.forward(need_hidden=True)
        ids = self.state.ids if fed else self.state.ids + [candidate]
        step = RouterStep(logits, candidate, ids, hidden, self.scorer_state, self.gen)
        score = self.router.score(step)
        want_cloud = self.router.use_cloud(score, step)
        return Proposal(candidate, probs, score, want_cloud, fed)

    # -- the modes --------------------------------------------------------------------------------------

    def _keep_local(self, p: Proposal) -> list[Produced]:
        if not p.fed:
            self.state.append(p.candidate)
        source: TokenSource = "fallback" if p.want_cloud and self.cloud_down else "local"
        self.router.update(False, True)
        return [Produced(p.candidate, source, p.score, p.candidate)]

    def _cloud_only(self) -> list[Produced]:
        m = self._lookahead_size()
        reply = self._call(lambda prefix: self.cloud.next_tokens(prefix, self.gen, m, self._seed()), len(self.state.ids))
        if reply is None:
            return self._keep_local(self._propose_fallback())
        new_ids = self._reply_ids(reply)
        self.state.append(new_ids)
        self.router.update(True, False)
        return [Produced(t, "cloud") for t in new_ids]

    def _replace(self, p: Proposal) -> list[Produced]:
        prefix_len = len(self.state.ids) - p.fed
        m = self._lookahead_size()
        reply = self._call(lambda prefix: self.cloud.next_tokens(prefix, self.gen, m, self._seed()), prefix_len)
        if reply is None:
            return self._keep_local(p)
        fed = p.fed
        if fed and not (self.use_ids and reply.first.token_id == p.candidate):
            self.state.truncate(prefix_len)  # the one-token roll-back when a fed candidate is replaced
            fed = False
        new_ids = self._reply_ids(reply)
        self.state.append(new_ids[1:] if fed else new_ids)
        self.router.update(True, new_ids[0] == p.candidate)
        return [Produced(new_ids[0], "cloud", p.score, p.candidate)] + [Produced(t, "cloud") for t in new_ids[1:]]

    def _verify(self, p: Proposal) -> list[Produced]:
        prefix_len = len(self.state.ids) - p.fed
        k = self.cloud.capabilities.max_logprobs or self.cloud.config.logprobs
        reply = self._call(lambda prefix: self.cloud.next_token(prefix, self.gen, self._seed(), logprobs=k),
                           prefix_len)
        if reply is None:
            return self._keep_local(p)
        token, accepted = verify_draft(p.candidate, p.probs, reply.first.top_logprobs, self.gen, self.rng)
        self.ledger.cloud_checked_tokens += 1
        self.ledger.accepted_drafts += accepted
        if p.fed and not accepted:
            self.state.truncate(prefix_len)
        if not p.fed or not accepted:
            self.state.append(token)
        self.router.update(True, accepted)
        return [Produced(token, "verified" if accepted else "cloud", p.score, p.candidate)]

    def _block_verify(self, p: Proposal) -> list[Produced]:
        """Draft up to k tokens from the flagged position, check them all in one echo call."""
        prefix_len = len(self.state.ids) - p.fed
        drafts, probs = [p.candidate], [p.probs]
        if not p.fed:
            self.state.append(p.candidate)
        while len(drafts) < self.draft_k and drafts[-1] not in self.eos:
            logits, _ = self.state.forward()
            probs.append(None if self.gen.greedy else warp(logits, self.gen))
            nxt = choose(logits, self.gen, self.rng)
            drafts.append(nxt)
            self.state.append(nxt)
        k = self.cloud.capabilities.max_logprobs or self.cloud.config.logprobs
        block = self._call(lambda prefix: self.cloud.score_block(prefix, drafts, self.gen, self._seed(), k),
                           prefix_len)
        if block is None:
            self.state.truncate(prefix_len + 1)
            return self._keep_local(Proposal(p.candidate, None, p.score, True, True))
        produced: list[Produced] = []
        all_accepted = True
        self.ledger.cloud_checked_tokens += len(drafts)
        for j, draft in enumerate(drafts):
            token, accepted = verify_draft(draft, probs[j], block.positions[j], self.gen, self.rng)
            score = p.score if j == 0 else None
            if not accepted:
                all_accepted = False
                self.state.truncate(prefix_len + j)
                self.state.append(token)
                produced.append(Produced(token, "cloud", score, draft))
                break
            self.ledger.accepted_drafts += 1
            produced.append(Produced(draft, "verified", score, draft))
            if draft in self.eos:
                break
        else:
            bonus = block.bonus.token_id
            if bonus is not None:
                self.state.append(bonus)
                produced.append(Produced(bonus, "cloud"))
        # adaptive k, as transformers' assisted generation: grow after a clean block, shrink after a miss
        if all_accepted:
            self.draft_k = min(self.draft_k + 2, self.gen.max_draft_tokens)
        else:
            self.draft_k = max(1, self.draft_k - 1)
        self.router.update(True, all_accepted)
        return produced

    # -- helpers ----------------------------------------------------------------------------------------

    def _seed(self) -> int | None:
        return self.gen.seed + len(self.state.ids) if self.gen.seed is not None else None

    def _lookahead_size(self) -> int:
        """lookahead mode: double m while consecutive steps go to the cloud, back to 1 after a local one."""
        if self.mode != "lookahead" or not self.use_ids:
            return 1
        self.lookahead_m = min(self.lookahead_m * 2, self.gen.max_lookahead) if self.last_was_cloud else 1
        return self.lookahead_m

    def _propose_fallback(self) -> Proposal:
        logits, _ = self.state.forward()
        return Proposal(choose(logits, self.gen, self.rng), None, None, True, False)

    def _call(self, request: Any, prefix_len: int) -> Any:
        """Run one cloud request on the prefix; book it; None when the cloud failed and we continue locally."""
        prefix = self.state.ids[:prefix_len]
        prompt: list[int] | str = prefix if self.use_ids else self.tokenizer.decode(prefix, skip_special_tokens=False)
        try:
            with self.state.away():  # other requests' SLM steps go ahead while this one waits on the cloud
                reply = request(prompt)
        except CloudError as e:
            self.ledger.failed_cloud_calls += 1
            if self.cloud is None or self.cloud.config.on_failure == "raise":
                # the same error (its type says whether the breaker skipped the call), now carrying the text
                # released so far and the tokens behind it: nothing generated is lost
                e.partial_text = self.text
                e.partial_token_ids = self.state.ids[self.n_prompt:prefix_len]
                raise
            self.cloud_down = True  # no more round trips in this request that would each time out
            return None
        usage: CallUsage = reply.usage
        led = self.ledger
        led.cloud_calls += 1
        led.billed_prompt_tokens += usage.prompt_tokens
        led.billed_completion_tokens += usage.completion_tokens
        led.cached_prompt_tokens += usage.cached_tokens
        led.cost_usd += call_cost(self.engine.prices, usage.prompt_tokens, usage.completion_tokens,
                                  usage.cached_tokens)
        led.cloud_seconds += reply.latency_s
        return reply

    def _reply_ids(self, reply: CloudReply) -> list[int]:
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

    def _drop_from(self, n_generated: int) -> None:
        self.state.truncate(self.n_prompt + n_generated)

    def _emit(self, item: Produced, index: int, latency: float) -> TokenEvent | None:
        """Book one produced token and release its text; None when the answer ends here."""
        if item.token_id in self.eos:
            self._drop_from(index)
            self.finish = "stop"
            return None
        led = self.ledger
        if item.source == "cloud":
            led.cloud_tokens += 1
        else:
            led.local_tokens += 1
            led.fallback_tokens += item.source == "fallback"
        stops = self.gen.stop
        self.text = self.tokenizer.decode(self.state.ids[self.n_prompt: self.n_prompt + index + 1],
                                          skip_special_tokens=True)
        window = max((len(s) for s in stops), default=0)
        stop_at = find_stop(self.text, stops, max(0, self.released - window))
        if stop_at is not None:
            self.text = self.text[:stop_at]
            self.finish = "stop"
            self._drop_from(index + 1)
        release_to = len(self.text) if stop_at is not None else releasable_length(self.text, stops)
        piece = self.text[self.released:release_to] if release_to > self.released else ""
        self.released = max(self.released, release_to)
        event = TokenEvent(piece, item.token_id, item.source, item.score, latency, item.candidate)
        self.events.append(event)
        return event

    def _flush(self) -> Iterator[TokenEvent]:
        """Release what was held back for a possible stop sequence once the answer is over."""
        if self.released < len(self.text):
            last = self.events[-1]
            tail = TokenEvent(self.text[self.released:], last.token_id, last.source, None, 0.0)
            self.released = len(self.text)
            self.events.append(tail)
            yield tail
