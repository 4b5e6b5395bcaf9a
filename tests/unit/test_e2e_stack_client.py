"""The e2e stack's REST helper retries what Prefect's own client retries, and nothing else.

A loaded CI machine once failed the schedule test on `DELETE .../schedules/{id} -> 503 Service Unavailable`: the
Prefect server answers 503 when its SQLite database is busy and expects the client to retry. These tests pin the
helper's contract against a scripted local HTTP server, without starting a stack.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prefect.client.base
import pytest
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

from tests.e2e import test_stack_shared as shared
from tests.helpers.openai_stub import send_json


@dataclass
class ScriptedServer:
    """Answers each request with the next (status, body) of `answers`; records what it was sent."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)  # the client's pauses between attempts
    port: int = 0

    def stack(self) -> shared.LiveStack:
        state = {"urls": {"prefect_api": f"http://127.0.0.1:{self.port}/api"}}
        return shared.LiveStack(home=Path("/nonexistent"), env={}, state=state, world={}, up_seconds=0.0)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(size)) if size else None
            scripted.requests.append((self.command, self.path, body))
            send_json(self, *scripted.answers.pop(0))

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scripted.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(prefect.client.base.time, "sleep", scripted.pauses.append)
    try:
        yield scripted
    finally:
        httpd.shutdown()
        thread.join(timeout=5)


def test_a_busy_server_is_retried_until_it_answers(server: ScriptedServer) -> None:
    server.answers += [(503, {"exception_message": "Service Unavailable"})] * 2 + [(200, {"id": "x"})]
    assert server.stack().request("DELETE", "/deployments/d/schedules/s") == {"id": "x"}
    assert server.requests == [("DELETE", "/api/deployments/d/schedules/s", None)] * 3
    assert len(server.pauses) == 2 and all(p > 0 for p in server.pauses)


def test_a_client_error_is_not_retried_and_is_reported(server: ScriptedServer) -> None:
    server.answers += [(409, {"detail": "'policy' is a required property"})]
    with pytest.raises(AssertionError, match=r"POST /x -> 409: .*required property"):
        server.stack().request("POST", "/x", {"a": 1})
    assert server.requests == [("POST", "/api/x", {"a": 1})]
    assert server.pauses == []


def test_send_returns_a_client_error_unraised(server: ScriptedServer) -> None:
    server.answers += [(409, {"detail": "no"})]
    resp = server.stack().send("POST", "/deployments/d/create_flow_run", {"parameters": {}})
    assert resp.status_code == 409 and resp.json() == {"detail": "no"}


def test_a_server_that_stays_busy_fails_after_the_last_attempt(server: ScriptedServer) -> None:
    attempts = PREFECT_CLIENT_MAX_RETRIES.value() + 1
    server.answers += [(503, "busy")] * attempts
    with pytest.raises(AssertionError, match='GET /y -> 503: "busy"'):
        server.stack().request("GET", "/y")
    assert len(server.requests) == attempts >= 3
    assert len(server.pauses) >= attempts - 1  # Prefect's client also pauses after its last attempt
    assert server.pauses[-1] > server.pauses[0] > 0  # backing off
