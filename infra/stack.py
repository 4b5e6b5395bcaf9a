"""The local stack: a Prefect server and process worker, an MLflow tracking server and an S3 endpoint, on 127.0.0.1.

    rstar stack up        # start whatever is not running yet (idempotent), wait until healthy, write the env file
    rstar stack status    # URLs, PIDs and health of every service
    rstar stack down      # the worker first (SIGINT), then the servers; whole process groups; nothing left behind
    source .rstar/stack/env && rstar deploy

    from infra.stack import Stack, StackConfig
    stack = Stack(StackConfig.from_settings(get_settings(), prefect_port=0))   # 0: any free port
    report = stack.up()          # StackReport: urls, the env file, what was started / already running
    stack.status()               # list[ServiceStatus]
    stack.down()                 # list of what was stopped

Services (each a process group of its own, started with `start_new_session`):

| name    | what                                                            | health check                            |
|---------|-----------------------------------------------------------------|-----------------------------------------|
| s3      | moto's S3 server (in-memory; `--s3 external` / `off` to skip)   | HTTP answer, then the bucket exists     |
| mlflow  | `mlflow server`, SQLite backend and proxied artifacts in stack/ | `GET /health`                           |
| prefect | `prefect server start` (API + UI + scheduler), SQLite in stack/ | `GET /api/health`                       |
| worker  | `prefect worker start --type process` on the `rstar-process` pool | the API lists the worker ONLINE        |

Everything lives under `<RSTAR_HOME>/stack/` (default `./.rstar/stack/`): `state.json` (ports, URLs, PIDs), one
`<service>.pid` and `<service>.log` per service, the servers' databases, and `env`, a shell file with every variable a
client needs (PREFECT_API_URL, RSTAR_MLFLOW_TRACKING_URI, RSTAR_ARTIFACT_URL, RSTAR_S3_ENDPOINT_URL, moto's dummy
AWS credentials, the work pool names). `rstar deploy` and the worker read it; a shell gets it with `source`.

`up` holds a file lock, so two concurrent `up`s cannot start duplicates; a service whose recorded PID is alive (same
process start time, so a recycled PID is not mistaken for it) is left alone. Ports are fixed by default (Prefect
4200, MLflow 5000, S3 9000); a busy port is reported with the flag that changes it, and port 0 picks a free one.

`down` stops the worker with SIGINT (it ignores SIGTERM) and waits for it to release its flow runs, then SIGTERMs
the servers' process groups, escalating to SIGKILL after a grace period. Every process the stack starts carries
`RSTAR_STACK_SERVICE=<stack id>:<service>` in its environment (flow-run processes inherit it from the worker), so
`down` finally sweeps `/proc` for anything still carrying the stack id, kills it, and reports it.

Nothing listens beyond 127.0.0.1 unless `host` says otherwise; no credential is written anywhere except moto's
fixed dummy keys. With `--s3 external` the stack uses the S3 endpoint and bucket from the settings
(RSTAR_ARTIFACT_URL=s3://..., RSTAR_S3_ENDPOINT_URL) and the AWS_* credentials of the calling environment, which
the worker inherits; the env file then names the endpoint but holds no keys. See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from infra.settings import PROJECT_ROOT, Settings, get_settings, prefect_env

S3Mode = Literal["moto", "external", "off"]
SERVICES: tuple[str, ...] = ("s3", "mlflow", "prefect", "worker")  # start order; `down` stops in reverse
MARKER_VAR = "RSTAR_STACK_SERVICE"
ENV_FILE = "env"
STATE_FILE = "state.json"
DEFAULT_POOL = "rstar-process"
MOTO_CREDENTIALS = {
    # moto accepts any key; these fixed dummies are the only credentials the stack ever writes down.
    "AWS_ACCESS_KEY_ID": "rstar-local",
    "AWS_SECRET_ACCESS_KEY": "rstar-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Variables that would point clients at other AWS credentials or endpoints than moto's: unset in the env file.
MOTO_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class StackError(RuntimeError):
    """The stack cannot be brought up or down; the message says which service, why, and what to do."""


# --------------------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and how it is wired. Ports of 0 mean "any free port" (picked at `up`)."""

    root: Path  # <RSTAR_HOME>/stack
    home: Path  # RSTAR_HOME (absolute)
    project_dir: Path = PROJECT_ROOT
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    s3_port: int = 9000
    s3: S3Mode = "moto"
    bucket: str = "rstar-artifacts"
    prefix: str = "evolve"
    external_artifact_url: str | None = None  # s3:// URL used with s3="external"
    external_s3_endpoint: str | None = None
    work_pool: str = DEFAULT_POOL
    gpu_work_pool: str | None = None  # None: the same pool (one machine has no separate GPU workers)
    worker: bool = True
    worker_limit: int | None = None
    worker_query_seconds: float = 5.0
    scheduler_loop_seconds: float = 60.0
    start_timeout_s: float = 240.0
    stop_timeout_s: float = 30.0
    python: str = sys.executable

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> StackConfig:
        """A config for `settings.home`; `s3` defaults to "external" when the settings already name an s3:// store."""
        settings = settings or get_settings()
        home = settings.home
        base: dict[str, Any] = {"root": home / "stack", "home": home}
        if settings.artifact_url.startswith("s3://"):
            base.update(
                s3="external",
                external_artifact_url=settings.artifact_url,
                external_s3_endpoint=settings.s3_endpoint_url,
            )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @property
    def env_file(self) -> Path:
        return self.root / ENV_FILE

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def results_dir(self) -> Path:
        """Prefect result storage shared by every client of the stack (wiped when a fresh moto starts)."""
        return self.root / "results"

    def services(self) -> tuple[str, ...]:
        return tuple(s for s in SERVICES if (s != "s3" or self.s3 == "moto") and (s != "worker" or self.worker))


