"""The real local stack shared by the platform e2e tests (this module holds fixtures and helpers, no tests).

`live_stack` starts `rstar stack up` once per pytest session (any free ports, an isolated RSTAR_HOME, Prefect's
scheduler polling every 5 s) and registers the deployments with `rstar deploy`; `deployed_round` triggers one
`evolution-round` run through the REST API, exactly the request the Prefect UI sends, and waits for it. Test
modules import the fixtures by name:

    from tests.e2e import test_stack_shared as shared
    live_stack = shared.live_stack  # registers the session fixture `live_stack` in the importing module

Each importing module gets its own session-scoped fixture object, so the stack itself is a process-wide singleton
with a reference count: the first fixture to run starts it, the last to be torn down stops it with
`rstar stack down` and fails the session if any process of the stack survived.

The whole stack talks over 127.0.0.1 only; moto's S3 endpoint uses dummy credentials written by the stack.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parents[2]
# The console script when installed (what a user runs), else the same entry point as a module.
_SCRIPT = Path(sys.executable).with_name("rstar")
RSTAR = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "infra.cli"]
START_TIMEOUT_S = 420
RUN_TIMEOUT_S = 420

# The cheapest round the flow accepts: a scripted policy, two tiny training steps, two evaluation problems.
SEARCH = {"rollouts": 3, "candidates": 2, "extra": {"extra_rollouts_if_unsolved": 0, "max_depth": 4}}
TRAIN_FAST = {"max_steps": 2, "batch_size": 2, "max_length": 256}
EVAL_FAST = {"max_steps": 2, "max_step_tokens": 8}


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without anything that would point the stack at other services or credentials."""
    drop = ("RSTAR_", "PREFECT_", "AWS_", "MLFLOW_", "RAY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        {
            "RSTAR_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "DO_NOT_TRACK": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def rstar(args: list[str], env: dict[str, str], timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RSTAR, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class LiveStack:
    """A running local stack and how to reach it."""

    home: Path
    env: dict[str, str]  # the environment of a client of the stack (base env + the stack's env file)
    state: dict[str, Any]
    world: dict[str, Path]
    up_seconds: float
    deploy_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    _round: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api(self) -> str:
        return str(self.state["urls"]["prefect_api"])

    @property
    def ui(self) -> str:
        return str(self.state["urls"]["prefect_ui"])

    @property
    def mlflow(self) -> str:
        return str(self.state["urls"]["mlflow"])

    @property
    def s3(self) -> str:
        return str(self.state["urls"]["s3"])

    @property
    def stack_id(self) -> str:
        return str(self.state["stack_id"])

    # ------------------------------------------------------------------ REST helpers (what the UI calls)

    def send(self, method: str, path: str, body: Any = None, timeout: float = 30) -> httpx.Response:
        """One API request through Prefect's own HTTP client, which retries 408, 429, 502 and 503 with a growing
        pause (`PREFECT_CLIENT_MAX_RETRIES` times). The server answers 503 "Service Unavailable" when its SQLite
        database is busy (`is_client_retryable_exception`), which happens on a loaded 2-core machine while the
        scheduler and the worker write; the UI and every Prefect client retry it, so a test that did not would
        fail on load, not on a defect. Any other status comes back at once, unraised."""
        from prefect.client.base import PrefectHttpxSyncClient

        with PrefectHttpxSyncClient(base_url=self.api, timeout=timeout, raise_on_all_errors=False) as client:
            return client.request(method, path, json=body)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        resp = self.send(method, path, body, timeout)
        if resp.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {resp.status_code}: {resp.text[:2000]}")
        return resp.json() if resp.content else None

    def deployment(self, flow_name: str, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/deployments/name/{flow_name}/{name}"))

    def wait_flow_run(self, run_id: str, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.request("GET", f"/flow_runs/{run_id}")
            state = run.get("state") or {}
            if state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return dict(run)
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run_id} not finished after {timeout:.0f} s: {state}\n{self.logs()}")
            time.sleep(1.0)

    def logs(self, name: str = "worker", lines: int = 60) -> str:
        path = self.home / "stack" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {path})"

    def round_params(self) -> dict[str, Any]:
        w = self.world
        return {
            "round_idx": 1,
            "problems": str(w["train"]),
            "policy": f"fake:oracle?answers={w['train']}&p_correct=0.5",
            "search": SEARCH,
            "shard_size": 4,
            "training": {"base_model": "tiny:0", "extra": TRAIN_FAST},
            "evaluation": {"benchmarks": [f"world={w['heldout']}"], "limit": 2, "extra": EVAL_FAST},
        }

    def deployed_round(self) -> dict[str, Any]:
        """Trigger `evolution-round` once per session through the API, as the UI does; return the finished run."""
        with self._lock:
            if self._round is None:
                dep = self.deployment("evolution-round", "evolution-round")
                t0 = time.monotonic()
                run = self.request(
                    "POST",
                    f"/deployments/{dep['id']}/create_flow_run",
                    {"parameters": {"params": self.round_params()}, "state": {"type": "SCHEDULED"}},
                )
                self._round = self.wait_flow_run(run["id"])
                self.timings["api_round_s"] = time.monotonic() - t0
            return self._round


def _start(home: Path) -> LiveStack:
    from infra.stack import apply_env, read_env_file
    from rstar.data.world import WorldConfig, generate_world, write_world

    base = clean_env(home)
    t0 = time.monotonic()
    proc = rstar(
        ["stack", "up", "--prefect-port", "0", "--mlflow-port", "0", "--s3-port", "0",
         "--scheduler-loop-seconds", "5", "--timeout", str(START_TIMEOUT_S)],
        base,
    )  # fmt: skip
    up_s = time.monotonic() - t0
    if proc.returncode != 0:
        rstar(["stack", "down"], base, timeout=120)
        raise RuntimeError(f"rstar stack up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    state = json.loads((home / "stack" / "state.json").read_text())
    env = apply_env(base, read_env_file(home / "stack" / "env"))
    world_cfg = WorldConfig(seed=0, train=8, heldout=4, seed_sft=1, levels=(1, 2), level_weights=(0.5, 0.5))
    world = write_world(generate_world(world_cfg), home / "world")
    live = LiveStack(home=home, env=env, state=state, world=world, up_seconds=up_s)
    t1 = time.monotonic()
    dep = rstar(["deploy"], base)
    live.deploy_seconds = time.monotonic() - t1
    if dep.returncode != 0:
        _stop(live)
        raise RuntimeError(f"rstar deploy failed ({dep.returncode}):\n{dep.stdout}\n{dep.stderr}")
    return live


def _stop(live: LiveStack) -> None:
    from infra.stack import processes_with_marker

    down = rstar(["stack", "down"], clean_env(live.home), timeout=180)
    left = processes_with_marker(f"{live.stack_id}:")
    if down.returncode != 0 or left:
        raise RuntimeError(f"rstar stack down left processes {left} ({down.returncode}):\n{down.stdout}\n{down.stderr}")


_SHARED: dict[str, Any] = {"stack": None, "users": 0, "error": None}
_SHARED_LOCK = threading.Lock()


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The session's running stack with the deployments registered (started once, shared by every module)."""
    with _SHARED_LOCK:
        if _SHARED["error"] is not None:
            pytest.fail(f"the shared stack did not start: {_SHARED['error']}")
        if _SHARED["stack"] is None:
            try:
                _SHARED["stack"] = _start(tmp_path_factory.mktemp("stack-home"))
            except Exception as exc:
                _SHARED["error"] = exc
                raise
        _SHARED["users"] += 1
        live: LiveStack = _SHARED["stack"]
    try:
        yield live
    finally:
        with _SHARED_LOCK:
            _SHARED["users"] -= 1
            if _SHARED["users"] == 0 and _SHARED["stack"] is not None:
                _SHARED["stack"] = None
                print(f"\nshared stack timings: up {live.up_seconds:.1f} s, deploy {live.deploy_seconds:.1f} s, "
                      f"{json.dumps({k: round(v, 1) for k, v in live.timings.items()})}")  # fmt: skip
                _stop(live)


def utc_in(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()
