"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an OpenAI-compatible server (the real vLLM).

The client under test talks to the proxy exactly as to the server; the proxy forwards, or injects the fault
of its current mode. Modes switch at runtime (``proxy.set("503", count=2)``: the next two completion
requests fail, then requests pass again):

- ``pass``: forward unchanged;
- ``refuse``: nothing listens on the port (connection refused) until ``set("pass")``;
- ``hang``: read the request and answer nothing for ``hang_s`` (the client's timeout fires);
- ``429``: rate limited, with ``Retry-After: retry_after`` seconds;
- ``500`` / ``502`` / ``503``: server errors;
- ``bad_json``: 200 with a truncated JSON body;
- ``no_logprobs``: forward, then strip ``logprobs`` from every choice;
- ``kill``: the server dies mid-answer: the reply is cut after half its body and the port then refuses
  connections (``set("pass")`` brings it back, as a restarted server).

Only ``/v1/completions`` requests get faults (other paths pass, except under ``refuse`` / after ``kill``).
Without an upstream the proxy answers completions itself, so the fast tests run the same faults without
vLLM: with one canned token (``stub_token_id``), or, given ``stub_tokens`` (token id -> text), with a token
that depends on the prompt it was sent (a hash of the prefix picks it), so a request that sent another
request's prefix would get another request's token. ``api_key`` makes it answer 401 to any other key, as
``vllm serve --api-key`` does.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT_MODES = ("refuse", "hang", "429", "500", "502", "503", "bad_json", "no_logprobs", "kill")


class FaultProxy:
    def __init__(self, upstream: str | None = None, *, hang_s: float = 30.0, retry_after: float = 1.0,
                 stub_tokens: dict[int, str] | None = None,
                 api_key: str | None = None, stub_token_id: int = 5, stub_text: str = "x"):
        self.upstream = upstream.rstrip("/").removesuffix("/v1") if upstream else None
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.api_key = api_key
        self.stub_token_id = stub_token_id
        self.stub_text = stub_text
        self.stub_tokens = sorted((stub_tokens or {}).items())
        self.mode = "pass"
        self.count: int | None = None  # faults left in this mode (None: until changed)
        self.after = 0  # completion requests to pass before the faults start
        self.lock = threading.Lock()
        self.completions = 0  # completion requests seen
        self.injected: Counter[str] = Counter()  # faults injected, by mode
        self.auth_headers: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closing: threading.Thread | None = None
        self.port = 0
        self._listen()

    # -- control ------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set(self, mode: str, count: int | None = None, after: int = 0) -> None:
        """Switch mode; ``count`` limits the fault to that many completion requests, ``after`` lets that many
        pass first (a server that dies in the middle of a generation)."""
        assert mode == "pass" or mode in FAULT_MODES, mode
        with self.lock:
            self.mode, self.count, self.after = mode, count, after
        if self._closing is not None:  # a killed server finishes dying before it restarts
            self._closing.join()
            self._closing = None
        if mode == "refuse":
            self._close()
        elif self._server is None:
            self._listen()

    def close(self) -> None:
        self._close()

    def __enter__(self) -> FaultProxy:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the server ---------------------------------------------------------------------------------------
    def _listen(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _take_fault(self) -> str:
        """The fault for this completion request (and count it)."""
        with self.lock:
            self.completions += 1
            mode = self.mode
            if mode == "pass":
                return mode
            if self.after > 0:
                self.after -= 1
                return "pass"
            self.injected[mode] += 1
            if self.count is not None:
                self.count -= 1
                if self.count <= 0:
                    self.mode, self.count = "pass", None
            return mode

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                      cut: bool = False) -> None:
                self.send_response(status)
                sse = body.startswith(b"data:")  # a streamed completion, forwarded whole
                self.send_header("Content-Type", "text/event-stream" if sse else "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.wfile.flush()
                if cut:
                    self.close_connection = True

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                body = json.dumps({"error": {"message": message, "type": "fault_proxy", "code": status}})
                self._send(status, body.encode(), headers)

            def do_GET(self) -> None:
                self._forward(b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                proxy.auth_headers.append(self.headers.get("Authorization", ""))
                if proxy.api_key is not None and self.headers.get("Authorization") != f"Bearer {proxy.api_key}":
                    self._error(401, "Unauthorized")
                    return
                if not self.path.endswith("/completions"):
                    self._forward(body)
                    return
                fault = proxy._take_fault()
                if fault == "hang":
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
                    return
                if fault == "429":
                    self._error(429, "rate limited", {"Retry-After": f"{proxy.retry_after:g}"})
                    return
                if fault in ("500", "502", "503"):
                    self._error(int(fault), f"fault proxy: {fault}")
                    return
                if fault == "bad_json":
                    self._send(200, b'{"id": "cmpl-1", "choices": [{"text": "x", "logpr')
                    return
                if fault == "refuse":  # a request that raced the close: drop it like a dead port
                    self.close_connection = True
                    return
                status, data = self._upstream(body)
                if fault == "no_logprobs" and status == 200 and not data.startswith(b"data:"):
                    reply = json.loads(data)
                    for choice in reply.get("choices", []):
                        choice["logprobs"] = None
                    data = json.dumps(reply).encode()
                if fault == "kill":
                    self._send(status, data, cut=True)
                    proxy._closing = threading.Thread(target=proxy._close, daemon=True)
                    proxy._closing.start()
                    return
                self._send(status, data)

            def _forward(self, body: bytes) -> None:
                if proxy.upstream is None:
                    if self.path.endswith("/models"):
                        self._send(200, json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]})
                                   .encode())
                    else:
                        self._error(404, "not found")
                    return
                status, data = self._upstream(body)
                self._send(status, data)

            def _upstream(self, body: bytes) -> tuple[int, bytes]:
                if proxy.upstream is None:
                    return proxy.stub_reply(body)
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body or None, method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")},
                )
                try:
                    with urllib.request.urlopen(request, timeout=300) as resp:
                        return resp.status, resp.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.read()

        return Handler

    def stub_reply(self, body: bytes) -> tuple[int, bytes]:
        """A well-formed completion of the same token, with logprobs; 404 for a model other than 'stub'."""
        params = json.loads(body or b"{}")
        if params.get("model") != "stub":
            message = f"The model `{params.get('model')}` does not exist."
            return 404, json.dumps({"error": {"message": message, "type": "NotFoundError", "code": 404}}).encode()
        n = int(params.get("max_tokens") or 1)
        prompt = params.get("prompt")
        n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt))
        token_id, text = self.stub_token_id, self.stub_text
        if self.stub_tokens:  # the prefix decides the token: a deterministic hash of what was sent
            digest = sum((i + 1) * 7919 * int(t) for i, t in enumerate(prompt)) if isinstance(prompt, list) \
                else sum(map(ord, str(prompt)))
            token_id, text = self.stub_tokens[digest % len(self.stub_tokens)]
        key = f"token_id:{token_id}"
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
        if params.get("stream"):  # server-sent events, one token per chunk, then the usage, as vLLM streams
            head = {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": params["model"]}
            one = {"tokens": [key], "token_logprobs": [-0.1], "top_logprobs": [{key: -0.1}], "text_offset": [0]}
            events = [dict(head, choices=[{"index": 0, "text": text, "logprobs": one,
                                           "finish_reason": "length" if i == n - 1 else None}])
                      for i in range(n)]
            events.append(dict(head, choices=[], usage=usage))
            return 200, b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        lp = {"tokens": [key] * n, "token_logprobs": [-0.1] * n, "top_logprobs": [{key: -0.1}] * n,
              "text_offset": list(range(n))}
        return 200, json.dumps({
            "id": "cmpl-stub", "object": "text_completion", "created": 0, "model": params.get("model", "stub"),
            "choices": [{"index": 0, "text": text * n, "logprobs": lp, "finish_reason": "length"}],
            "usage": usage,
        }).encode()
