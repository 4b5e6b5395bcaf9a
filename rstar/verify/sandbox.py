"""The isolated executor for model-written Python: a pool of pre-warmed fork servers, one child process per program.

Usage::

    from rstar.verify.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(workers=2, timeout_s=5)) as sandbox:
        result = sandbox.run("print(2 + 2)")                 # ExecutionResult(ok=True, stdout="4\\n", ...)
        results = sandbox.run_batch([code_a, code_b, ...])    # parallel over the workers, input order kept
        sandbox.protections                                   # which layers are really active on this machine

`rstar exec FILE` runs one file from the command line (`docs/sandbox.md`), `bench/sandbox.py` measures the cost.

How it works. Each worker is a *zygote*: a fresh interpreter (`sys.executable`, never a fork of the caller, which is
multi-threaded) running `_sandbox_zygote.py` with a scrubbed environment. It pre-imports what model code uses (sympy,
numpy, fractions, ...), runs a few trusted warm-up programs through the real code path, calls `gc.freeze()`, and then
forks one short-lived child per program, ahead of time: the child applies every layer and waits. The zygote lends it
to us (its pipe ends and pidfd over a socket); we write the program into it and supervise it here (deadline, output
caps, kill), so a call costs two scheduler wake-ups and a short step milliseconds, not an interpreter start-up with
sympy (~1 s). Work done once per worker: a network namespace with no interface up, a private mount namespace with a
size-limited tmpfs as the scratch directory, the landlock ruleset, the seccomp filter template. Work done per child:
its own session, rlimits, the uid drop, no-new-privs, landlock, seccomp.

What is covered (each layer is reported by `Sandbox.protections`, verified by a self-test child at start-up;
a layer the machine lacks is skipped and reported False, and `SandboxConfig.require` turns that into an error):

- state: a fresh process per program, forked from a zygote that never runs untrusted code, so monkey-patched builtins,
  modified modules, globals, threads and files cannot leak into the next program; the scratch directory is wiped
  after every call. RNGs start from the same seed in every call, so a program's output is reproducible.
- time: a wall-clock deadline (the caller SIGKILLs the child's process group) and RLIMIT_CPU; error "Timeout".
- memory: RLIMIT_AS of `memory_mb` on top of the pre-loaded interpreter; error "MemoryError", `memory_exceeded`.
- output: stdout and stderr capped at `max_output_bytes` each; the program is killed when it writes more
  (error "OutputLimit", `output_truncated`).
- processes: no fork, vfork, non-thread clone or exec (seccomp), RLIMIT_NPROC=0 once the uid is not root (also no
  threads unless `allow_threads`); a timeout or crash kills the whole process group; the zygote is a child subreaper
  and kills anything left over; children die with the zygote (PR_SET_PDEATHSIG).
- network: no socket can be created (seccomp); the zygote's network namespace has no interface up; landlock denies
  TCP bind/connect (ABI >= 4).
- files: landlock allows writes only in the per-call scratch directory and reads only in the interpreter's library
  directories and system shared libraries (no /etc, /proc, home directories, the project checkout); RLIMIT_FSIZE
  bounds one file, the tmpfs size bounds the directory; uid nobody cannot read root-only files.
- secrets: the zygote starts with a minimal environment (nothing of the caller's: no AWS_*, MLFLOW_*, PREFECT_*, HF_*
  tokens), stdin is /dev/null, /proc/<pid>/environ of the caller and the zygote is unreadable (other uid, landlock).
- other processes: signals only to itself (seccomp; landlock scopes on ABI >= 6), no ptrace, no System V or POSIX
  message IPC, no keyrings, no io_uring, bpf, perf, mounts or namespaces.
- input: programs over `max_code_bytes` are refused ("CodeTooLarge"); bytes are compiled as Python source (a
  non-UTF-8 program is a "SyntaxError"); an empty program succeeds with no output.

What is NOT covered:

- kernel exploits: this is process-level isolation (like nanochat's execution.py, much stronger), not a VM or gVisor.
  Run the search on machines whose kernels you patch; for hostile tenants add a VM boundary.
- without root (or with landlock/seccomp unavailable) the corresponding layers are off: see `protections`. Without
  seccomp and root, a program can fork (RLIMIT_NPROC still applies to a non-root user) and see the host's network.
- CPU and memory bandwidth, the page cache, and timing side channels are shared with the host.
- the seccomp filter is a deny-list tuned for x86_64 and aarch64; other architectures run without it.
- imports of modules that were not pre-loaded fail when the interpreter lives where uid nobody cannot read it (here:
  under /root): add them to `SandboxConfig.preload`.
- `sys.exit(0)` and `os._exit(0)` count as a normal, successful end (ok=True); any other exit status is "SystemExit".

Error kinds (`ExecutionResult.error`): the exception class name for Python errors ("ZeroDivisionError",
"SyntaxError", ...), "Timeout", "MemoryError", "OutputLimit", "SystemExit" (non-zero exit), "Killed" (a signal, named in
the message), "CodeTooLarge", "SandboxError" (our own failure; the worker is restarted).
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rstar.types import CodeExecutor, ExecutionResult
from rstar.verify import _sandbox_zygote as zyg

__all__ = [
    "DEFAULT_PRELOAD",
    "PROTECTIONS",
    "InProcessExecutor",
    "Sandbox",
    "SandboxConfig",
    "SandboxUnavailable",
    "default_sandbox",
]

# Everything a child imports must be loaded here: after the uid drop the interpreter's own files may be unreadable
# (they are under /root on these machines), so a module that was not pre-loaded may fail to import in a program.
# sympy loads most of itself on import; the submodules below are the ones its functions import lazily.
DEFAULT_PRELOAD: tuple[str, ...] = (
    "math", "cmath", "fractions", "decimal", "numbers", "itertools", "functools", "operator", "collections",
    "collections.abc", "heapq", "bisect", "array", "statistics", "random", "secrets", "re", "string", "textwrap",
    "unicodedata", "json", "copy", "pprint", "datetime", "calendar", "time", "typing", "dataclasses", "enum", "abc",
    "contextlib", "struct", "hashlib", "base64", "tempfile", "encodings.idna", "encodings.latin_1",
    "encodings.ascii", "encodings.utf_16", "encodings.utf_32", "encodings.cp1252", "encodings.unicode_escape",
    "mpmath", "sympy", "sympy.stats", "sympy.assumptions.satask", "sympy.assumptions.lra_satask",
    "sympy.assumptions.handlers.calculus", "sympy.codegen.ast", "sympy.integrals.rde", "sympy.integrals.prde",
    "sympy.concrete.delta", "sympy.sets.handlers.functions", "sympy.polys.polymatrix",
    "sympy.polys.domains.old_fractionfield", "sympy.polys.domains.old_polynomialring", "sympy.parsing.sympy_parser",
    "sympy.solvers.diophantine", "sympy.ntheory.modular", "numpy", "numpy.random",
)  # fmt: skip

# Trusted programs the zygote runs before forking, so children start with warm caches (sympy's printers, solvers,
# the compiler, traceback formatting). Failures here (numpy missing) are harmless.
DEFAULT_WARMUP: tuple[str, ...] = (
    "total = 3 * 12\nleft = total - 7\nprint(left)\nprint(f'{left / 3:.4f}')\n",
    "from fractions import Fraction\nfrom decimal import Decimal\nimport math\n"
    "print(Fraction(3, 4) + Fraction(1, 6), Decimal('1.1') * 3, math.comb(10, 3), math.sqrt(2), math.gcd(12, 18))\n",
    "import itertools, collections, functools, statistics\n"
    "print(sum(1 for _ in itertools.permutations(range(4))), collections.Counter('abca').most_common(1))\n"
    "print(statistics.mean([1, 2, 3]), functools.reduce(lambda a, b: a * b, range(1, 6)))\n",
    "from sympy import *\nx, y = symbols('x y')\n"
    "print(solve(x**2 - 4, x), simplify((x**2 - 1) / (x - 1)), factor(x**2 + 2*x + 1), expand((x + 1)**3))\n"
    "print(Rational(1, 3) + Rational(1, 6), sqrt(8), nsimplify(0.5), N(pi, 10), latex(x**2 / 2))\n"
    "print(integrate(x**2, (x, 0, 1)), diff(sin(x), x), limit(sin(x) / x, x, 0), series(exp(x), x, 0, 3))\n"
    "print(Matrix([[1, 2], [3, 4]]).det(), binomial(5, 2), factorial(5), isprime(97), primefactors(60), divisors(12))\n"
    "print(summation(x, (x, 1, 10)), solve([x + y - 3, x - y - 1], [x, y]), Eq(x, 1), simplify(sin(x)**2 + cos(x)**2))\n",
    "import numpy as np\na = np.arange(6).reshape(2, 3)\nprint(a.sum(), np.linalg.det(np.eye(2)), a.mean(), np.round(np.pi, 3))\n",
    "undefined_name\n",
    "x = (\n",
)

# The keys of `Sandbox.protections`.
PROTECTIONS: tuple[str, ...] = (
    "fork_server", "process_per_call", "env_scrubbed", "no_stdin", "rlimits", "uid_drop", "network_namespace",
    "scratch_tmpfs", "landlock_fs", "landlock_net", "landlock_scopes", "seccomp", "no_processes", "no_network",
)  # fmt: skip

_ZYGOTE_SCRIPT = Path(zyg.__file__).resolve()
_REPLY_GRACE_S = 15.0  # how long past a program's deadline the parent waits for the zygote before declaring it hung


class SandboxUnavailable(RuntimeError):
    """A worker could not start, or a protection named in `SandboxConfig.require` is not available here."""


@dataclass(frozen=True)
class SandboxConfig:
    """How programs run in the sandbox. Limits apply to each program separately."""

    workers: int = field(default=2, metadata={"help": "Concurrent programs (zygote processes); ~1 per core."})
    timeout_s: float = field(default=5.0, metadata={"help": "Wall-clock limit per program, seconds."})
    cpu_time_s: float | None = field(
        default=None, metadata={"help": "CPU-time limit per program (RLIMIT_CPU, whole seconds); None = the timeout."}
    )
    memory_mb: int = field(
        default=512, metadata={"help": "Address space a program may add on top of the pre-loaded interpreter, MiB."}
    )
    max_output_bytes: int = field(
        default=65536, metadata={"help": "Cap on stdout and on stderr, bytes; a program writing more is killed."}
    )
    max_code_bytes: int = field(default=1_000_000, metadata={"help": "Longer programs are refused (CodeTooLarge)."})
    max_file_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "Largest file a program may write."})
    scratch_mb: int = field(default=64, metadata={"help": "Size of the per-worker tmpfs scratch directory, MiB."})
    max_open_files: int = field(default=64, metadata={"help": "RLIMIT_NOFILE of a program."})
    allow_threads: bool = field(default=False, metadata={"help": "Let programs start threads (never processes)."})
    network_namespace: bool = field(default=True, metadata={"help": "Run workers in an empty network namespace."})
    scratch_tmpfs: bool = field(default=True, metadata={"help": "Private size-limited tmpfs scratch (needs root)."})
    drop_privileges: bool = field(default=True, metadata={"help": "When root, run programs as `uid`/`gid`."})
    uid: int = field(default=65534, metadata={"help": "User id programs run as when privileges are dropped (nobody)."})
    gid: int = field(default=65534, metadata={"help": "Group id programs run as when privileges are dropped."})
    landlock: bool = field(default=True, metadata={"help": "Restrict file access (and TCP) with landlock."})
    seccomp: bool = field(default=True, metadata={"help": "Deny dangerous system calls with a seccomp filter."})
    fast_fork: bool = field(
        default=True,
        metadata={"help": "Fork children with a raw fork(2) when the zygote is single-threaded (~1 ms less a call)."},
    )
    preload: tuple[str, ...] = field(
        default=DEFAULT_PRELOAD, metadata={"help": "Modules imported in the zygote; missing ones are skipped."}
    )
    warmup: tuple[str, ...] = field(
        default=DEFAULT_WARMUP, metadata={"help": "Trusted programs run in the zygote before forking."}
    )
    readable_paths: tuple[str, ...] = field(
        default=(), metadata={"help": "Extra directories programs may read (landlock), besides the Python libraries."}
    )
    require: tuple[str, ...] = field(
        default=(), metadata={"help": f"Protections that must be active, else SandboxUnavailable. Keys: {PROTECTIONS}"}
    )
    python: str | None = field(default=None, metadata={"help": "Interpreter for the zygotes; None = sys.executable."})
    startup_timeout_s: float = field(default=180.0, metadata={"help": "How long a zygote may take to become ready."})

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in ("timeout_s", "startup_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.cpu_time_s is not None and not self.cpu_time_s > 0:
            raise ValueError(f"cpu_time_s must be > 0 or None, got {self.cpu_time_s}")
        for name in ("memory_mb", "max_output_bytes", "max_code_bytes", "max_file_bytes", "scratch_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_open_files < 8:
            raise ValueError(f"max_open_files must be >= 8 (the runner needs a few), got {self.max_open_files}")
        if self.max_code_bytes > zyg.MAX_MESSAGE - 4096:
            raise ValueError(f"max_code_bytes must be <= {zyg.MAX_MESSAGE - 4096}")
        for name in ("preload", "warmup", "readable_paths", "require"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a tuple of strings")
        unknown = set(self.require) - set(PROTECTIONS)
        if unknown:
            raise ValueError(f"unknown protections in require: {sorted(unknown)}; known: {PROTECTIONS}")
        if not 0 <= self.uid < 2**32 - 1 or not 0 <= self.gid < 2**32 - 1:
            raise ValueError("uid and gid must be valid ids")

    def cpu_limit_for(self, timeout_s: float) -> float:
        return self.cpu_time_s if self.cpu_time_s is not None else timeout_s

    def zygote_config(self, scratch: str) -> dict[str, Any]:
        cfg = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("python", "require")}
        cfg["scratch"] = scratch
        return cfg


# --------------------------------------------------------------------------------------------------------------------
# One worker: a zygote process and its pipes (used by one thread at a time)


class _WorkerDied(Exception):
    pass


class _Worker:
    """A zygote process, the socket to it, and the child it has lent us (used by one thread at a time).

    The zygote lends one ready child at a time: its pipe ends and pidfd arrive over the socket (SCM_RIGHTS). We write
    the program straight into the child and supervise it here (deadline, output caps, kill), so a call costs two
    wake-ups (us -> child -> us) instead of four through the zygote; we then tell the zygote we are done, and it reaps
    the child, wipes the scratch directory and lends the next child (already forked) while we return the result.
    """

    def __init__(self, index: int, config: SandboxConfig, root: Path) -> None:
        self.index = index
        self.config = config
        self.dir = root / f"w{index}"
        self.scratch = self.dir / "scratch"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.child: zyg.Child | None = None  # lent to us, not used yet
        self.info: dict[str, Any] | None = None
        self.lock = threading.Lock()
        self.starts = 0
        self.sent_program = False  # whether the current request reached a child (then it is not retried)

    def _env(self) -> dict[str, str]:
        """The zygote's whole environment: nothing of the caller's survives (no tokens, no PYTHON* settings)."""
        scratch = str(self.scratch)
        threads = {
            k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
        }
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": scratch,
            "TMPDIR": scratch,
            "PYTHONHASHSEED": "0",  # same set/dict iteration order in every worker: reproducible output
            "PYTHONDONTWRITEBYTECODE": "1",
            **threads,
        }

    def spawn(self) -> None:
        self.kill()
        self.dir.mkdir(mode=0o711, exist_ok=True)
        self.scratch.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o711)
        python = self.config.python or sys.executable
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = open(self.dir / "zygote.log", "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self.proc = subprocess.Popen(
                [python, "-s", "-B", "-P", str(_ZYGOTE_SCRIPT)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self._env(),
                cwd=self.dir,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            log.close()
        self.sock = ours
        self.info = None
        self.starts += 1
        zyg.send_json(ours, self.config.zygote_config(str(self.scratch)))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.dir / "zygote.log").read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _recv(self, deadline: float, maxfds: int = 0) -> tuple[dict[str, Any], list[int]]:
        assert self.sock is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the sandbox worker")
            if select.select([self.sock], [], [], remaining)[0]:
                break
        try:
            msg, fds = zyg.recv_json(self.sock, maxfds)
        except OSError as exc:
            raise _WorkerDied(f"lost the sandbox worker: {exc}") from None
        if msg is None:
            raise _WorkerDied("the sandbox worker exited")
        return msg, fds

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.sock is not None
        try:
            zyg.send_json(self.sock, msg)
        except OSError as exc:
            raise _WorkerDied(f"lost the sandbox worker: {exc}") from None

    def ensure_ready(self) -> dict[str, Any]:
        with self.lock:
            if self.info is not None and self.alive():
                return self.info
            if not self.alive():
                self.spawn()
            try:
                info, _ = self._recv(time.monotonic() + self.config.startup_timeout_s)
            except (_WorkerDied, TimeoutError, ValueError) as exc:
                tail = self.log_tail()
                self.kill()
                raise SandboxUnavailable(f"sandbox worker {self.index} failed to start ({exc}): {tail}") from None
            if not info.get("ready"):
                tail = self.log_tail()
                self.kill()
                raise SandboxUnavailable(f"sandbox worker {self.index} failed to start: {info.get('error')}\n{tail}")
            self.info = info
            return info

    def _take_child(self) -> zyg.Child:
        child, self.child = self.child, None
        if child is not None:
            return child
        msg, fds = self._recv(time.monotonic() + _REPLY_GRACE_S, maxfds=5)
        if msg.get("op") != "child" or len(fds) < 4:
            for fd in fds:
                os.close(fd)
            raise _WorkerDied(f"unexpected message from the sandbox worker: {msg.get('op')}")
        return zyg.Child(int(msg["pid"]), fds[0], fds[1], fds[2], fds[3], pidfd=fds[4] if len(fds) > 4 else -1)

    def _done(self, child: zyg.Child, want_status: bool) -> tuple[int | None, float]:
        """Tell the zygote we are finished with `child`; with `want_status`, wait for how it ended."""
        self._send({"op": "done", "pid": child.pid, "want_status": want_status})
        if not want_status:
            return None, 0.0
        msg, _ = self._recv(time.monotonic() + _REPLY_GRACE_S)
        if msg.get("op") != "status" or msg.get("pid") != child.pid:
            raise _WorkerDied(f"unexpected message from the sandbox worker: {msg.get('op')}")
        return int(msg["status"]), float(msg["cpu_s"])

    def request(self, code: bytes, timeout_s: float, cpu_time_s: float) -> dict[str, Any]:
        cap = self.config.max_output_bytes
        self.sent_program = False
        for attempt in range(2):
            child = self._take_child()
            try:
                start = time.monotonic()
                try:
                    child.send_program(code, cpu_time_s)
                except BrokenPipeError:  # the waiting child was killed from outside: take the next one
                    self._done(child, want_status=False)
                    if attempt == 0:
                        continue
                    raise _WorkerDied("the sandbox worker's children die before running anything") from None
                self.sent_program = True
                sup = zyg.supervise(child, start + timeout_s, cap)
                if sup["need_status"]:
                    status, cpu_used = self._done(child, want_status=True)
                else:  # complete already; a zygote dying now costs the next call a restart, not this result
                    status, cpu_used = None, 0.0
                    try:
                        self._done(child, want_status=False)
                    except _WorkerDied:
                        self.kill()
                return zyg.build_result(sup, cap, cpu_time_s, status, cpu_used)
            finally:
                child.close()
        raise _WorkerDied("unreachable")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        sock, self.sock = self.sock, None
        child, self.child = self.child, None
        self.info = None
        if child is not None:
            child.close()
        if sock is not None:
            sock.close()
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


_ROOT_PREFIX = "rstar-sandbox-"


def _sweep_stale_roots() -> None:
    """Remove the scratch roots of sandboxes whose process died without closing them (e.g. SIGKILL)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_ROOT_PREFIX}*-*"):
        pid = path.name[len(_ROOT_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _shutdown(workers: list[_Worker], root: Path, pools: list[ThreadPoolExecutor]) -> None:
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.kill()
    shutil.rmtree(root, ignore_errors=True)


def _error(kind: str, message: str, **extra: Any) -> ExecutionResult:
    return ExecutionResult(ok=False, error=kind, error_message=message, **extra)


def _as_bytes(code: str | bytes) -> bytes:
    if isinstance(code, bytes | bytearray | memoryview):
        return bytes(code)
    if not isinstance(code, str):
        raise TypeError(f"code must be str or bytes, got {type(code).__name__}")
    return code.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8: a SyntaxError


_RESULT_FIELDS = ("stdout", "stderr", "error", "error_message", "timed_out", "memory_exceeded", "output_truncated")


# --------------------------------------------------------------------------------------------------------------------


class Sandbox:
    """A pool of sandbox workers; implements `rstar.types.CodeExecutor`. Thread-safe; close it (or use `with`).

    Workers start in the background at construction (a zygote imports sympy and numpy: ~1-3 s); the first call waits
    for them. A worker that dies (killed from outside, or hung) is replaced on the next call, transparently.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        _sweep_stale_roots()
        self._root = Path(tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-"))
        os.chmod(self._root, 0o711)  # uid nobody must traverse it to reach its scratch directory
        self._workers = [_Worker(i, self.config, self._root) for i in range(self.config.workers)]
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._pools: list[ThreadPoolExecutor] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._root, self._pools)
        try:
            for worker in self._workers:
                worker.spawn()
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    # ---- public API ----
    @property
    def protections(self) -> dict[str, bool]:
        """Which isolation layers are really active (verified by each zygote's self-test at start-up)."""
        self._check_open()
        info = self._workers[0].ensure_ready()
        return {k: bool(info["protections"].get(k, False)) for k in PROTECTIONS}

    @property
    def info(self) -> dict[str, Any]:
        """The first worker's start-up report: protections, pre-loaded modules, notes on skipped layers."""
        self._check_open()
        return dict(self._workers[0].ensure_ready())

    def worker_pids(self) -> list[int]:
        """Pids of the live zygote processes (monitoring, tests). Each holds at most one pre-forked child."""
        return [proc.pid for w in self._workers if (proc := w.proc) is not None and proc.poll() is None]

    def run(self, code: str | bytes, *, timeout_s: float | None = None) -> ExecutionResult:
        """Run one program; never raises for what the program does (see the module docstring for error kinds)."""
        self._check_open()
        source = _as_bytes(code)
        if len(source) > self.config.max_code_bytes:
            return _error("CodeTooLarge", f"program of {len(source)} bytes exceeds {self.config.max_code_bytes}")
        timeout = float(timeout_s if timeout_s is not None else self.config.timeout_s)
        if not timeout > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        while True:
            try:
                worker = self._idle.get(timeout=0.5)
                break
            except queue.Empty:
                self._check_open()  # all workers busy: wait, unless the sandbox was closed meanwhile
        try:
            return self._execute(worker, source, timeout)
        finally:
            self._idle.put(worker)

    def run_batch(self, codes: Sequence[str | bytes]) -> list[ExecutionResult]:
        """Run programs in parallel over the workers; one result per program, in input order."""
        self._check_open()
        codes = list(codes)
        if len(codes) <= 1 or self.config.workers == 1:
            return [self.run(c) for c in codes]
        return list(self._pool().map(self.run, codes))

    def close(self) -> None:
        """Stop every worker and remove the scratch directories. Safe to call twice."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ----
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        if os.getpid() != self._pid:
            raise RuntimeError("a Sandbox cannot be used in a forked copy of the process that created it")

    def _pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if not self._pools:
                self._pools.append(
                    ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="rstar-sandbox")
                )
            return self._pools[0]

    def _execute(self, worker: _Worker, source: bytes, timeout: float) -> ExecutionResult:
        cpu = self.config.cpu_limit_for(timeout)
        for attempt in range(2):
            info = worker.ensure_ready()  # restarts a dead zygote; raises SandboxUnavailable if it cannot
            missing = [k for k in self.config.require if not info["protections"].get(k)]
            if missing:
                raise SandboxUnavailable(f"required sandbox protections are not available here: {missing}")
            start = time.perf_counter()
            try:
                reply = worker.request(source, timeout, cpu)
            except _WorkerDied as exc:
                worker.kill()
                if attempt == 0 and not worker.sent_program:
                    continue  # it died between calls: restart it and run the program on the fresh one
                return _error("SandboxError", f"sandbox worker died during the call: {exc}")
            except (TimeoutError, ValueError) as exc:
                worker.kill()
                return _error("SandboxError", f"sandbox worker failed: {exc}")
            elapsed_ms = (time.perf_counter() - start) * 1000
            if reply.get("error") == "SandboxError":
                worker.kill()  # the zygote could not clean up or set up a child: replace it
            return ExecutionResult(
                ok=bool(reply.get("ok")),
                duration_ms=elapsed_ms,
                **{k: reply[k] for k in _RESULT_FIELDS if k in reply},
            )
        return _error("SandboxError", "sandbox worker could not be restarted")


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """A process-wide sandbox with the default configuration, created on first use, closed at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Sandbox()
        return _default


# --------------------------------------------------------------------------------------------------------------------


class InProcessExecutor:
    """UNSAFE: `exec` in the calling process, like rStar-Math's reference code. For benchmarks and quick tests only.

    Same interface and result fields as `Sandbox`, fresh globals per program, but no isolation at all: a program can
    read the environment, change modules for every later program, fork, or hang (there is no timeout: `timeout_s` is
    accepted and ignored). Calls are serialised by a lock because stdout redirection is process-wide.
    """

    def __init__(self, max_output_bytes: int = 65536, max_code_bytes: int = 1_000_000) -> None:
        self.max_output_bytes = max_output_bytes
        self.max_code_bytes = max_code_bytes
        self._lock = threading.Lock()

    @property
    def protections(self) -> dict[str, bool]:
        return dict.fromkeys(PROTECTIONS, False)

    def run(self, code: str | bytes, *, timeout_s: float | None = None) -> ExecutionResult:
        source = _as_bytes(code)
        if len(source) > self.max_code_bytes:
            return _error("CodeTooLarge", f"program of {len(source)} bytes exceeds {self.max_code_bytes}")
        out, err = io.StringIO(), io.StringIO()
        error: str | None = None
        message = ""
        memory = False
        start = time.perf_counter()
        with self._lock, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                exec(compile(source, zyg.PROGRAM_NAME, "exec", dont_inherit=True), {"__name__": "__main__"})
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    error = "SystemExit"
                    message = f"exit code {exc.code}" if isinstance(exc.code, int) else str(exc.code)
            except BaseException as exc:
                error = type(exc).__name__
                memory = isinstance(exc, MemoryError)
                message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                err.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        cap = self.max_output_bytes
        stdout, stderr = out.getvalue(), err.getvalue()
        truncated = len(stdout.encode()) > cap or len(stderr.encode()) > cap
        return ExecutionResult(
            ok=error is None,
            stdout=stdout.encode()[:cap].decode("utf-8", "ignore"),
            stderr=stderr.encode()[:cap].decode("utf-8", "ignore"),
            error=error,
            error_message=message,
            memory_exceeded=memory,
            output_truncated=truncated,
            duration_ms=(time.perf_counter() - start) * 1000,
        )

    def run_batch(self, codes: Sequence[str | bytes]) -> list[ExecutionResult]:
        return [self.run(c) for c in codes]

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _implements_protocol(sandbox: Sandbox, inprocess: InProcessExecutor) -> tuple[CodeExecutor, CodeExecutor]:
    """Never called: mypy checks here that both executors satisfy `rstar.types.CodeExecutor`."""
    return sandbox, inprocess
