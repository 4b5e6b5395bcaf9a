"""The sandbox against hostile programs: one property per test, and after each one the sandbox still works and no
process is left behind (the nanochat test_execution.py pattern, much extended).

One module-scoped `Sandbox` serves most tests (a zygote takes a few seconds to pre-load sympy and numpy); the parent
process holds fake cloud secrets in its environment while it runs, so leaking them is observable. A light sandbox
without sympy covers what needs other settings (threads allowed, a CPU limit, restarts).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rstar.types import CodeExecutor, ExecutionResult
from rstar.verify import sandbox as sandbox_mod
from rstar.verify.sandbox import (
    DEFAULT_PRELOAD,
    PROTECTIONS,
    InProcessExecutor,
    Sandbox,
    SandboxConfig,
    SandboxUnavailable,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "rstar-test-secret-" + uuid.uuid4().hex
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_TOKEN", "PREFECT_API_KEY", "HF_TOKEN")
# Modules a hostile program reaches for; pre-loaded so that the kernel-level layers, not a failed import, stop it.
HOSTILE_PRELOAD = ("socket", "subprocess", "pty", "ctypes", "signal", "threading", "faulthandler")
IS_ROOT = os.geteuid() == 0
TIMEOUT = 0.5  # for the programs that are meant to time out


# --------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    saved = {k: os.environ.get(k) for k in SECRET_VARS}
    os.environ.update(dict.fromkeys(SECRET_VARS, SECRET))
    config = SandboxConfig(workers=2, timeout_s=5.0, memory_mb=256, preload=DEFAULT_PRELOAD + HOSTILE_PRELOAD)
    sb = Sandbox(config)
    try:
        assert sb.protections  # waits for the workers
        yield sb
    finally:
        sb.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def light() -> Iterator[Sandbox]:
    """One worker, no sympy (starts in a fraction of a second), threads allowed, a 1 s CPU limit."""
    config = SandboxConfig(
        workers=1, timeout_s=10.0, cpu_time_s=1.0, allow_threads=True, preload=("threading", "time"), warmup=()
    )
    with Sandbox(config) as sb:
        yield sb


def _ppid_map() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
                out[int(name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _descendants(pid: int, ppids: dict[int, int]) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in ppids.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def strays(sb: Sandbox) -> list[tuple[int, list[int]]]:
    """Processes beyond the two idle, childless children a zygote holds between calls (lent one, spare one).

    Anything a program left behind would show up as a grandchild, or (re-parented to the zygote, a subreaper) as a
    third child.
    """
    ppids = _ppid_map()
    bad = []
    for zygote in sb.worker_pids():
        below = _descendants(zygote, ppids)
        direct = [p for p in below if ppids.get(p) == zygote]
        if len(direct) > 2 or len(below) > len(direct):
            bad.append((zygote, below))
    return bad


def assert_healthy(sb: Sandbox, timeout: float = 5.0) -> None:
    """The next calls (one per worker) work, and no stray process remains."""
    for _ in range(sb.config.workers):
        r = sb.run("print('alive')")
        assert r.ok and r.stdout == "alive\n", r
    deadline = time.monotonic() + timeout
    while (bad := strays(sb)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not bad, f"stray processes: {bad}"


@pytest.fixture(autouse=True)
def _healthy_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in ("sandbox", "light"):
        if name in request.fixturenames:
            assert_healthy(request.getfixturevalue(name))


def requires(sb: Sandbox, *layers: str) -> None:
    missing = [k for k in layers if not sb.protections[k]]
    if missing:
        pytest.skip(f"not available on this machine: {missing}")


# --------------------------------------------------------------------------------------------------------------------
# The layers are really there


def test_every_protection_is_active_when_root(sandbox: Sandbox) -> None:
    if not IS_ROOT:
        pytest.skip("the full set needs root (namespaces, uid drop)")
    assert sandbox.protections == dict.fromkeys(PROTECTIONS, True), sandbox.info["notes"]


def test_protections_report_a_disabled_layer_and_require_refuses_it() -> None:
    config = SandboxConfig(workers=1, seccomp=False, network_namespace=False, fast_fork=False, preload=(), warmup=())
    with Sandbox(config) as sb:
        assert sb.protections["seccomp"] is False
        assert sb.protections["network_namespace"] is False
        assert sb.info["fast_fork"] is False  # children come from os.fork() here: that path stays tested
        assert sb.run("print(6 * 7)").stdout == "42\n"  # still runs, with the layers it has
        assert sb.run("import os\nos.kill(os.getpid(), 9)").error == "Killed"
    strict = SandboxConfig(workers=1, network_namespace=False, require=("network_namespace",), preload=(), warmup=())
    with Sandbox(strict) as sb, pytest.raises(SandboxUnavailable, match="network_namespace"):
        sb.run("print(1)")


_NONROOT_SCRIPT = """
import json, sys
sys.path.insert(0, ROOT)
from rstar.verify.sandbox import Sandbox, SandboxConfig
with Sandbox(SandboxConfig(workers=1, preload=("socket",), warmup=(), timeout_s=3)) as sb:
    out = {"protections": sb.protections}
    for name, code in [("fork", "import os\\nos.fork()"), ("socket", "import socket\\nsocket.socket()"),
                       ("write", "open('/tmp/rstar-nonroot-' + str(id(0)), 'w')"), ("read", "open('/etc/passwd')"),
                       ("signal", "import os\\nos.kill(os.getppid(), 0)"), ("ok", "print(6 * 7)")]:
        r = sb.run(code)
        out[name] = [r.ok, r.error, r.stdout]
