"""The e2e stack's REST helper retries what Prefect's own client retries, and nothing else.

A loaded CI machine once failed the schedule test on `DELETE .../schedules/{id} -> 503 Service Unavailable`: the
Prefect server answers 503 when its SQLite database is busy and expects the client to retry. These tests pin the
helper's contract without starting a stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import test_stack_shared as shared


def make_stack() -> shared.LiveStack:
    state = {"urls": {"prefect_api": "http://127.0.0.1:1/api"}}
    return shared.LiveStack(home=Path("/nonexistent"), env={}, state=state, world={}, up_seconds=0.0)


@dataclass
class FakeServer:
    """Scripted answers to the helper's requests; records each request and each pause."""

    answers: list[httpx.Response] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)

    def request(self, method: str, url: str, json: Any = None, timeout: float = 0) -> httpx.Response:
        self.requests.append((method, url, json))
        return self.answers.pop(0)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(httpx, "request", fake.request)
    monkeypatch.setattr(shared.time, "sleep", fake.pauses.append)
    return fake


def test_a_busy_server_is_retried_until_it_answers(server: FakeServer) -> None:
    server.answers += [httpx.Response(503, json={"exception_message": "Service Unavailable"})] * 2
    server.answers += [httpx.Response(200, json={"id": "x"})]
    assert make_stack().request("DELETE", "/deployments/d/schedules/s") == {"id": "x"}
    assert [r[:2] for r in server.requests] == [("DELETE", "http://127.0.0.1:1/api/deployments/d/schedules/s")] * 3
    assert server.pauses == [shared.RETRY_PAUSE_S, 2 * shared.RETRY_PAUSE_S]


def test_a_client_error_is_not_retried_and_is_reported(server: FakeServer) -> None:
    server.answers += [httpx.Response(409, json={"detail": "'policy' is a required property"})]
    with pytest.raises(AssertionError, match=r"POST /x -> 409: .*required property"):
        make_stack().request("POST", "/x", {"a": 1})
    assert server.requests == [("POST", "http://127.0.0.1:1/api/x", {"a": 1})]
    assert server.pauses == []


def test_a_server_that_stays_busy_fails_after_the_last_attempt(server: FakeServer) -> None:
    server.answers += [httpx.Response(503, text="busy")] * shared.RETRY_ATTEMPTS
    with pytest.raises(AssertionError, match="GET /y -> 503: busy"):
        make_stack().request("GET", "/y")
    assert len(server.requests) == shared.RETRY_ATTEMPTS
    assert len(server.pauses) == shared.RETRY_ATTEMPTS - 1
    assert max(server.pauses) <= 10.0