@dataclass(frozen=True)
class Ports:
    prefect: int
    mlflow: int
    s3: int | None


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `status` sees it."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str | None
    message: str

    def line(self) -> str:
        state = "healthy" if self.healthy else ("running" if self.running else "stopped")
        pid = f"pid {self.pid}" if self.pid and self.running else "-"
        return f"  {self.name:<8} {state:<8} {pid:<11} {self.url or '':<28} {self.message}"


@dataclass(frozen=True)
class StackReport:
    """What `up` did and where everything is."""

    stack_id: str
    urls: dict[str, str]
    env_file: Path
    started: list[str]
    already_running: list[str]
    seconds: float
    env: dict[str, str | None] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"rstar stack up: {len(self.started)} started, {len(self.already_running)} already running "
                 f"({self.seconds:.1f} s)"]  # fmt: skip
        for name, url in self.urls.items():
            lines.append(f"  {name:<14} {url}")
        lines.append(f"  env file       {self.env_file}")
        lines.append("")
        lines.append(f"  source {self.env_file}    # then: rstar deploy, rstar round ..., prefect ...")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- env file


def render_env_file(env: Mapping[str, str | None], *, header: str = "") -> str:
    """A POSIX shell file: `export K='v'` per variable, `unset K` for None values (sourced by shells, parsed by us)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key in sorted(k for k, v in env.items() if v is None):
        lines.append(f"unset {key}")
    for key in sorted(k for k, v in env.items() if v is not None):
        lines.append(f"export {key}={shlex.quote(str(env[key]))}")
    return "\n".join(lines) + "\n"


def read_env_file(path: Path) -> dict[str, str | None]:
    """Parse what `render_env_file` wrote: {name: value}, None for `unset` lines. Comments and blanks are skipped."""
    out: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words[0] == "unset":
            for name in words[1:]:
                out[name] = None
            continue
        if words[0] == "export":
            words = words[1:]
        for word in words:
            name, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"{path}: cannot parse line {raw!r}")
            out[name] = value
    return out


def apply_env(base: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """`base` with `changes` applied (None removes a variable)."""
    env = dict(base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# --------------------------------------------------------------------------------------------------------- processes


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it does not exist or /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')'. starttime is field 22.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True if `pid` runs and (when known) is the same process that started at `start_time`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if Path(f"/proc/{pid}/stat").exists():
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rfind(")") + 2 :].startswith("Z"):  # a zombie has exited; nothing to stop
            return False
        if start_time is not None:
            return proc_start_time(pid) == start_time
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(pid_alive(pid) for pid in group_members(pgid)) if Path("/proc").is_dir() else True


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is `pgid` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def processes_with_marker(value_prefix: str) -> list[int]:
    """PIDs whose environment holds `RSTAR_STACK_SERVICE=<value_prefix>...` (never this process or its ancestors)."""
    if not Path("/proc").is_dir():
        return []
    needle = f"{MARKER_VAR}={value_prefix}".encode()
    skip = _ancestors(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def _ancestors(pid: int) -> set[int]:
    out = {pid}
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
        out.add(pid)
    return out


def stop_group(pgid: int, first: signal.Signals, timeout_s: float, *, log: Callable[[str], None]) -> bool:
    """Send `first` to the process group, wait up to `timeout_s`, then SIGKILL it. True if it stopped gracefully."""
    try:
        os.killpg(pgid, first)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    log(f"process group {pgid} still running {timeout_s:.0f} s after {first.name}: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_alive(pgid):
        _reap(pgid)
        time.sleep(0.1)
    return False


def _reap(pid: int) -> None:
    """Collect our own exited child (when the stack was started by this process), so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --------------------------------------------------------------------------------------------------------- ports & HTTP


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers. Never follows the proxy settings of the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read() if err.fp else b""
    except (OSError, ValueError):
        return 0, b""