print(json.dumps(out))
"""


def test_without_root_the_unprivileged_layers_still_hold() -> None:
    """Run a sandbox as uid nobody with the system interpreter: no uid drop or namespaces, the rest still holds."""
    system_python = Path("/usr/bin/python3")
    if not IS_ROOT or not shutil.which("setpriv") or not system_python.exists():
        pytest.skip("needs root (to become nobody), setpriv and /usr/bin/python3")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin"]
    probe = subprocess.run(
        [
            *as_nobody,
            str(system_python),
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); import rstar.verify.sandbox",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"the system interpreter cannot import this checkout as nobody: {probe.stderr.strip()[-200:]}")
    proc = subprocess.run(
        [*as_nobody, str(system_python), "-c", _NONROOT_SCRIPT.replace("ROOT", repr(str(ROOT)))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    p = out["protections"]
    assert not p["uid_drop"] and not p["network_namespace"] and not p["scratch_tmpfs"]  # honest about what is off
    assert p["seccomp"] and p["landlock_fs"] and p["no_processes"] and p["no_network"], p
    for name in ("fork", "socket", "write", "read", "signal"):
        assert out[name][:2] == [False, "PermissionError"], (name, out[name])
    assert out["ok"] == [True, None, "42\n"]


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: processes


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("import os\nwhile True:\n    os.fork()\n", id="fork-bomb"),
        pytest.param("import os\npid = os.fork()\nprint('forked', pid)\n", id="fork"),
        pytest.param("import subprocess\nprint(subprocess.run(['/bin/echo', 'pwned']))\n", id="subprocess"),
        pytest.param("import os\nos.execv('/bin/sh', ['sh', '-c', 'echo pwned'])\n", id="execv"),
        pytest.param("import os\nos.posix_spawn('/bin/echo', ['echo', 'pwned'], {})\n", id="posix_spawn"),
        pytest.param("import pty\npid, fd = pty.fork()\nprint('pwned', pid)\n", id="pty"),
    ],
)
def test_no_child_process_can_be_created(sandbox: Sandbox, code: str) -> None:
    requires(sandbox, "no_processes")  # verified at start-up; never run a fork bomb where fork works
    r = sandbox.run(code)
    assert not r.ok and r.error in {"PermissionError", "BlockingIOError", "OSError", "FileNotFoundError"}, r
    assert "forked" not in r.stdout and "pwned" not in r.stdout, r


def test_fork_through_ctypes_fails_too(sandbox: Sandbox) -> None:
    r = sandbox.run("import ctypes\nprint('fork returned', ctypes.CDLL(None).fork())\n")
    assert r.ok and r.stdout == "fork returned -1\n", r  # libc's fork() reports the refusal as -1


def test_os_system_cannot_run_a_shell(sandbox: Sandbox) -> None:
    r = sandbox.run("import os\nprint('rc', os.system('echo pwned'))\n")
    assert "pwned" not in r.stdout.replace("echo pwned", "") and "rc 0" not in r.stdout, r


def test_threads_are_refused_by_default(sandbox: Sandbox) -> None:
    r = sandbox.run("import threading, time\nthreading.Thread(target=time.sleep, args=(5,)).start()\n")
    assert r.error == "RuntimeError" and "thread" in r.error_message, r


def test_a_thread_never_outlives_its_program(light: Sandbox) -> None:
    code = (
        "import threading, time\n"
        "def late():\n    time.sleep(0.4)\n    print('late', flush=True)\n"
        "threading.Thread(target=late).start()\nprint('main done')\n"
    )
    r = light.run(code)
    assert r.ok and r.stdout == "main done\n" and r.duration_ms < 400, r
    time.sleep(0.5)
    assert not strays(light)


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: time


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("while True:\n    pass\n", id="busy-loop"),
        pytest.param("import time\ntime.sleep(100)\n", id="sleep"),
        pytest.param(
            "import signal\nfor s in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
            id="ignore-signals",
        ),
        pytest.param(
            "import signal\nsignal.signal(signal.SIGALRM, lambda *a: None)\n"
            "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\nwhile True:\n    pass\n",
            id="setitimer-storm",
        ),
        pytest.param(
            "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, range(1, 32))\nwhile True:\n    pass\n",
            id="block-signals",
        ),
    ],
)
def test_a_program_that_does_not_end_times_out(sandbox: Sandbox, code: str) -> None:
    r = sandbox.run(code, timeout_s=TIMEOUT)
    assert r.error == "Timeout" and r.timed_out and not r.ok, r


def test_timeout_is_accurate(sandbox: Sandbox) -> None:
    r = sandbox.run("while True:\n    pass\n", timeout_s=0.3)
    assert r.timed_out
    assert 300 <= r.duration_ms < 1500, r.duration_ms  # never early; late only by scheduling on a loaded machine


def test_a_program_within_its_time_finishes(sandbox: Sandbox) -> None:
    r = sandbox.run("import time\ntime.sleep(0.2)\nprint('done')\n", timeout_s=3)
    assert r.ok and r.stdout == "done\n" and r.duration_ms >= 200, r


@pytest.mark.slow
def test_cpu_time_limit_ends_a_busy_program(light: Sandbox) -> None:
    r = light.run("while True:\n    pass\n")  # the wall-clock limit is 10 s; RLIMIT_CPU (1 s) ends it first
    assert r.error == "Timeout" and r.timed_out and "CPU" in r.error_message, r


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: memory, output, crashes


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("x = bytearray(4 * 1024**3)\n", id="one-big-block"),
        pytest.param("chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))\n", id="growing-list"),
        pytest.param("x = 'a' * (10**10)\n", id="huge-string"),
        pytest.param(
            "def f():\n    kept = [bytearray(10**6) for _ in range(10**5)]\n    return kept\nf()\n", id="in-a-function"
        ),
        pytest.param("import numpy as np\nx = np.ones((60000, 60000))\n", id="numpy"),
    ],
)
def test_memory_bomb_is_a_memory_error(sandbox: Sandbox, code: str) -> None:
    r = sandbox.run(code)
    assert r.error == "MemoryError" and r.memory_exceeded and not r.ok, r


def test_the_memory_limit_leaves_room_for_real_work(sandbox: Sandbox) -> None:
    r = sandbox.run("x = bytearray(150 * 1024**2)\nprint(len(x))\n")
    assert r.ok and r.stdout == f"{150 * 1024**2}\n", r


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("print('x' * 10**7)\n", id="one-huge-print"),
        pytest.param("while True:\n    print('spam')\n", id="endless-prints"),
        pytest.param("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)\n", id="stderr-flood"),
        pytest.param("import os\nwhile True:\n    os.write(1, b'y' * 4096)\n", id="raw-fd-writes"),
    ],
)
def test_huge_output_is_cut_and_the_program_stopped(sandbox: Sandbox, code: str) -> None:
    r = sandbox.run(code)
    cap = sandbox.config.max_output_bytes
    assert r.error == "OutputLimit" and r.output_truncated and not r.timed_out, r
    assert len(r.stdout.encode()) <= cap and len(r.stderr.encode()) <= cap


def test_output_under_the_cap_is_complete(sandbox: Sandbox) -> None:
    r = sandbox.run("print('x' * 60000)\n")
    assert r.ok and r.stdout == "x" * 60000 + "\n" and not r.output_truncated


@pytest.mark.parametrize(
    ("code", "signame"),
    [
        pytest.param("import ctypes\nctypes.string_at(0)\n", "SIGSEGV", id="ctypes-null-read"),
        pytest.param("import faulthandler\nfaulthandler._sigsegv()\n", "SIGSEGV", id="faulthandler"),
        pytest.param("import os\nos.abort()\n", "SIGABRT", id="abort"),
        pytest.param("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "SIGKILL", id="self-kill"),
    ],
)
def test_a_crash_is_reported_as_killed_with_the_signal(sandbox: Sandbox, code: str, signame: str) -> None:
    r = sandbox.run(code)
    assert r.error == "Killed" and signame in r.error_message and not r.ok, r


def test_deep_recursion_is_a_recursion_error(sandbox: Sandbox) -> None:
    r = sandbox.run("def f(n):\n    return f(n + 1)\nf(0)\n")
    assert r.error == "RecursionError" and "Traceback" in r.stderr, r


def test_recursion_past_the_c_stack_is_a_clean_crash(sandbox: Sandbox) -> None:
    # Through map(), every level also recurses in C, so the C stack overflows before Python's limit is reached.
    code = "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return list(map(f, [n + 1]))\nf(0)\n"
    r = sandbox.run(code, timeout_s=3)
    assert not r.ok and r.error in {"Killed", "RecursionError", "MemoryError"}, r


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: exits


@pytest.mark.parametrize(
    ("code", "ok", "message"),
    [
        pytest.param("import sys\nprint('a')\nsys.exit(0)\nprint('b')\n", True, "", id="sys.exit(0)"),
        pytest.param("raise SystemExit\n", True, "", id="SystemExit"),
        pytest.param("import sys\nsys.exit(3)\n", False, "exit code 3", id="sys.exit(3)"),
        pytest.param("import sys\nsys.exit('boom')\n", False, "boom", id="sys.exit(msg)"),
        pytest.param("import os\nprint('a', flush=True)\nos._exit(0)\n", True, "", id="os._exit(0)"),
        pytest.param("import os\nos._exit(7)\n", False, "exit code 7", id="os._exit(7)"),
    ],
)
def test_exits_are_reported_by_status(sandbox: Sandbox, code: str, ok: bool, message: str) -> None:
    r = sandbox.run(code)
    assert r.ok is ok, r
    assert (r.error is None) if ok else (r.error == "SystemExit" and message in r.error_message), r
    if "print('a'" in code:
        assert r.stdout == "a\n"


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: files


def test_writing_in_the_scratch_dir_works(sandbox: Sandbox) -> None:
    r = sandbox.run("open('notes.txt', 'w').write('hi')\nprint(open('notes.txt').read())\n")
    assert r.ok and r.stdout == "hi\n", r


def test_the_scratch_dir_is_empty_for_the_next_program(sandbox: Sandbox) -> None:
    r = sandbox.run(
        "import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\nprint(sorted(os.listdir()))"
    )
    assert r.ok and r.stdout == "['d']\n", r
    for _ in range(sandbox.config.workers + 1):
        r = sandbox.run("import os\nprint(os.listdir())\n")
        assert r.ok and r.stdout == "[]\n", r


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm", "/var/tmp", "tmp_path", "project"])
def test_no_write_outside_the_scratch_dir(sandbox: Sandbox, tmp_path: Path, where: str) -> None:
    base = {"tmp_path": str(tmp_path), "project": str(ROOT)}.get(where, where)
    target = Path(base) / f"rstar-escape-{uuid.uuid4().hex}"
    r = sandbox.run(f"open({str(target)!r}, 'w').write('escaped')\n")
    assert not r.ok and r.error in {"PermissionError", "OSError"}, r
    assert not target.exists()


def test_a_symlink_does_not_lead_out_of_the_scratch_dir(sandbox: Sandbox) -> None:
    r = sandbox.run("import os\nos.symlink('/etc/passwd', 'link')\nprint(open('link').read())\n")
    assert r.error == "PermissionError" and "root:" not in r.stdout, r


def test_a_file_larger_than_the_limit_cannot_be_written(sandbox: Sandbox) -> None:
    r = sandbox.run("open('big', 'wb').write(b'x' * (20 * 1024 * 1024))\n")
    assert r.error == "OSError" and "too large" in r.error_message, r


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * 10**7)\n", id="bytes"),
        pytest.param("for i in range(10**5):\n    open(f'f{i}', 'w').close()\n", id="inodes"),
    ],
)
def test_the_scratch_dir_cannot_fill_the_disk(sandbox: Sandbox, code: str) -> None:
    requires(sandbox, "scratch_tmpfs")
    r = sandbox.run(code)
    assert r.error == "OSError" and "No space left" in r.error_message, r


def test_another_calls_scratch_files_are_invisible(sandbox: Sandbox) -> None:
    writer = "import os, time\nopen('secret.txt', 'w').write('top secret')\nprint(os.getcwd())\ntime.sleep(1.0)\n"
    reader = (
        "import os, time\ncwd = os.getcwd()\n"
        "other = cwd.replace('/w0/', '/w1/') if '/w0/' in cwd else cwd.replace('/w1/', '/w0/')\n"
        "time.sleep(0.3)\nfound = []\n"
        "for name in ('secret.txt',):\n"
        "    try:\n        found.append(open(os.path.join(other, name)).read())\n"
        "    except OSError as e:\n        found.append(type(e).__name__)\n"
        "print(cwd != other, found)\n"
    )
    w, r = sandbox.run_batch([writer, reader])
    assert w.ok and r.ok, (w, r)
    assert "True" in r.stdout and "top secret" not in r.stdout, r


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: secrets, stdin


def test_the_environment_holds_nothing_of_the_parent(sandbox: Sandbox) -> None:
    r = sandbox.run("import os\nprint(sorted(os.environ.items()))\n")
    assert r.ok and SECRET not in r.stdout, r
    for prefix in ("AWS_", "MLFLOW_", "PREFECT_", "HF_"):
        assert f"'{prefix}" not in r.stdout, r


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/etc/passwd",
        "/proc/{caller}/environ",
        "/proc/{caller}/cmdline",
        "/proc/{zygote}/environ",
        "/proc/1/environ",
        "{project}/pyproject.toml",
        "{root_only}",
    ],
)
def test_secrets_on_disk_are_unreadable(sandbox: Sandbox, tmp_path: Path, path: str) -> None:
    root_only = tmp_path / "credentials"
    root_only.write_text(SECRET)
    root_only.chmod(0o600)
    target = path.format(caller=os.getpid(), zygote="' + str(os.getppid()) + '", project=ROOT, root_only=root_only)
    r = sandbox.run(f"import os\nprint(open('{target}', 'rb').read())\n")
    assert r.error == "PermissionError" and SECRET not in r.stdout and not r.stdout, r


def test_stdin_is_empty(sandbox: Sandbox) -> None:
    r = sandbox.run("import sys\nprint(repr(sys.stdin.read()))\ninput()\n")
    assert r.stdout == "''\n" and r.error == "EOFError", r


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: network and other processes


def test_no_connection_reaches_a_listening_port(sandbox: Sandbox) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.3)
        port = server.getsockname()[1]
        r = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).send(b'hi')\n")
        with pytest.raises(TimeoutError):
            server.accept()
    assert not r.ok and r.error in {"PermissionError", "OSError"}, r


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("import socket\nsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n", id="unix-socket"),
        pytest.param("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n", id="udp-socket"),
        pytest.param("import socket\nprint(socket.getaddrinfo('example.com', 80))\n", id="dns"),
    ],
)
def test_no_socket_of_any_kind(sandbox: Sandbox, code: str) -> None:
    r = sandbox.run(code)
    assert not r.ok and r.error in {"PermissionError", "OSError", "gaierror"}, r


# Only our own zygote gets a real signal. Elsewhere signal 0 probes the same permission check without delivering
# anything, so that on a machine where a layer is missing this test fails instead of killing the test run (or, for
# kill(-1) as root, every process on the machine).
@pytest.mark.parametrize(
    ("target", "sig"),
    [
        pytest.param("os.getppid()", "signal.SIGKILL", id="zygote"),
        pytest.param("-os.getppid()", "signal.SIGKILL", id="zygote-group"),
        pytest.param("{caller}", "0", id="caller"),
        pytest.param("-1", "0", id="every-process"),
        pytest.param("1", "0", id="init"),
    ],
)
def test_no_signal_reaches_another_process(sandbox: Sandbox, target: str, sig: str) -> None:
    zygotes = sandbox.worker_pids()
    r = sandbox.run(f"import os, signal\nos.kill({target.format(caller=os.getpid())}, {sig})\n")
    assert r.error == "PermissionError", r
    assert set(zygotes) <= set(sandbox.worker_pids())  # no zygote died


def test_the_caller_cannot_be_killed(sandbox: Sandbox) -> None:
    requires(sandbox, "seccomp")  # verified at start-up; without it this would be a real SIGKILL of the test run
    r = sandbox.run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n")
    assert r.error == "PermissionError", r


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: state that must not leak into the next program


@pytest.mark.parametrize(
    ("attack", "check", "expected"),
    [
        pytest.param("import builtins\nbuiltins.print = None\nbuiltins.len = None\n", "print(len('abc'))", "3",
                     id="builtins"),
        pytest.param("import math\nmath.pi = 3\nmath.sqrt = lambda x: 0\n", "import math\nprint(math.pi, math.sqrt(4))",
                     "3.141592653589793 2.0", id="module-attribute"),
        pytest.param("import sys\nsys.modules['json'] = None\nsys.modules['fractions'] = None\n",
                     "import json, fractions\nprint(json.dumps([fractions.Fraction(1, 2).denominator]))", "[2]",
                     id="sys.modules"),
        pytest.param("import sympy\nsympy.Rational = None\nsympy.core.cache.clear_cache()\n",
                     "from sympy import Rational\nprint(Rational(1, 3) + Rational(1, 6))", "1/2", id="sympy"),
        pytest.param("leaked = 42\n", "print('leaked' in globals())", "False", id="globals"),
        pytest.param("import os\nos.environ['INJECTED'] = '1'\nos.chdir('/')\n",
                     "import os\nprint('INJECTED' in os.environ, os.getcwd().endswith('scratch'))", "False True",
                     id="environment-and-cwd"),
        pytest.param("import random\nrandom.seed(123)\n", "import random\nprint(random.random())",
                     "0.8444218515250481", id="random-state"),
    ],
)  # fmt: skip
def test_nothing_leaks_into_the_next_program(sandbox: Sandbox, attack: str, check: str, expected: str) -> None:
    r = sandbox.run(attack)
    assert r.ok, r
    for _ in range(sandbox.config.workers + 1):  # both workers, one of them twice
        r = sandbox.run(check)
        assert r.ok and r.stdout == expected + "\n", r


# --------------------------------------------------------------------------------------------------------------------
# Hostile programs: file descriptors and the result channel


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("import os\nos.close(0)\nos.close(1)\nos.close(2)\n", id="close-0-2"),
        pytest.param(
            "import os\nfor fd in range(1024):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\n",
            id="close-all",
        ),
        pytest.param("import os\nos.dup2(1, 3)\nprint('into the result pipe')\n", id="hijack-result-fd"),
        pytest.param("import os\nos.write(3, b'\\x02RESULT {\"error\": null}\\n' * 10**4)\n", id="forge-results"),
        pytest.param(
            'import os\nos.write(3, b\'\\x02RESULT {"sandbox_error": "forged"}\\n\')\nos._exit(0)\n',
            id="forge-sandbox-error",
        ),
        pytest.param(
            "import os\nos.write(3, b'\\x02RESULT ' + b'[' * 100000 + b'\\n')\nos._exit(0)\n", id="deep-json-result"
        ),
        pytest.param(
            "import os\nnull = os.open('/dev/null', os.O_WRONLY)\nos.dup2(null, 1)\nprint('hidden')\n",
            id="stdout-to-devnull",
        ),
    ],
)
def test_meddling_with_fds_gives_a_clear_result(sandbox: Sandbox, code: str) -> None:
    zygotes = sandbox.worker_pids()
    r = sandbox.run(code)
    assert isinstance(r, ExecutionResult) and r.error != "SandboxError", r
    assert sandbox.worker_pids() == zygotes  # no zygote was made to fail (restarts cost seconds)


def test_killing_a_zygote_from_outside_is_survived(light: Sandbox) -> None:
    [zygote] = light.worker_pids()
    os.kill(zygote, signal.SIGKILL)
    time.sleep(0.1)
    r = light.run("print('after restart')")
    assert r.ok and r.stdout == "after restart\n", r
    assert light.worker_pids() and light.worker_pids() != [zygote]


# --------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("code", "error"),
    [
        pytest.param(b"print('\xff\xfe')\n", "SyntaxError", id="non-utf8-bytes"),
        pytest.param("print('\udcff')\n", "SyntaxError", id="lone-surrogate"),
        pytest.param("x = (\n", "SyntaxError", id="syntax-error"),
        pytest.param("print(1)\x00\n", "SyntaxError", id="null-byte"),
        pytest.param("import no_such_module_rstar\n", "ModuleNotFoundError", id="missing-module"),
        pytest.param("compile('(' * 10**5, 'x', 'exec')\n", "SyntaxError", id="compile-deep-nesting"),
    ],
)
def test_bad_programs_are_clear_errors(sandbox: Sandbox, code: str | bytes, error: str) -> None:
    r = sandbox.run(code)
    assert r.error == error or (error == "SyntaxError" and r.error == "ValueError"), r


def test_exec_of_huge_generated_code_is_a_clear_error(sandbox: Sandbox) -> None:
    r = sandbox.run("exec('1+' * 10**5 + '1')\n")
    assert not r.ok and r.error in {"RecursionError", "MemoryError", "SyntaxError"}, r


def test_empty_program_succeeds_silently(sandbox: Sandbox) -> None:
    r = sandbox.run("")
    assert r.ok and r.stdout == "" and r.error is None


def test_a_10mb_program_is_refused_without_running(sandbox: Sandbox) -> None:
    r = sandbox.run("x = 1\n" * (10 * 1024 * 1024 // 6))
    assert r.error == "CodeTooLarge" and not r.ok and r.duration_ms == 0.0, r


def test_a_program_just_under_the_size_limit_runs(sandbox: Sandbox) -> None:
    r = sandbox.run("s = '" + "a" * 990_000 + "'\nprint(len(s))\n")  # one literal: cheap to compile
    assert r.ok and r.stdout == "990000\n", r


# --------------------------------------------------------------------------------------------------------------------
# Normal programs


def test_prints_are_captured_in_order(sandbox: Sandbox) -> None:
    r = sandbox.run("for i in range(3):\n    print(i)\nprint('π ≈', round(3.14159, 2))\n")
    assert r.ok and r.stdout == "0\n1\n2\nπ ≈ 3.14\n" and r.stderr == "", r


def test_accumulated_steps_with_sympy_fractions_and_numpy(sandbox: Sandbox) -> None:
    code = (
        "# Step 1: solve the equation\nfrom sympy import symbols, solve, Rational\nx = symbols('x')\n"
        "roots = solve(x**2 - 5*x + 6, x)\n"
        "# Step 2: exact arithmetic\nfrom fractions import Fraction\ntotal = sum(Fraction(1, r) for r in roots)\n"
        "# Step 3: numpy\nimport numpy as np\nprint(roots, total, int(np.prod(roots)), Rational(2, 4))\n"
    )
    r = sandbox.run(code)
    assert r.ok and r.stdout == "[2, 3] 5/6 6 1/2\n", r


def test_an_error_reports_kind_message_and_traceback(sandbox: Sandbox) -> None:
    r = sandbox.run("x = 1\ny = x / 0\n")
    assert r.error == "ZeroDivisionError" and r.error_message == "ZeroDivisionError: division by zero"
    assert 'File "<program>", line 2' in r.stderr and "y = x / 0" in r.stderr, r.stderr


def test_output_is_reproducible_across_workers(sandbox: Sandbox) -> None:
    code = "import random\nprint(random.random(), sorted({'b', 'a', 'c'}), hash('abc') == hash('abc'))"
    outputs = {r.stdout for r in sandbox.run_batch([code] * 4)}
    assert len(outputs) == 1


def test_batch_keeps_input_order(sandbox: Sandbox) -> None:
    codes = [f"import time\ntime.sleep({(7 * i) % 5} / 200)\nprint({i})" for i in range(12)]
    results = sandbox.run_batch(codes)
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]


def test_batches_from_several_threads_at_once(sandbox: Sandbox) -> None:
    out: dict[int, list[str]] = {}

    def worker(t: int) -> None:
        out[t] = [r.stdout for r in sandbox.run_batch([f"print({t} * 100 + {i})" for i in range(6)])]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert out == {t: [f"{t * 100 + i}\n" for i in range(6)] for t in range(4)}


def test_sandbox_implements_the_code_executor_protocol(sandbox: Sandbox) -> None:
    executor: CodeExecutor = sandbox
    assert isinstance(executor, CodeExecutor) and isinstance(InProcessExecutor(), CodeExecutor)
    assert executor.run_batch([]) == []


# --------------------------------------------------------------------------------------------------------------------
# Life cycle and configuration


def test_close_is_idempotent_and_final() -> None:
    sb = Sandbox(SandboxConfig(workers=1, preload=(), warmup=()))
    assert sb.run("print(1)").stdout == "1\n"
    pids = sb.worker_pids()
    sb.close()
    sb.close()
    with pytest.raises(RuntimeError, match="closed"):
        sb.run("print(1)")
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(Path(f"/proc/{p}/stat").exists() for p in pids)
    assert not sb._root.exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"timeout_s": 0},
        {"cpu_time_s": -1.0},
        {"memory_mb": 0},
        {"max_output_bytes": 0},
        {"max_open_files": 3},
        {"preload": "sympy"},
        {"require": ("teleportation",)},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(**kwargs)  # type: ignore[arg-type]


def test_default_sandbox_is_shared_until_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []

    class Fake:
        def __init__(self) -> None:
            self._closed = False
            made.append(self)

    monkeypatch.setattr(sandbox_mod, "Sandbox", Fake)
    monkeypatch.setattr(sandbox_mod, "_default", None)
    first = sandbox_mod.default_sandbox()
    assert sandbox_mod.default_sandbox() is first
    first._closed = True
    assert sandbox_mod.default_sandbox() is not first and len(made) == 2


# --------------------------------------------------------------------------------------------------------------------
# The unsafe in-process executor (benchmark upper bound)

Check = Callable[[ExecutionResult], bool]


@pytest.mark.parametrize(
    ("code", "check"),
    [
        ("print(6 * 7)", lambda r: r.ok and r.stdout == "42\n"),
        ("1 / 0", lambda r: r.error == "ZeroDivisionError" and "Traceback" in r.stderr),
        ("import sys\nsys.exit(2)", lambda r: r.error == "SystemExit" and r.error_message == "exit code 2"),
        ("import sys\nsys.exit(0)", lambda r: r.ok),
        ("x = (", lambda r: r.error == "SyntaxError"),
        ("leak = 1", lambda r: r.ok),
    ],
)
def test_in_process_executor_has_the_same_result_shape(code: str, check: Check) -> None:
    ex = InProcessExecutor()
    assert check(ex.run(code))
    assert ex.run("print('leak' in globals())").stdout == "False\n"
    assert ex.protections == dict.fromkeys(PROTECTIONS, False)
