"""A small OpenAI-compatible completions server for tests: scripted, seeded, and able to fail on purpose.

    with OpenAIStub(models=("stub-model",), responder=my_responder, fail_first=2) as stub:
        policy = OpenAIPolicy(stub.url)           # http://127.0.0.1:<random port>/v1
        ...
        assert stub.requests[0]["seed"] == 7

It answers `GET /v1/models` and `POST /v1/completions` the way vLLM does: `n` choices, each cut at the first stop
string, with `finish_reason` ("stop" / "length") and vLLM's `stop_reason` (the matched stop string, or null), and a
`usage` block. What the "model" writes comes from `responder(prompt, choice_index, seed) -> str`; the default writes
a seeded, deterministic pseudo-step so tests can check seed passthrough. Tokens are whitespace-separated words.

Failure injection: `fail_first=k` answers the first k completions requests with HTTP `fail_status` (503 by default);
`report_stop_reason=False` mimics servers that do not say which stop string matched; `include_stop=True` mimics ones
that leave it in the text. It runs `http.server.ThreadingHTTPServer` on a daemon thread: no dependencies.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[str, int, "int | None"], str]


def default_responder(prompt: str, index: int, seed: int | None) -> str:
    """A seeded pseudo-step: same (prompt, index, seed) -> same text; different seeds -> (almost surely) different."""
    rng = random.Random(f"{seed}|{index}|{prompt}")
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return f"# Step: add {a} and {b}\nx = {a} + {b}\n<end_of_step>\nthis text is after the stop"


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer the handler's request with `payload` as JSON and an exact Content-Length (keep-alive safe)."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class OpenAIStub:
    """See the module docstring."""

    def __init__(
        self,
        models: tuple[str, ...] = ("stub-model",),
        responder: Responder = default_responder,
        *,
        fail_first: int = 0,
        fail_status: int = 503,
        report_stop_reason: bool = True,
        include_stop: bool = False,
    ) -> None:
        self.models = models
        self.responder = responder
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.report_stop_reason = report_stop_reason
        self.include_stop = include_stop
        self.requests: list[dict[str, Any]] = []  # bodies of completions requests that were answered 200
        self.attempts = 0  # completions requests received, failed ones included
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                send_json(self, status, payload)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in stub.models]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                if self.path.rstrip("/") != "/v1/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})
                    return
                with stub._lock:
                    stub.attempts += 1
                    fail = stub.attempts <= stub.fail_first
                if fail:
                    self._send(stub.fail_status, {"error": {"message": "overloaded, try again", "code": 503}})
                    return
                if body.get("model") not in stub.models:
                    msg = f"The model `{body.get('model')}` does not exist."
                    self._send(404, {"error": {"message": msg, "type": "NotFoundError", "code": 404}})
                    return
                with stub._lock:
                    stub.requests.append(body)
                self._send(200, stub.complete(body))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-stub", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The completions response for one request body (vLLM's shape)."""
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        max_tokens = int(body.get("max_tokens", 16))
        seed = body.get("seed")
        choices, total = [], 0
        for i in range(int(body.get("n", 1))):
            raw = self.responder(str(body["prompt"]), i, seed)
            cut = [(raw.find(s), s) for s in stops if s in raw]
            text, stop = (raw[: min(cut)[0]], min(cut)[1]) if cut else (raw, None)
            words = text.split(" ")
            if len(words) > max_tokens:  # a "token" is a space-separated word
                text, stop, finish = " ".join(words[:max_tokens]), None, "length"
            else:
                finish = "stop"
            total += min(len(words), max_tokens)
            choice: dict[str, Any] = {
                "index": i,
                "text": text + (stop if stop and self.include_stop else ""),
                "logprobs": None,
                "finish_reason": finish,
            }
            if self.report_stop_reason:
                choice["stop_reason"] = stop
            choices.append(choice)
        return {
            "id": "cmpl-stub",
            "object": "text_completion",
            "created": 0,
            "model": body.get("model"),
            "choices": choices,
            "usage": {"prompt_tokens": len(str(body["prompt"]).split()), "completion_tokens": total},
        }

    def start(self) -> OpenAIStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
