"""An OpenAI-compatible model server that is unreachable, or dies mid-run: clear errors, the run goes on, finished
results are kept. The "server" is a few lines of http.server in a thread, speaking just enough of vLLM's API."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from rstar.eval.config import EvalConfig
from rstar.eval.runner import evaluate
from rstar.models.fakes import InProcessExecutor
from rstar.models.policy_openai import OpenAIPolicy
from rstar.types import Problem

PROBLEMS = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(6)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _json(self, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json({"object": "list", "data": [{"id": "adder", "object": "model"}]})

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        nums = [int(t) for t in req["prompt"].replace("?", " ").split() if t.isdigit()]
        text = f"# add\nThe answer is \\boxed{{{sum(nums)}}}"
        choices = [
            {"index": i, "text": text, "finish_reason": "stop", "stop_reason": "<end_of_answer>"}
            for i in range(req.get("n", 1))
        ]
        self._json({"choices": choices, "usage": {"completion_tokens": 9 * len(choices)}})


@pytest.fixture()
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_unreachable_server_is_reported_and_every_cell_finishes(tmp_path: Path) -> None:
    port = closed_port()
    policy = OpenAIPolicy(f"http://127.0.0.1:{port}/v1", "adder", check_model=False, max_retries=0)
    report = evaluate(
        policy,
        {"one": PROBLEMS, "two": PROBLEMS[:2]},
        ["greedy", "maj"],
        [2],
        out_dir=tmp_path,
        executor=InProcessExecutor(),
        config=EvalConfig(batch_size=2),
        plot=False,
    )
    assert len(report.results) == 2 * (6 + 2)
    assert all(not r.correct and r.error for r in report.results)
    first = report.results[0].error or ""
    assert (
        "OpenAIServerError" in first and f"no OpenAI-compatible server answers at http://127.0.0.1:{port}/v1" in first
    )
    assert any("skipped after 2 failed batches" in (r.error or "") for r in report.results)
    assert pl.read_parquet(tmp_path / "results.parquet").height == 16
    assert not report.ok


def test_server_dying_mid_run_keeps_the_finished_batches(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    host, port = server.server_address[:2]
    policy = OpenAIPolicy(f"http://{host!s}:{port}/v1", None, max_retries=0)
    assert policy.model == "adder"  # model=None picks the server's only model

    class DiesAfterFirstBatch:
        calls = 0

        @property
        def model_id(self) -> str:
            return policy.model_id

        def generate(self, prompts, spec, *, seeds=None):
            self.calls += 1
            if self.calls == 2:
                server.shutdown()
                server.server_close()
            return policy.generate(prompts, spec, seeds=seeds)

    report = evaluate(
        DiesAfterFirstBatch(),
        {"toy": PROBLEMS},
        ["greedy"],
        out_dir=tmp_path,
        executor=InProcessExecutor(),
        config=EvalConfig(batch_size=3),
        plot=False,
    )
    assert [r.correct for r in report.results] == [True] * 3 + [False] * 3
    assert [r.error is None for r in report.results] == [True] * 3 + [False] * 3
    assert report.results[0].tokens == 9
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True] * 3 + [False] * 3
