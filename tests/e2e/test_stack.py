"""`rstar stack up | status | down` on a stack of its own: idempotent start, health, clean stop, clear errors.

This module starts a second, independent stack (its own RSTAR_HOME and free ports) so it can take it down without
disturbing the session's shared one. Checks:

- `up` twice (the second time from a shell that sourced the env file): the second call starts nothing (same PIDs,
  no extra processes) and rewrites the same env file.
- `status` prints every URL and says healthy; the env file is sourceable by a shell and points at the stack.
- `down`: the worker goes first with SIGINT, then the servers; no process carrying the stack's marker survives,
  the ports are free again, the env file is gone; a second `down` is a no-op.
- a port held by someone else fails `up` with a message naming the port and the flag to change it.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from infra.stack import apply_env, processes_with_marker, read_env_file
from tests.e2e.test_stack_shared import clean_env, rstar

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = ["s3", "mlflow", "prefect", "worker"]


def pids(home: Path) -> dict[str, int]:
    return {name: json.loads((home / "stack" / f"{name}.pid").read_text())["pid"] for name in SERVICES}


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_up_is_idempotent_status_reports_health_and_down_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = clean_env(home)
    first = rstar(["stack", "up", "--prefect-port", "0", "--mlflow-port", "0", "--s3-port", "0"], env)
    try:
        assert first.returncode == 0, first.stderr
        assert "4 started, 0 already running" in first.stdout
        state = json.loads((home / "stack" / "state.json").read_text())
        marker = f"{state['stack_id']}:"
        started = pids(home)
        running_before = processes_with_marker(marker)
        assert set(started.values()) <= set(running_before)

        env_file = home / "stack" / "env"
        written = env_file.read_text().split("\n", 1)[1]  # without the timestamp line
        # Again, from a shell that sourced the env file (its s3:// URL must not turn moto into an "external" store).
        second = rstar(["stack", "up"], apply_env(env, read_env_file(env_file)))
        assert second.returncode == 0, second.stderr
        assert "0 started, 4 already running" in second.stdout
        assert pids(home) == started
        assert processes_with_marker(marker) == running_before  # not one extra process
        assert env_file.read_text().split("\n", 1)[1] == written

        status = rstar(["stack", "status"], env)
        assert status.returncode == 0, status.stdout + status.stderr
        for name in SERVICES:
            assert f"pid {started[name]}" in status.stdout
        assert status.stdout.count("healthy") == 4
        assert state["urls"]["prefect_ui"] in status.stdout and state["urls"]["mlflow"] in status.stdout

        echoed = subprocess.run(
            ["bash", "-c", f"source {env_file} && echo $PREFECT_API_URL $RSTAR_ARTIFACT_URL $AWS_PROFILE."],
            env={**env, "AWS_PROFILE": "someone-else"}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert echoed.stdout.split() == [state["urls"]["prefect_api"], "s3://rstar-artifacts/evolve", "."]
    finally:
        down = rstar(["stack", "down"], env, timeout=180)
    assert down.returncode == 0, down.stderr
    assert "stopped worker, prefect, mlflow, s3" in down.stdout  # the worker first, gracefully
    assert "SIGINT" in down.stderr.splitlines()[0]
    assert processes_with_marker(marker) == []
    for port in state["ports"].values():
        assert port_is_free(int(port))
    assert not env_file.exists()

    again = rstar(["stack", "down"], env)
    assert again.returncode == 0 and "nothing" in again.stdout
    gone = rstar(["stack", "status"], env)
    assert gone.returncode == 1 and "not running" in gone.stdout


def test_a_taken_port_fails_up_with_a_message_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = clean_env(tmp_path / "home")
        proc = rstar(["stack", "up", "--prefect-port", str(taken), "--mlflow-port", "0", "--s3-port", "0"], env)
    assert proc.returncode == 1
    assert f"port {taken}" in proc.stderr and "--prefect-port" in proc.stderr
    assert not (tmp_path / "home" / "stack" / "prefect.pid").exists()  # nothing was started
