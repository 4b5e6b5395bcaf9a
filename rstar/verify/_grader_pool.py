"""Parent side of the grader's symbolic check: a small pool of `_grader_worker` processes with hard time limits.

    pool = symbolic_pool()
    verdict, method = pool.check(gold_latex, pred_latex, timeout_s=2.0)   # (True/False/None, rule)

Works from any thread (nothing here uses signals). A worker that does not answer within `timeout_s` is killed with its
process group and replaced on the next call, so a pathological expression costs at most `timeout_s` and never leaves
a CPU-burning thread behind. Start-up (importing sympy and math-verify, ~1-2 s) happens before the clock starts.
Workers are started on demand, up to `max_workers` at once; idle ones stay warm for the next check. After a `fork()`
the child gets a fresh, empty pool (the parent's pipes are not shared).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

WORKER_FILE = Path(__file__).with_name("_grader_worker.py")
STARTUP_TIMEOUT_S = 120.0  # imports on a loaded 2-core machine; not part of any check's time limit
_POLL_S = 0.05  # how often a waiting check looks at the worker's CPU time
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class _Worker:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["OMP_NUM_THREADS"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-u", str(WORKER_FILE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group, so a kill takes anything it started with it
        )
        self._buf = b""
        try:
            line = self._readline(time.monotonic() + STARTUP_TIMEOUT_S)
        except _WorkerDied:
            line = None
        if line != "ready":
            self.kill()
            raise RuntimeError(f"grader worker failed to start (said {line!r})")

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the worker has used so far; None where /proc is not readable."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            return None

    def _readline(self, deadline: float, cpu_limit: float | None = None) -> str | None:
        """One line from the worker; None at the wall-clock `deadline` or once it has spent `cpu_limit` CPU seconds
        on this request; raises _WorkerDied when it exited."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        cpu0 = self.cpu_seconds() if cpu_limit is not None else None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left if cpu0 is None else min(left, _POLL_S))
            if not ready:
                if cpu0 is None or cpu_limit is None:
                    return None
                now = self.cpu_seconds()
                if now is None or now - cpu0 > cpu_limit:
                    return None
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerDied  # end of file: the worker exited (crashed, killed, CPU rlimit)
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace").strip()

    def ask(self, gold: str, pred: str, timeout_s: float, wall_s: float) -> tuple[bool | None, str]:
        """The worker's verdict within `timeout_s` CPU seconds and `wall_s` wall-clock seconds."""
        assert self.proc.stdin is not None
        msg = json.dumps({"g": gold, "p": pred, "cpu_s": max(2.0, 4 * timeout_s)}) + "\n"
        deadline = time.monotonic() + wall_s
        try:
            self.proc.stdin.write(msg.encode("utf-8", "replace"))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerDied from None
        line = self._readline(deadline, timeout_s)
        if line is None:
            if self.proc.poll() is not None:
                raise _WorkerDied
            raise _WorkerTimeout
        resp = json.loads(line)
        return resp["r"], str(resp["m"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


class _WorkerTimeout(Exception):
    pass


class _WorkerDied(Exception):
    pass


class SymbolicPool:
    """Up to `max_workers` warm worker processes shared by all threads of this process."""

    def __init__(self, max_workers: int = 2) -> None:
        self.max_workers = max(1, max_workers)
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self.timeouts = 0
        self.restarts = 0

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                while not self._idle and self._count >= self.max_workers:
                    self._cond.wait()
                if not self._idle:
                    break
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                self._count -= 1  # died while idle (OOM killer, ...): forget it and look again
                worker.kill()
            self._count += 1
        try:
            return _Worker()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is not None and worker.alive():
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()

    def _replace_in_background(self) -> None:
        """Start the successor of a killed worker now, so the next check does not pay the start-up."""

        def start() -> None:
            try:
                w: _Worker | None = _Worker()
            except (OSError, RuntimeError):
                w = None
            self._release(w)  # keeps its slot; a failed start frees it

        threading.Thread(target=start, name="grader-worker-start", daemon=True).start()

    def check(self, gold: str, pred: str, timeout_s: float, wall_s: float | None = None) -> tuple[bool | None, str]:
        """Compare two cleaned answers symbolically.

        The check may use `timeout_s` seconds of the worker's CPU time (so that a verdict does not depend on how
        loaded the machine is) and never more than `wall_s` (default 4 x `timeout_s`) of wall-clock time.
        Returns (verdict, method); verdict None means undecided: "timeout", "unparsed", "memory", "error:...".
        """
        if wall_s is None:
            wall_s = 4 * timeout_s
        for attempt in range(2):  # a worker that dies under a check is replaced once; a second death is the answer's
            try:
                worker = self._acquire()
            except (OSError, RuntimeError) as exc:
                return None, f"error:worker-start:{type(exc).__name__}"
            try:
                verdict, method = worker.ask(gold, pred, timeout_s, wall_s)  # the clock starts with a ready worker
            except _WorkerTimeout:
                worker.kill()
                with self._cond:
                    self.timeouts += 1
                self._replace_in_background()
                return None, "timeout"
            except (_WorkerDied, ValueError, KeyError):
                worker.kill()
                self._release(None)
                with self._cond:
                    self.restarts += 1
                if attempt == 0:
                    continue
                return None, "error:worker-died"
            except BaseException:
                worker.kill()
                self._release(None)
                raise
            self._release(worker)
            return verdict, method
        return None, "error:worker-died"  # pragma: no cover - the loop always returns

    def close(self) -> None:
        """Stop every idle worker (busy ones are stopped by their callers' kill or at interpreter exit)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.kill()


_POOL: SymbolicPool | None = None
_POOL_LOCK = threading.Lock()


def symbolic_pool() -> SymbolicPool:
    """The process-wide pool (created on first use; `RSTAR_GRADER_WORKERS` sets its size, default 2)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            try:
                n = int(os.environ.get("RSTAR_GRADER_WORKERS", "2"))
            except ValueError:
                n = 2
            _POOL = SymbolicPool(max_workers=n)
        return _POOL


def _close_pool() -> None:
    if _POOL is not None:
        _POOL.close()


def _forget_pool_in_child() -> None:
    """After fork the child must not talk to the parent's workers through inherited pipes."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


atexit.register(_close_pool)
os.register_at_fork(after_in_child=_forget_pool_in_child)
