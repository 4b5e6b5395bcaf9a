"""The vLLM sidecar of a GPU worker: its own virtual environment, `vllm serve` for the policy, health checks.

    python -m infra.gpu.vllm_sidecar setup                              # create $RSTAR_HOME/vllm-venv with vLLM
    python -m infra.gpu.vllm_sidecar start --model /models/qwen-7b --tensor-parallel-size 2
    python -m infra.gpu.vllm_sidecar ensure --model s3://bucket/evolve/rounds/2/policy/<digest>   # prints the spec
    python -m infra.gpu.vllm_sidecar status
    python -m infra.gpu.vllm_sidecar stop

    from infra.gpu.vllm_sidecar import SidecarConfig, VllmSidecar
    sidecar = VllmSidecar(SidecarConfig(tensor_parallel_size=2))
    spec = sidecar.ensure("hf:/models/round-2-policy")   # -> "openai:http://127.0.0.1:8000/v1#policy-<id>"

Why a sidecar: vLLM pins its own torch / transformers / pydantic stack, which clashes with prefect 3.9, so it
cannot live in the worker's environment. The worker's flows reach it over HTTP through the `openai:` policy backend
(`rstar.models.policy_openai`), which sends one completions request per prompt with the step stop strings.

What the launcher guarantees:
- `setup` creates the venv once (`python -m venv` + `pip install <vllm_spec>`), recorded in `<venv>/.rstar-vllm`, so
  a second call is a no-op and a changed pin reinstalls.
- `start` runs `vllm serve MODEL --served-model-name NAME --host 127.0.0.1 --port P --tensor-parallel-size N
  --enable-prefix-caching ...` in its own process group (prefix caching is always on: MCTS re-sends the same
  question and step prefix for every expansion, and the KV cache of that prefix is the big saving), writes
  `<RSTAR_HOME>/gpu/vllm-<port>.{pid,json,log}`, and waits until `GET /health` answers 200 and `GET /v1/models`
  lists the served name (loading a 7B model takes minutes: `start_timeout_s`).
- `ensure(model)` is idempotent: a sidecar already serving that model is left alone, one serving another model is
  restarted with the new one. The served name carries a content id of the model (an artifact digest, or a hash
  of the path), so the policy spec — which is part of every synthesis cache key — differs per model.
- `stop` sends SIGTERM to the process group, then SIGKILL after `stop_timeout_s`.

Defaults come from the environment a GPU work pool sets (infra/deploy/gpu-work-pool.json): RSTAR_VLLM_VENV,
RSTAR_VLLM_PORT, RSTAR_VLLM_TENSOR_PARALLEL_SIZE; flags override them. It binds 127.0.0.1 by default: only the worker on the same node talks to it. An API key, if wanted, comes from the
environment (`VLLM_API_KEY`, read by vLLM itself), never from a flag or a file. The PPM is not served here: it runs in
the worker process on the GPU with transformers (`hf:` backend), see docs/operations.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from infra.stack import http_get, pid_alive, proc_start_time, stop_group

VLLM_SPEC = "vllm==0.33.0"  # the pin the GPU image installs (infra/docker/Dockerfile.gpu); override with --vllm-spec
MARKER_FILE = ".rstar-vllm"


class SidecarError(RuntimeError):
    """The vLLM environment or server cannot be set up, started or reached; the message says which and why."""


@dataclass(frozen=True)
class SidecarConfig:
    """How the sidecar is installed and served. Defaults fit one GPU node running one worker."""

    home: Path = field(default_factory=lambda: Path(os.environ.get("RSTAR_HOME", ".rstar")).absolute())
    venv: Path | None = field(default_factory=lambda: _env_path("RSTAR_VLLM_VENV"))  # None: <home>/vllm-venv
    vllm_spec: str = VLLM_SPEC
    host: str = "127.0.0.1"
    port: int = field(default_factory=lambda: int(os.environ.get("RSTAR_VLLM_PORT", "8000")))
    tensor_parallel_size: int = field(
        default_factory=lambda: int(os.environ.get("RSTAR_VLLM_TENSOR_PARALLEL_SIZE", "1"))
    )
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    dtype: str = "auto"
    seed: int = 0
    served_prefix: str = "policy"
    extra_args: tuple[str, ...] = ()
    start_timeout_s: float = 900.0
    stop_timeout_s: float = 30.0
    python: str = sys.executable

    @property
    def venv_dir(self) -> Path:
        return (self.venv or self.home / "vllm-venv").absolute()

    @property
    def state_dir(self) -> Path:
        return self.home / "gpu"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def model_id(model: str) -> str:
    """A short content id for a model source: the digest of an artifact URI, else a hash of the path / hub id."""
    ref = model.rstrip("/")
    last = ref.rsplit("/", 1)[-1]
    if ref.startswith(("s3://", "file://")) and len(last) >= 8 and all(c in "0123456789abcdef" for c in last):
        return last[:16]
    return hashlib.sha256(ref.encode()).hexdigest()[:16]


def served_name(config: SidecarConfig, model: str) -> str:
    return f"{config.served_prefix}-{model_id(model)}"


def policy_spec(config: SidecarConfig, name: str) -> str:
    """The `openai:` model spec the flows use to reach this sidecar."""
    return f"openai:{config.base_url}#{name}"


def serve_argv(config: SidecarConfig, model_path: str, name: str) -> list[str]:
    """The `vllm serve` command line (pure: tested without vLLM)."""
    argv = [
        str(config.venv_dir / "bin" / "vllm"), "serve", model_path,
        "--served-model-name", name,
        "--host", config.host,
        "--port", str(config.port),
        "--tensor-parallel-size", str(config.tensor_parallel_size),
        "--enable-prefix-caching",
        "--gpu-memory-utilization", str(config.gpu_memory_utilization),
        "--dtype", config.dtype,
        "--seed", str(config.seed),
    ]  # fmt: skip
    if config.max_model_len:
        argv += ["--max-model-len", str(config.max_model_len)]
    return argv + list(config.extra_args)


def local_model_path(model: str) -> str:
    """A path (or hub id) vLLM can load: `hf:PATH` -> PATH; an artifact URI is fetched from the store first."""
    if model.startswith(("s3://", "file://")):
        from infra.storage import open_store

        folder = open_store().get_artifact(model)
        return str(folder / "model" if (folder / "model").is_dir() else folder)
    return model.removeprefix("hf:")


class VllmSidecar:
    """Install, start, check and stop the vLLM server of one node (see the module docstring)."""

    def __init__(self, config: SidecarConfig | None = None) -> None:
        self.config = config or SidecarConfig()

    # ---------------------------------------------------------------- files

    def _path(self, suffix: str) -> Path:
        return self.config.state_dir / f"vllm-{self.config.port}.{suffix}"

    def state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path("json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not pid_alive(int(data["pid"]), data.get("start_time")):
            return None
        return data

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Several worker processes on a node may call `ensure` at once: one starts the server, the others wait."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self._path("lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- environment

    def setup(self) -> Path:
        """Create the vLLM venv if missing or installed with another spec; return its `vllm` executable."""
        c = self.config
        marker = c.venv_dir / MARKER_FILE
        exe = c.venv_dir / "bin" / "vllm"
        if marker.exists() and marker.read_text().strip() == c.vllm_spec and exe.exists():
            return exe
        if not (c.venv_dir / "bin" / "python").exists():
            self._run([c.python, "-m", "venv", str(c.venv_dir)], "creating the vLLM venv")
        pip = [str(c.venv_dir / "bin" / "python"), "-m", "pip", "install", "--upgrade"]
        self._run([*pip, "pip"], "upgrading pip in the vLLM venv")
        self._run([*pip, c.vllm_spec], f"installing {c.vllm_spec}")
        if not exe.exists():
            raise SidecarError(f"{c.vllm_spec} installed but {exe} is missing")
        marker.write_text(c.vllm_spec + "\n")
        return exe

    @staticmethod
    def _run(argv: Sequence[str], what: str) -> None:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SidecarError(f"{what} failed ({shlex.join(argv)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")

    # ---------------------------------------------------------------- server

    def health(self, name: str | None = None) -> tuple[bool, str]:
        """(ready, message): /health answers 200 and, when `name` is given, /v1/models lists it."""
        status, _ = http_get(f"http://{self.config.host}:{self.config.port}/health", timeout=5)
        if status != 200:
            return False, f"/health -> {status or 'no answer'}"
        if name is None:
            return True, "healthy"
        status, body = http_get(f"{self.config.base_url}/models", timeout=5)
        try:
            ids = [m.get("id") for m in json.loads(body).get("data", [])] if status == 200 else []
        except ValueError:
            ids = []
        return (name in ids), f"serving {ids}" if ids else f"/v1/models -> {status or 'no answer'}"

    def start(self, model: str) -> str:
        """Start `vllm serve` for `model` (path, hub id, hf:PATH or artifact URI); return the policy spec."""
        with self._lock():
            return self._start_locked(model)

    def _start_locked(self, model: str) -> str:
        c = self.config
        running = self.state()
        if running is not None:
            raise SidecarError(f"a vLLM server already runs on port {c.port} (pid {running['pid']}): stop it first")
        exe = c.venv_dir / "bin" / "vllm"
        if not exe.exists():
            raise SidecarError(f"{exe} does not exist: run `python -m infra.gpu.vllm_sidecar setup` first")
        name = served_name(c, model)
        argv = serve_argv(c, local_model_path(model), name)
        c.state_dir.mkdir(parents=True, exist_ok=True)
        log = self._path("log")
        with open(log, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        record = {"pid": proc.pid, "start_time": proc_start_time(proc.pid), "model": model, "served_name": name,
                  "argv": argv, "config": {k: str(v) for k, v in asdict(c).items()}}  # fmt: skip
        self._path("json").write_text(json.dumps(record, indent=2) + "\n")
        deadline = time.monotonic() + c.start_timeout_s
        while True:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                self._path("json").unlink(missing_ok=True)
                raise SidecarError(f"vllm serve exited with {proc.returncode} while loading {model}:\n{tail}")
            ok, msg = self.health(name)
            if ok:
                return policy_spec(c, name)
            if time.monotonic() > deadline:
                self._stop_locked()
                raise SidecarError(f"vllm serve not ready after {c.start_timeout_s:.0f} s ({msg}); log: {log}")
            time.sleep(1.0)

    def ensure(self, model: str) -> str:
        """Make the sidecar serve `model` (start, keep, or restart with it); return the policy spec."""
        with self._lock():
            running = self.state()
            name = served_name(self.config, model)
            if running is not None and running.get("served_name") == name and self.health(name)[0]:
                return policy_spec(self.config, name)
            if running is not None:
                self._stop_locked()
            return self._start_locked(model)

    def stop(self) -> bool:
        """Stop the server; True if one was running."""
        with self._lock():
            return self._stop_locked()

    def _stop_locked(self) -> bool:
        running = self.state()
        self._path("json").unlink(missing_ok=True)
        if running is None:
            return False
        stop_group(
            int(running["pid"]), signal.SIGTERM, self.config.stop_timeout_s, log=lambda m: print(m, file=sys.stderr)
        )
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(int(running["pid"]), os.WNOHANG)
        return True


# ------------------------------------------------------------------------------------------------------------- CLI


def _config(args: argparse.Namespace) -> SidecarConfig:
    c = SidecarConfig()
    overrides: dict[str, Any] = {
        "venv": args.venv,
        "vllm_spec": args.vllm_spec,
        "host": args.host,
        "port": args.port,
        "tensor_parallel_size": args.tensor_parallel_size,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": args.max_model_len,
        "dtype": args.dtype,
        "start_timeout_s": args.timeout,
        "extra_args": tuple(shlex.split(args.extra)) if args.extra else None,
    }
    return replace(c, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.gpu.vllm_sidecar", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("setup", "start", "ensure", "status", "stop"))
    ap.add_argument("--model", help="model path, hub id, hf:PATH or model artifact URI (start / ensure)")
    ap.add_argument("--venv", type=Path, help="the vLLM environment (default $RSTAR_HOME/vllm-venv)")
    ap.add_argument("--vllm-spec", help=f"pip requirement for vLLM (default {VLLM_SPEC})")
    ap.add_argument("--host", help="bind address (default 127.0.0.1: only this node)")
    ap.add_argument("--port", type=int, help="port (default 8000)")
    ap.add_argument("--tensor-parallel-size", "--tp", type=int, help="GPUs per model replica (default 1)")
    ap.add_argument("--gpu-memory-utilization", type=float, help="share of GPU memory vLLM may use (default 0.85)")
    ap.add_argument("--max-model-len", type=int, help="context length cap (default: the model's)")
    ap.add_argument("--dtype", help="auto | bfloat16 | float16 (default auto)")
    ap.add_argument("--timeout", type=float, help="seconds to wait for the model to load (default 900)")
    ap.add_argument("--extra", help="further `vllm serve` flags, as one shell-quoted string")
    args = ap.parse_args(argv)
    sidecar = VllmSidecar(_config(args))
    try:
        if args.action == "setup":
            print(sidecar.setup())
        elif args.action in ("start", "ensure"):
            if not args.model:
                ap.error(f"{args.action} needs --model")
            print(sidecar.start(args.model) if args.action == "start" else sidecar.ensure(args.model))
        elif args.action == "stop":
            print("stopped" if sidecar.stop() else "not running")
        else:
            state = sidecar.state()
            if state is None:
                print("not running")
                return 1
            ok, msg = sidecar.health(state.get("served_name"))
            print(f"{'ready' if ok else 'starting'}: pid {state['pid']}, {state['model']} as "
                  f"{policy_spec(sidecar.config, state['served_name'])} ({msg})")  # fmt: skip
            return 0 if ok else 1
    except SidecarError as exc:
        print(f"vllm sidecar: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
