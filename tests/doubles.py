"""Test doubles for the cloud, used only where a real server cannot show the behaviour.

``TransformersCloud`` answers next-token requests from a local transformers model (for fast mechanics tests
on tiny models); ``FaultyServer`` is an HTTP server that fails (500) or hangs, to test retries, timeouts and
fallback against the real openai SDK client.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace as NS
from typing import Any

import torch

from hybrid_llm_adapters.cloud.replies import (
    BlockScore,
    CallUsage,
    CloudReply,
    CloudStream,
    CloudToken,
    EndpointCapabilities,
)
from hybrid_llm_adapters.config import CloudConfig, GenerationConfig
from hybrid_llm_adapters.local.sampling import choose
from hybrid_llm_adapters.local.slm import LocalModel


class TransformersCloud:
    """A cloud that computes its tokens with a local model; same interface as ``CloudClient``."""

    def __init__(self, local: LocalModel, shared_tokenizer: bool = True, echo: bool = True):
        self.local = local
        self.config = CloudConfig(base_url="http://test.invalid/v1", model="tiny-cloud")
        self.shared = shared_tokenizer
        self.capabilities = EndpointCapabilities(shared_tokenizer=shared_tokenizer, echo_logprobs=echo,
                                                 max_logprobs=20)
        self.calls: list[Any] = []

    def shares_tokenizer(self, tokenizer: Any) -> bool:
        return self.shared

    def probe(self, tokenizer: Any) -> EndpointCapabilities:
        return self.capabilities

    def _ids(self, prompt: list[int] | str) -> list[int]:
        return prompt if isinstance(prompt, list) else self.local.tokenizer.encode(prompt, add_special_tokens=False)

    def _top(self, logits: torch.Tensor, k: int) -> dict[int, float]:
        top = torch.topk(torch.log_softmax(logits, -1), k)
        return {int(i): float(v) for i, v in zip(top.indices, top.values)}

    def next_token(self, prompt: list[int] | str, gen: GenerationConfig, seed: int | None = None,
                   logprobs: int | None = None) -> CloudReply:
        return self.next_tokens(prompt, gen, 1, seed, logprobs)

    def next_tokens(self, prompt: list[int] | str, gen: GenerationConfig, n: int, seed: int | None = None,
                    logprobs: int | None = None) -> CloudReply:
        ids = list(self._ids(prompt))
        self.calls.append(prompt)
        rng = torch.Generator().manual_seed(seed) if seed is not None else None
        tokens: list[CloudToken] = []
        finish = "length"
        for _ in range(n):
            with torch.inference_mode():
                logits = self.local.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            token = choose(logits, gen, rng)
            tokens.append(CloudToken(self.local.tokenizer.decode([token], skip_special_tokens=True),
                                     token if self.shared else None, None, self._top(logits, logprobs or 5)))
            ids.append(token)
            if token in self.local.eos_token_ids:
                finish = "stop"
                break
        text = "".join(t.text for t in tokens)
        usage = CallUsage(prompt_tokens=len(self._ids(prompt)), completion_tokens=len(tokens))
        return CloudReply(tokens, usage, 0.0, finish, text)

    def stream_tokens(self, prompt: list[int] | str, gen: GenerationConfig, n: int,
                      seed: int | None = None, prompt_tokens: int | None = None) -> CloudStream:
        """The same tokens as ``next_tokens`` would give, streamed one per chunk through the real CloudStream
        (token ids as vLLM's ``token_id:N`` strings when the tokenizer is shared)."""
        reply = self.next_tokens(prompt, gen, n, seed)

        def chunks() -> Any:
            for i, t in enumerate(reply.tokens):
                key = f"token_id:{t.token_id}" if t.token_id is not None else t.text
                last = reply.finish_reason if i == len(reply.tokens) - 1 else None
                lp = NS(tokens=[key], token_logprobs=[-0.1], top_logprobs=[{key: -0.1}])
                yield NS(usage=None, choices=[NS(text=t.text, logprobs=lp, finish_reason=last)])
            yield NS(usage=NS(prompt_tokens=reply.usage.prompt_tokens, completion_tokens=len(reply.tokens),
                              prompt_tokens_details=None), choices=[])

        return CloudStream(chunks(), reply.usage.prompt_tokens, time.perf_counter(), lambda: None)

    def score_block(self, prefix: list[int], drafts: list[int], gen: GenerationConfig, seed: int | None = None,
                    logprobs: int | None = None) -> BlockScore:
        self.calls.append(prefix + drafts)
        with torch.inference_mode():
            logits = self.local.model(input_ids=torch.tensor([prefix + drafts])).logits[0].float()
        n = len(prefix)
        positions = [self._top(logits[n - 1 + j], logprobs or 5) for j in range(len(drafts))]
        rng = torch.Generator().manual_seed(seed) if seed is not None else None
        bonus = choose(logits[-1], gen, rng)
        usage = CallUsage(prompt_tokens=n + len(drafts), completion_tokens=1)
        return BlockScore(positions, CloudToken("", bonus, "length", self._top(logits[-1], 5)), usage, 0.0)


class FaultyServer:
    """An OpenAI-compatible endpoint that answers 500 (``mode='error'``) or never answers (``'hang'``)."""

    def __init__(self, mode: str = "error", hang_s: float = 30.0):
        self.mode = mode
        self.requests = 0  # /v1/completions requests (the tokenizer probe is not counted)
        self.auth_headers: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.requests += self.path.endswith("/completions")
                outer.auth_headers.append(self.headers.get("Authorization", ""))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.mode == "hang":
                    time.sleep(hang_s)
                body = json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode()
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultyServer:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
