"""Real services for end-to-end tests, started by the tests themselves on 127.0.0.1 random ports.

- `moto_endpoint`: an S3 HTTP endpoint (moto's `ThreadedMotoServer`, a thread of this process), once per session.
- `aws_env`: fake credentials and no user AWS config, so boto3 talks only to that endpoint.
- `s3_bucket`: a fresh bucket per test.
- `mlflow_server`: a real `mlflow server` subprocess with a SQLite backend in a temporary folder, once per session
  (~10 s to start, launched right after collection), killed with its whole process group at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}
UNSET_AWS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def aws_env_session() -> Iterator[dict[str, str]]:
    """Fake credentials for the whole session (subprocesses started by tests inherit them)."""
    saved = {k: os.environ.get(k) for k in (*FAKE_AWS, *UNSET_AWS)}
    os.environ.update(FAKE_AWS)
    for k in UNSET_AWS:
        os.environ.pop(k, None)
    yield dict(FAKE_AWS)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def aws_env(aws_env_session: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in aws_env_session.items():  # restore whatever a previous test changed
        monkeypatch.setenv(k, v)
    return aws_env_session


@pytest.fixture
def s3_client(moto_endpoint: str, aws_env: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    name = f"rstar-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def _wait_for_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"mlflow server not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


class _MlflowServer:
    """One `mlflow server` process for the session, launched as soon as collection shows a test needs it, so its
    ~10 s start overlaps the tests that run before the first MLflow test."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = Path()
        self.scratch: Path | None = None  # a folder made outside pytest's tmp_path, removed at the end

    def launch(self, root: Path) -> None:
        if self.proc is not None:
            return
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / "server.log"
        env = {
            **os.environ,
            # Without this the server starts seven extra ~270 MB job-runner processes.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
        cmd += [
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


_MLFLOW = _MlflowServer()


def pytest_collection_finish(session: pytest.Session) -> None:
    """After selection (-k, -m): start the server now if a selected test will need it."""
    if any("mlflow_server" in getattr(item, "fixturenames", ()) for item in session.items):
        _MLFLOW.scratch = Path(tempfile.mkdtemp(prefix="rstar-mlflow-server-"))
        _MLFLOW.launch(_MLFLOW.scratch)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _MLFLOW.stop()  # also when no test ended up using it


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real MLflow tracking server (SQLite backend, proxied artifacts in a temporary folder)."""
    _MLFLOW.launch(tmp_path_factory.mktemp("mlflow-server"))
    assert _MLFLOW.proc is not None
    try:
        _wait_for_health(_MLFLOW.url, _MLFLOW.proc, _MLFLOW.log, timeout_s=180)
        yield _MLFLOW.url
    finally:
        _MLFLOW.stop()