def http_post_json(url: str, body: Any, timeout: float = 5.0) -> tuple[int, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return int(err.code), None
    except (OSError, ValueError):
        return 0, None


# --------------------------------------------------------------------------------------------------------- the stack


@dataclass
class _Proc:
    pid: int
    start_time: int | None
    argv: list[str]


class Stack:
    """The local stack under `config.root`; see the module docstring. Methods are safe to call from any process."""

    def __init__(self, config: StackConfig, *, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    # ---------------------------------------------------------------- state

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.config.state_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.config.root.mkdir(parents=True, exist_ok=True)
        tmp = self.config.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.config.state_file)

    def _pid_file(self, name: str) -> Path:
        return self.config.root / f"{name}.pid"

    def _log_file(self, name: str) -> Path:
        return self.config.root / f"{name}.log"

    def _read_proc(self, name: str) -> _Proc | None:
        try:
            data = json.loads(self._pid_file(name).read_text())
            return _Proc(pid=int(data["pid"]), start_time=data.get("start_time"), argv=list(data.get("argv", [])))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _running(self, name: str) -> _Proc | None:
        proc = self._read_proc(name)
        if proc is not None and pid_alive(proc.pid, proc.start_time):
            return proc
        return None

    @contextlib.contextmanager
    def _lock(self, timeout_s: float = 600) -> Iterator[None]:
        self.config.root.mkdir(parents=True, exist_ok=True)
        with open(self.config.root / ".lock", "w") as fh:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StackError(f"another `rstar stack` command holds {self.config.root / '.lock'}") from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- URLs and env

    def urls(self, ports: Ports) -> dict[str, str]:
        h = self.config.host
        urls = {
            "prefect_ui": f"http://{h}:{ports.prefect}",
            "prefect_api": f"http://{h}:{ports.prefect}/api",
            "mlflow": f"http://{h}:{ports.mlflow}",
            "artifacts": self.artifact_url(),
        }
        s3 = self.s3_endpoint(ports)
        if s3:
            urls["s3"] = s3
        return urls

    def artifact_url(self) -> str:
        c = self.config
        if c.s3 == "moto":
            return f"s3://{c.bucket}/{c.prefix}".rstrip("/")
        if c.s3 == "external":
            if not c.external_artifact_url:
                raise StackError("--s3 external needs RSTAR_ARTIFACT_URL=s3://bucket/prefix in the environment or .env")
            return c.external_artifact_url
        return (c.home / "artifacts").as_uri()

    def s3_endpoint(self, ports: Ports) -> str | None:
        if self.config.s3 == "moto":
            return f"http://{self.config.host}:{ports.s3}"
        if self.config.s3 == "external":
            return self.config.external_s3_endpoint
        return None

    def client_env(self, ports: Ports) -> dict[str, str | None]:
        """Every variable a client of this stack needs (the content of the env file); None = unset."""
        c = self.config
        urls = self.urls(ports)
        s3 = self.s3_endpoint(ports)
        settings = Settings(
            home=c.home,
            artifact_url=self.artifact_url(),
            s3_endpoint_url=s3,
            mlflow_tracking_uri=urls["mlflow"],
            prefect_api_url=urls["prefect_api"],
        )
        env: dict[str, str | None] = dict(prefect_env(settings))
        env.update(
            {
                "PREFECT_API_URL": urls["prefect_api"],
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(c.results_dir),
                "RSTAR_HOME": str(c.home),
                "RSTAR_PREFECT_API_URL": urls["prefect_api"],
                "RSTAR_MLFLOW_TRACKING_URI": urls["mlflow"],
                "RSTAR_ARTIFACT_URL": settings.artifact_url,
                "RSTAR_PROJECT_DIR": str(c.project_dir),
                "RSTAR_CPU_POOL": c.work_pool,
                "RSTAR_GPU_POOL": c.gpu_work_pool or c.work_pool,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "DO_NOT_TRACK": "true",
            }
        )
        if s3:
            env["RSTAR_S3_ENDPOINT_URL"] = s3
        else:
            env["RSTAR_S3_ENDPOINT_URL"] = None
        if c.s3 == "moto":
            env.update(MOTO_CREDENTIALS)
            env.update(dict.fromkeys(MOTO_UNSET))
        return env

    # ---------------------------------------------------------------- service commands

    def _marker(self, stack_id: str, name: str) -> dict[str, str]:
        return {MARKER_VAR: f"{stack_id}:{name}"}

    def _command(
        self, name: str, ports: Ports, client_env: Mapping[str, str | None]
    ) -> tuple[list[str], dict[str, str]]:
        c = self.config
        py = c.python
        base = {k: v for k, v in os.environ.items() if k != MARKER_VAR}
        if name == "s3":
            assert ports.s3 is not None
            return [py, "-m", "moto.server", "-H", c.host, "-p", str(ports.s3)], base
        if name == "mlflow":
            mdir = c.root / "mlflow"
            (mdir / "artifacts").mkdir(parents=True, exist_ok=True)
            argv = [
                py, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{mdir / 'mlflow.db'}",
                "--artifacts-destination", str(mdir / "artifacts"),
                "--host", c.host, "--port", str(ports.mlflow), "--workers", "1",
            ]  # fmt: skip
            env = {
                **base,
                # Without this the server starts seven extra ~270 MB job-runner processes.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
            return argv, env
        if name == "prefect":
            phome = c.root / "prefect-server"
            phome.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in base.items() if not k.startswith("PREFECT_")}
            env.update(
                {
                    "PREFECT_HOME": str(phome),
                    "PREFECT_API_URL": f"http://{c.host}:{ports.prefect}/api",
                    "PREFECT_SERVER_API_HOST": c.host,
                    "PREFECT_SERVER_API_PORT": str(ports.prefect),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
                    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(c.scheduler_loop_seconds),
                    "DO_NOT_TRACK": "true",
                }
            )
            argv = [py, "-m", "prefect", "server", "start", "--host", c.host, "--port", str(ports.prefect)]
            return argv, env
        if name == "worker":
            env = apply_env(base, client_env)
            env["PREFECT_WORKER_QUERY_SECONDS"] = str(c.worker_query_seconds)
            argv = [
                py, "-m", "prefect", "worker", "start",
                "--pool", c.work_pool, "--type", "process", "--name", self.worker_name(),
                "--install-policy", "never",
            ]  # fmt: skip
            if c.worker_limit:
                argv += ["--limit", str(c.worker_limit)]
            return argv, env
        raise ValueError(f"unknown service {name!r}")

    def worker_name(self) -> str:
        return f"rstar-local-{self.config.work_pool}"

    def _spawn(self, name: str, stack_id: str, ports: Ports, client_env: Mapping[str, str | None]) -> _Proc:
        argv, env = self._command(name, ports, client_env)
        env.update(self._marker(stack_id, name))
        log_path = self._log_file(name)
        with open(log_path, "ab") as out:
            out.write(f"\n==== {dt.datetime.now().isoformat(timespec='seconds')} {shlex.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                cwd=self.config.project_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record = _Proc(pid=proc.pid, start_time=proc_start_time(proc.pid), argv=argv)
        self._pid_file(name).write_text(json.dumps(asdict(record)) + "\n")
        return record

    # ---------------------------------------------------------------- health

    def health(self, name: str, ports: Ports) -> tuple[bool, str]:
        """(healthy, message) of one service, by asking it."""
        c = self.config
        if name == "prefect":
            status, body = http_get(f"http://{c.host}:{ports.prefect}/api/health")
            return (status == 200 and body.strip() == b"true"), f"/api/health -> {status or 'no answer'}"
        if name == "mlflow":
            status, _ = http_get(f"http://{c.host}:{ports.mlflow}/health")
            return status == 200, f"/health -> {status or 'no answer'}"
        if name == "s3":
            status, _ = http_get(f"http://{c.host}:{ports.s3}/")
            return status in (200, 403), f"GET / -> {status or 'no answer'}"
        if name == "worker":
            status, workers = http_post_json(
                f"http://{c.host}:{ports.prefect}/api/work_pools/{c.work_pool}/workers/filter", {}
            )
            if status != 200 or not isinstance(workers, list):
                return False, f"work pool {c.work_pool!r} not readable ({status or 'no answer'})"
            mine = [w for w in workers if w.get("name") == self.worker_name()]
            if not mine:
                return False, f"not yet registered with pool {c.work_pool!r}"
            state = str(mine[0].get("status", "?"))
            return state == "ONLINE", f"pool {c.work_pool} ({state.lower()})"
        raise ValueError(name)

    def _wait_healthy(self, names: list[str], ports: Ports, procs: Mapping[str, _Proc]) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        pending = list(names)
        while pending:
            for name in list(pending):
                proc = procs.get(name)
                if proc is not None and not pid_alive(proc.pid, proc.start_time):
                    _reap(proc.pid)
                    raise StackError(
                        f"{name} exited during start-up; last lines of {self._log_file(name)}:\n{self._tail(name)}"
                    )
                ok, _ = self.health(name, ports)
                if ok:
                    pending.remove(name)
                    self.log(f"  {name:<8} healthy")
            if not pending:
                break
            if time.monotonic() > deadline:
                msgs = "; ".join(f"{n}: {self.health(n, ports)[1]}" for n in pending)
                raise StackError(
                    f"not healthy after {self.config.start_timeout_s:.0f} s: {msgs}. Logs: "
                    + ", ".join(str(self._log_file(n)) for n in pending)
                    + "\n"
                    + "\n".join(f"--- {n}\n{self._tail(n)}" for n in pending)
                )
            time.sleep(0.5)

    def _tail(self, name: str, lines: int = 25) -> str:
        try:
            return "\n".join(self._log_file(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _ensure_bucket(self, ports: Ports) -> None:
        """Create the artifact bucket on moto; with an external endpoint, check that it exists (never create it)."""
        c = self.config
        if c.s3 == "off":
            return
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        url = self.artifact_url()
        bucket = url[5:].split("/", 1)[0]
        endpoint = self.s3_endpoint(ports)
        kwargs: dict[str, Any] = {"endpoint_url": endpoint, "config": Config(retries={"max_attempts": 3})}
        if c.s3 == "moto":
            kwargs.update(
                aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                region_name=MOTO_CREDENTIALS["AWS_DEFAULT_REGION"],
            )
        client = boto3.client("s3", **kwargs)
        try:
            if c.s3 == "moto":
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=bucket)
            client.head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError) as exc:
            where = endpoint or "AWS S3"
            raise StackError(
                f"artifact bucket {bucket!r} at {where} is not usable: {exc}. Create it, or check RSTAR_ARTIFACT_URL, "
                "RSTAR_S3_ENDPOINT_URL and the AWS_* credentials of this shell."
            ) from exc

    # ---------------------------------------------------------------- up / status / down

    def _ports(self, state: Mapping[str, Any], running: Mapping[str, _Proc]) -> Ports:
        """Ports of running services come from the state file; the others from the config (0: a free port)."""
        c = self.config
        old = state.get("ports") or {}

        def pick(name: str, configured: int) -> int:
            if name in running and old.get(name):
                return int(old[name])
            if configured == 0:
                return free_port(c.host)
            if not port_free(c.host, configured):
                flag = {"prefect": "--prefect-port", "mlflow": "--mlflow-port", "s3": "--s3-port"}[name]
                raise StackError(
                    f"port {configured} on {c.host} is taken by another process, so {name} cannot start there; "
                    f"pass {flag} N (or 0 for any free port), or stop what holds it (`ss -ltnp 'sport = :{configured}'`)"
                )
            return configured

        s3 = pick("s3", c.s3_port) if "s3" in c.services() else None
        return Ports(prefect=pick("prefect", c.prefect_port), mlflow=pick("mlflow", c.mlflow_port), s3=s3)

    def up(self) -> StackReport:
        """Start every service that is not running; wait until all are healthy; write state and env file."""
        t0 = time.monotonic()
        c = self.config
        with self._lock():
            state = self._state()
            if any(self._running(n) for n in SERVICES):
                # A running stack keeps its wiring, even when this shell sourced its env file (which would make the
                # settings name its moto bucket as an "external" store).
                self.config = c = self._adopt(state)
            stack_id = str(state.get("stack_id") or uuid.uuid4().hex[:12])
            running = {n: p for n in c.services() if (p := self._running(n)) is not None}
            ports = self._ports(state, running)
            env = self.client_env(ports)
            started: list[str] = []
            self._save_state(self._state_dict(stack_id, ports))

            servers = [n for n in c.services() if n != "worker"]
            to_start = [n for n in servers if n not in running]
            if "s3" in to_start and c.results_dir.exists():
                # A fresh moto is empty: cached Prefect results would point at objects that no longer exist.
                shutil.rmtree(c.results_dir, ignore_errors=True)
            c.results_dir.mkdir(parents=True, exist_ok=True)
            procs: dict[str, _Proc] = dict(running)
            for name in to_start:
                self.log(f"  {name:<8} starting (log {self._log_file(name)})")
                procs[name] = self._spawn(name, stack_id, ports, env)
                started.append(name)
            for name in servers:
                if name in running:
                    self.log(f"  {name:<8} already running (pid {running[name].pid})")
            try:
                self._wait_healthy(servers, ports, procs)
                self._ensure_bucket(ports)
                self.write_env_file(env, ports)
                if c.worker:
                    if "worker" in running:
                        self.log(f"  worker   already running (pid {running['worker'].pid})")
                    else:
                        self.log(f"  worker   starting (log {self._log_file('worker')})")
                        procs["worker"] = self._spawn("worker", stack_id, ports, env)
                        started.append("worker")
                    self._wait_healthy(["worker"], ports, procs)
            except BaseException:
                if started:
                    self.log(f"start-up failed; stopping what this call started: {', '.join(started)}")
                    self._stop(list(reversed(started)))
                raise
        return StackReport(
            stack_id=stack_id,
            urls=self.urls(ports),
            env_file=c.env_file,
            started=started,
            already_running=[n for n in c.services() if n in running],
            seconds=time.monotonic() - t0,
            env=env,
        )

    def _state_dict(self, stack_id: str, ports: Ports) -> dict[str, Any]:
        c = self.config
        return {
            "stack_id": stack_id,
            "ports": {"prefect": ports.prefect, "mlflow": ports.mlflow, "s3": ports.s3},
            "urls": self.urls(ports),
            "s3_mode": c.s3,
            "bucket": c.bucket,
            "prefix": c.prefix,
            "external_artifact_url": c.external_artifact_url,
            "external_s3_endpoint": c.external_s3_endpoint,
            "work_pool": c.work_pool,
            "gpu_work_pool": c.gpu_work_pool,
            "worker": c.worker,
            "services": list(c.services()),
            "host": c.host,
        }

    def _adopt(self, state: Mapping[str, Any]) -> StackConfig:
        """The config with the wiring recorded by the `up` that started the running services."""
        keys = ("bucket", "prefix", "external_artifact_url", "external_s3_endpoint", "work_pool", "gpu_work_pool",
                "worker", "host")  # fmt: skip
        changes: dict[str, Any] = {k: state[k] for k in keys if k in state}
        if state.get("s3_mode") in ("moto", "external", "off"):
            changes["s3"] = state["s3_mode"]
        return replace(self.config, **changes)

    def _known_services(self, state: Mapping[str, Any]) -> list[str]:
        """Services the state names or that have a PID file (in start order)."""
        named = set(state.get("services") or self.config.services())
        return [s for s in SERVICES if s in named or self._pid_file(s).exists()]

    def write_env_file(self, env: Mapping[str, str | None], ports: Ports) -> Path:
        urls = self.urls(ports)
        header = (
            f"Written by `rstar stack up` ({dt.datetime.now().isoformat(timespec='seconds')}); removed by "
            "`rstar stack down`.\n"
            f"source {self.config.env_file}   # point this shell at the local stack\n"
            f"Prefect UI {urls['prefect_ui']}  MLflow {urls['mlflow']}  artifacts {urls['artifacts']}"
        )
        if self.config.s3 == "moto":
            header += "\nThe AWS_* keys below are moto's fixed dummies, not real credentials."
        self.config.env_file.write_text(render_env_file(env, header=header))
        return self.config.env_file

    def ports(self) -> Ports | None:
        """The ports recorded by the last `up` (None if the stack never started here)."""
        p = self._state().get("ports")
        if not p:
            return None
        return Ports(prefect=int(p["prefect"]), mlflow=int(p["mlflow"]), s3=int(p["s3"]) if p.get("s3") else None)

    def status(self) -> list[ServiceStatus]:
        state = self._state()
        ports = self.ports()
        out = []
        for name in self._known_services(state):
            proc = self._read_proc(name)
            running = proc is not None and pid_alive(proc.pid, proc.start_time)
            healthy, message = (False, "not started")
            if ports is not None and running:
                healthy, message = self.health(name, ports)
            elif proc is not None:
                message = f"pid {proc.pid} is gone (see {self._log_file(name)})"
            url = None
            if ports is not None:
                urls = self.urls(ports)
                url = {"prefect": urls["prefect_ui"], "mlflow": urls["mlflow"], "s3": urls.get("s3")}.get(name)
            out.append(ServiceStatus(name, proc.pid if proc else None, running, healthy, url, message))
        return out

    def down(self) -> list[str]:
        """Stop every service (worker first, with SIGINT), sweep leftovers, remove PID and env files."""
        with self._lock():
            state = self._state()
            stopped = self._stop(list(reversed(self._known_services(state))))
            stack_id = state.get("stack_id")
            if stack_id:
                leftovers = processes_with_marker(f"{stack_id}:")
                for pid in leftovers:
                    self.log(f"  killing leftover process {pid} of stack {stack_id}")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and processes_with_marker(f"{stack_id}:"):
                    time.sleep(0.1)
                still = processes_with_marker(f"{stack_id}:")
                if still:
                    raise StackError(f"processes of stack {stack_id} survived SIGKILL: {still}")
            self.config.env_file.unlink(missing_ok=True)
            self.config.state_file.unlink(missing_ok=True)
        return stopped

    def _stop(self, names: list[str]) -> list[str]:
        stopped = []
        for name in names:
            proc = self._read_proc(name)
            if proc is None:
                continue
            if pid_alive(proc.pid, proc.start_time) or group_alive(proc.pid):
                # The worker ignores SIGTERM; SIGINT makes it cancel its polling and exit cleanly.
                sig = signal.SIGINT if name == "worker" else signal.SIGTERM
                self.log(f"  {name:<8} stopping (pid {proc.pid}, {sig.name})")
                graceful = stop_group(proc.pid, sig, self.config.stop_timeout_s, log=self.log)
                stopped.append(name if graceful else f"{name} (killed)")
            _reap(proc.pid)
            self._pid_file(name).unlink(missing_ok=True)
        return stopped


def default_stack(**overrides: Any) -> Stack:
    """The stack of the current settings (RSTAR_HOME), with config overrides (None values ignored)."""
    return Stack(StackConfig.from_settings(get_settings(), **overrides))


def with_ports(config: StackConfig, ports: Ports) -> StackConfig:
    """A copy of `config` pinned to concrete ports (e.g. to talk to a running stack)."""
    return replace(config, prefect_port=ports.prefect, mlflow_port=ports.mlflow, s3_port=ports.s3 or config.s3_port)
