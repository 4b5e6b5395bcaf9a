"""The sandbox's fork server ("zygote"): one per worker, started by `rstar.verify.sandbox.Sandbox` as a fresh interpreter.

Run as a script (`python -s -B -P _sandbox_zygote.py`), never imported for its side effects: the caller is
multi-threaded (Prefect task threads, torch), so it must never `fork()` itself; it starts this file with the real
interpreter instead. This file uses the standard library only and does not import `rstar`, so the zygote's address
space holds nothing but the interpreter, the pre-imported modules and this loop.

Life of a zygote:

1. read its configuration (the first message on its socket), set up what is done once per worker: a private mount
   namespace with a size-limited tmpfs as the scratch directory, a network namespace with no interfaces up, a landlock
   ruleset, the seccomp filter template;
2. pre-import the modules model code uses (sympy, numpy, fractions, ...), run a few trusted warm-up programs through the
   same code path as real ones, seed the RNGs, `gc.freeze()`; run one self-test child that applies every layer and
   checks that each one really blocks what it should; answer "ready" with the protections that passed;
3. lend children: fork a child (which applies every layer, then blocks reading its program from a pipe), send the
   parent its pipe ends and pidfd (SCM_RIGHTS), fork the next spare; when the parent says "done", kill and reap the
   child, wipe the scratch directory, lend the spare. The parent writes the program into the child and supervises it
   itself (deadline, output caps, kill), so a call costs two wake-ups, not four; the zygote reports a child's exit
   status only when asked (it died without a complete result). A child never survives its call.

In the child, in this order: own session and process group, fds 0-3 = program pipe, stdout pipe, stderr pipe, result
pipe (every other fd closed), rlimits (address space relative to the pre-loaded interpreter, file size, open files,
core, processes), `chdir` to the scratch dir, uid/gid dropped to nobody (when root), no-new-privs, parent-death signal,
landlock, seccomp; then it reads its program, sets RLIMIT_CPU, puts /dev/null on fd 0, and runs `compile` + `exec`
with fresh globals.

Protocol: parent <-> zygote is a SOCK_SEQPACKET socket (the zygote's fd 0) carrying one JSON object per message, with
fds attached to "child" messages. Parent -> child is a pipe carrying one frame (4-byte big-endian length, then a JSON
header line and the program's bytes).
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import gc
import io
import json
import linecache
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

# --------------------------------------------------------------------------------------------------------------------
# Wire protocol (shared with the parent, which imports this module for these helpers only)

FRAME = struct.Struct("!I")
MAX_MESSAGE = 64 * 1024 * 1024
PROGRAM_NAME = "<program>"
SETUP_FAILED_EXIT = 70  # the child could not apply a protection: fail closed, the program never runs
STARTED = b"\x01"  # written on the result pipe just before the program starts
RESULT_PREFIX = b"\x02RESULT "
RESULT_CAP = 256 * 1024
MAX_CONTROL_MESSAGE = 1 << 20  # zygote <-> parent messages (configuration, "ready", a child's fds, a status)


def write_message(fd: int, payload: bytes) -> None:
    data = FRAME.pack(len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_exact(fd: int, n: int) -> bytes | None:
    """Read exactly n bytes from a blocking fd; None on EOF."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> bytes | None:
    head = read_exact(fd, FRAME.size)
    if head is None:
        return None
    (size,) = FRAME.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds the protocol limit")
    return read_exact(fd, size) if size else b""


# --------------------------------------------------------------------------------------------------------------------
# Kernel interfaces through ctypes (no native packages needed)

_libc: Any = None


def libc() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        lib.prctl.restype = ctypes.c_int
        lib.unshare.argtypes = [ctypes.c_int]
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc = lib
    return _libc


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18


_raw_fork: Any = None


def single_threaded() -> bool:
    """Whether this process has exactly one thread (native ones included, e.g. a BLAS pool)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def fast_fork() -> int:
    """fork(2) without CPython's after-fork machinery: ~45 page faults in the child instead of ~260 (~1 ms less here).

    `os.fork()` re-initialises the runtime's locks and threads and runs every `os.register_at_fork` handler (random
    re-seeds itself, threading rebuilds its bookkeeping), each touching and so copying pages. None of that is needed
    in a process with one thread that is not in the middle of an import, which is what the zygote's loop is (checked by
    `single_threaded` before this is enabled). Called through PyDLL, so the GIL stays held across the call and both
    processes continue with a consistent interpreter state.
    """
    global _raw_fork
    if _raw_fork is None:
        fn = ctypes.PyDLL(None, use_errno=True).fork
        fn.restype = ctypes.c_int
        fn.argtypes = []
        _raw_fork = fn
    pid = int(_raw_fork())
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fork: {os.strerror(err)}")
    return pid


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(libc().prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


# ---- landlock (ABI 1..7; syscall numbers are the same on every architecture) ----
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LL_FS_EXECUTE, LL_FS_WRITE_FILE, LL_FS_READ_FILE, LL_FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
LL_FS_REFER, LL_FS_TRUNCATE, LL_FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1 << 0, 1 << 1
LL_SCOPE_ABSTRACT_UNIX_SOCKET, LL_SCOPE_SIGNAL = 1 << 0, 1 << 1
_LL_FILE_RIGHTS = LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def landlock_abi() -> int:
    try:
        return max(0, int(libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))))
    except Exception:
        return 0


def landlock_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= LL_FS_REFER
    if abi >= 3:
        rights |= LL_FS_TRUNCATE
    if abi >= 5:
        rights |= LL_FS_IOCTL_DEV
    return rights


def landlock_ruleset(abi: int, writable: str, readable: list[str]) -> tuple[int, dict[str, bool]]:
    """A ruleset allowing everything under `writable`, reading (and mapping) under `readable`, nothing else.

    On ABI >= 4 it also denies TCP bind/connect, on ABI >= 6 signals to and abstract UNIX sockets of processes outside
    the sandboxed child. Returns the ruleset fd (applied per child by `landlock_restrict_self`) and what it covers.
    """
    fs = landlock_fs_rights(abi)
    net = (LL_NET_BIND_TCP | LL_NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (LL_SCOPE_ABSTRACT_UNIX_SOCKET | LL_SCOPE_SIGNAL) if abi >= 6 else 0
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", fs, net, scoped)[:size], size)
    fd = _check(
        int(libc().syscall(SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(size), ctypes.c_uint32(0))),
        "landlock_create_ruleset",
    )
    read = LL_FS_READ_FILE | LL_FS_READ_DIR | LL_FS_EXECUTE
    rules: list[tuple[str, int]] = [(writable, fs)] + [(p, read) for p in readable]
    rules += [("/dev/null", LL_FS_READ_FILE | LL_FS_WRITE_FILE), ("/dev/urandom", LL_FS_READ_FILE)]
    for path, access in rules:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                access &= _LL_FILE_RIGHTS
            rule = _PathBeneath(access & fs, pfd)
            _check(
                int(libc().syscall(SYS_LANDLOCK_ADD_RULE, fd, 1, ctypes.byref(rule), ctypes.c_uint32(0))),
                f"landlock_add_rule({path})",
            )
        finally:
            os.close(pfd)
    return fd, {"landlock_fs": True, "landlock_net": bool(net), "landlock_scopes": bool(scoped)}


def default_readable_paths() -> list[str]:
    """Where a child may read (and map) files: the interpreter's library directories and the system's shared libraries.

    Only these, so that lazy imports keep working where DAC allows them, and nothing else (home directories, /etc,
    /proc, the project checkout) is readable.
    """
    import sysconfig

    paths = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.add(os.path.dirname(os.__file__))
    dynload = os.path.join(os.path.dirname(os.__file__), "lib-dynload")
    paths.add(dynload)
    paths.update(("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo"))
    return sorted(p for p in paths if p and os.path.isdir(p))


def landlock_restrict_self(ruleset_fd: int) -> None:
    _check(int(libc().syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, ctypes.c_uint32(0))), "landlock_restrict_self")


# ---- seccomp: a deny-list BPF filter ----
# Numbers generated from the kernel's uapi headers (asm/unistd_64.h for x86_64, asm-generic/unistd.h for aarch64).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59, "execveat": 322, "kill": 62, "tkill": 200,
        "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "pidfd_send_signal": 424, "pidfd_getfd": 438,
        "socket": 41, "socketpair": 53, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "setsid": 112, "setpgid": 109, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
        "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "memfd_create": 319, "memfd_secret": 447, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168,
        "acct": 163, "quotactl": 179, "quotactl_fd": 443, "personality": 135, "ioperm": 173, "iopl": 172,
        "syslog": 103, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
        "sethostname": 170, "setdomainname": 171, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "lookup_dcookie": 212, "uselib": 134, "vhangup": 153, "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67,
        "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70,
        "msgctl": 71, "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243,
        "mq_notify": 244, "mq_getsetattr": 245, "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114,
        "setresuid": 117, "setresgid": 119, "setgroups": 116, "setfsuid": 122, "setfsgid": 123, "capset": 126,
        "mknod": 133, "mknodat": 259, "fanotify_init": 300, "nfsservctl": 180,
    },
    "aarch64": {
        "clone": 220, "clone3": 435, "execve": 221, "execveat": 281, "kill": 129, "tkill": 130, "tgkill": 131,
        "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "pidfd_send_signal": 424, "pidfd_getfd": 438,
        "socket": 198, "socketpair": 199, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "kcmp": 272, "setsid": 157, "setpgid": 154, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "chroot": 51, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "mount_setattr": 442, "keyctl": 219, "add_key": 217, "request_key": 218,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "memfd_create": 279, "memfd_secret": 447, "kexec_load": 104,
        "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106, "reboot": 142,
        "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60, "quotactl_fd": 443, "personality": 92,
        "syslog": 116, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
        "sethostname": 161, "setdomainname": 162, "open_by_handle_at": 265, "name_to_handle_at": 264,
        "lookup_dcookie": 18, "vhangup": 58, "shmget": 194, "shmat": 196, "shmctl": 195, "shmdt": 197, "semget": 190,
        "semop": 193, "semctl": 191, "semtimedop": 192, "msgget": 186, "msgsnd": 189, "msgrcv": 188, "msgctl": 187,
        "mq_open": 180, "mq_unlink": 181, "mq_timedsend": 182, "mq_timedreceive": 183, "mq_notify": 184,
        "mq_getsetattr": 185, "setuid": 146, "setgid": 144, "setreuid": 145, "setregid": 143, "setresuid": 147,
        "setresgid": 149, "setgroups": 159, "setfsuid": 151, "setfsgid": 152, "capset": 91, "mknodat": 33,
        "fanotify_init": 262, "nfsservctl": 42,
    },
}  # fmt: skip
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SPECIAL = {"clone", "clone3", "kill", "tkill", "tgkill"}
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class SeccompTemplate:
    """The filter as bytes, with the slots where the child's own pid goes (signals may target only itself).

    Denies with EPERM: creating processes (fork, vfork, clone without CLONE_THREAD), exec, sockets, ptrace and
    cross-process memory access, signals to any other process, sessions and process groups, namespaces and mounts,
    kernel keyrings, bpf, perf, io_uring (which would bypass this filter), memfd, System V and POSIX message IPC,
    uid/gid/capability changes and the administrative calls. `clone3` gets ENOSYS so the C library falls back to `clone`,
    whose flags the filter can inspect. Any other architecture or ABI (x32, 32-bit) kills the process.
    """

    def __init__(self, arch: str) -> None:
        table = _SYSCALLS[arch]
        ins: list[tuple[int, Any, Any, Any]] = []  # (code, jt, jf, k); jt/jf may be labels, k may be "PID"/"-PID"
        ins.append((_LD_W_ABS, 0, 0, 4))  # seccomp_data.arch
        ins.append((_JEQ, 0, "kill_process", _AUDIT_ARCH[arch]))
        ins.append((_LD_W_ABS, 0, 0, 0))  # seccomp_data.nr
        if arch == "x86_64":
            ins.append((_JGE, "eperm", 0, 0x40000000))  # x32 ABI
        ins.append((_JEQ, "enosys", 0, table["clone3"]))
        ins.append((_JEQ, "clone_check", 0, table["clone"]))
        for name in ("kill", "tkill", "tgkill"):
            ins.append((_JEQ, "signal_check", 0, table[name]))
        for name, nr in sorted(table.items(), key=lambda kv: kv[1]):
            if name not in _SPECIAL:
                ins.append((_JEQ, "eperm", 0, nr))
        ins.append((_RET, 0, 0, _RET_ALLOW))
        labels: dict[str, int] = {}

        def label(name: str) -> None:
            labels[name] = len(ins)

        label("clone_check")
        ins.append((_LD_W_ABS, 0, 0, 16))  # args[0] low word: clone flags
        ins.append((_JSET, "allow", "eperm", CLONE_THREAD))
        label("signal_check")
        ins.append((_LD_W_ABS, 0, 0, 16))  # args[0] low word: the target pid (kill, tgkill) or tid (tkill)
        ins.append((_JEQ, "allow", 0, "PID"))
        ins.append((_JEQ, "allow", 0, 0))
        ins.append((_JEQ, "allow", "eperm", "-PID"))
        label("allow")
        ins.append((_RET, 0, 0, _RET_ALLOW))
        label("eperm")
        ins.append((_RET, 0, 0, _RET_ERRNO | errno.EPERM))
        label("enosys")
        ins.append((_RET, 0, 0, _RET_ERRNO | errno.ENOSYS))
        label("kill_process")
        ins.append((_RET, 0, 0, _RET_KILL_PROCESS))

        out = bytearray()
        self.pid_slots: list[tuple[int, bool]] = []
        for i, (code, jt, jf, k) in enumerate(ins):
            jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
            jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise ValueError("seccomp jump out of range")
            if isinstance(k, str):
                self.pid_slots.append((len(out) + 4, k.startswith("-")))
                k = 0
            out += struct.pack("=HBBI", code, jt, jf, k)
        self.program = bytes(out)
        self.length = len(ins)

    def install(self, pid: int) -> None:
        prog = bytearray(self.program)
        for offset, negative in self.pid_slots:
            struct.pack_into("=I", prog, offset, (-pid if negative else pid) & 0xFFFFFFFF)
        buf = ctypes.create_string_buffer(bytes(prog), len(prog))
        fprog = _SockFprog(self.length, ctypes.addressof(buf))
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def seccomp_arch() -> str | None:
    machine = os.uname().machine
    return machine if machine in _SYSCALLS and sys.maxsize > 2**32 else None


# --------------------------------------------------------------------------------------------------------------------
# Running one program in a child (everything below the fork)


class Setup:
    """What every child applies: built once per worker from the configuration and the probes."""

    def __init__(self, cfg: dict[str, Any], scratch: str) -> None:
        self.cfg = cfg
        self.scratch = scratch
        self.uid: int | None = None
        self.gid: int | None = None
        self.ruleset_fd = -1
        self.seccomp: SeccompTemplate | None = None
        self.memory_bytes = int(cfg["memory_mb"]) * 1024 * 1024
        self.file_bytes = int(cfg["max_file_bytes"])
        self.open_files = int(cfg["max_open_files"])
        self.allow_threads = bool(cfg["allow_threads"])
        self.max_fd = max(1024, os.sysconf("SC_OPEN_MAX"))
        self.zygote_pid = os.getpid()


def _vm_size() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _apply_child_layers(setup: Setup, vm_size: int) -> None:
    """Everything between fork and the program, in an order where each step still has the rights it needs.

    RLIMIT_CPU is set later, when the program (and its time limit) arrives; lowering a limit needs no privilege.
    """
    os.setsid()
    rl = resource.setrlimit
    rl(resource.RLIMIT_AS, (vm_size + setup.memory_bytes,) * 2)
    rl(resource.RLIMIT_FSIZE, (setup.file_bytes,) * 2)
    rl(resource.RLIMIT_NOFILE, (setup.open_files,) * 2)
    rl(resource.RLIMIT_CORE, (0, 0))
    rl(resource.RLIMIT_MEMLOCK, (0, 0))
    rl(resource.RLIMIT_MSGQUEUE, (0, 0))
    if not setup.allow_threads:
        rl(resource.RLIMIT_NPROC, (0, 0))  # enforced once the uid is not root
    os.chdir(setup.scratch)
    if setup.uid is not None and setup.gid is not None:
        os.setgroups([])
        os.setresgid(setup.gid, setup.gid, setup.gid)
        os.setresuid(setup.uid, setup.uid, setup.uid)
        if os.getuid() != setup.uid or os.geteuid() != setup.uid:
            raise OSError("uid drop did not take effect")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
    if os.getppid() != setup.zygote_pid:  # the zygote died before the line above: never run orphaned
        raise OSError("the zygote is gone")
    if setup.ruleset_fd >= 0:
        landlock_restrict_self(setup.ruleset_fd)
    os.closerange(4, setup.max_fd)  # fds 0-3 stay; the ruleset, protocol pipes, /dev/null go
    if setup.seccomp is not None:
        setup.seccomp.install(os.getpid())


def _format_exception_only(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except BaseException:
        return type(exc).__name__


def _program_traceback(exc: BaseException) -> str:
    """The traceback as Python prints it, without the runner's own frame."""
    try:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        return _format_exception_only(exc) + "\n"


def run_program(source: bytes, write: Callable[[int, bytes], int], max_message: int) -> dict[str, Any]:
    """Compile and run one program with fresh globals; return the result fields the runner reports.

    Runs in the child (and, for warm-up, in the zygote itself on trusted snippets). stdout/stderr are whatever fds 1 and
    2 are; the caller provides them.
    """
    result: dict[str, Any] = {"error": None, "message": "", "traceback": ""}
    streams = (sys.stdout, sys.stderr)
    env: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    try:
        try:
            text = source.decode("utf-8", "replace")
            lines = text.splitlines(keepends=True)
            linecache.cache[PROGRAM_NAME] = (len(text), None, lines, PROGRAM_NAME)
            code = compile(source, PROGRAM_NAME, "exec", dont_inherit=True)
            write(3, STARTED)
            exec(code, env)
        except SystemExit as exc:
            status = exc.code
            if status is not None and status != 0:
                result["error"] = "SystemExit"
                if isinstance(status, int):
                    result["message"] = f"exit code {int(status)}"
                else:
                    result["message"] = str(status)[:max_message]
                    result["traceback"] = str(status)[:max_message] + "\n"
        except MemoryError as exc:
            # Free what the program holds (its globals, the frames in the traceback) before building anything.
            exc.__traceback__ = None
            del exc
            env.clear()
            result.update(error="MemoryError", message="MemoryError", memory_exceeded=True)
        except BaseException as exc:
            result["error"] = type(exc).__name__[:100]
            result["message"] = _format_exception_only(exc)[:max_message]
            result["traceback"] = _program_traceback(exc)[:max_message]
        for stream in streams:
            try:
                stream.flush()
            except BaseException:
                pass
    except MemoryError:
        env.clear()
        result = {"error": "MemoryError", "message": "MemoryError", "traceback": "", "memory_exceeded": True}
    return result


def _child(setup: Setup, pipes: tuple[int, int, int, int], vm_size: int) -> NoReturn:
    """A pre-forked child: apply every layer (or exit without running anything), then wait for its one program.

    fd 0 is the pipe the program arrives on (replaced by /dev/null once read), 1 and 2 the output pipes, 3 the result
    pipe. Everything up to the read happens while the zygote is idle, off the caller's critical path.
    """
    write, exit_ = os.write, os._exit
    code_r, out_w, err_w, res_w = pipes
    try:
        os.dup2(res_w, 3)
        os.dup2(code_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
    except BaseException:
        exit_(SETUP_FAILED_EXIT)
    try:
        _apply_child_layers(setup, vm_size)
        # Fresh text streams on the new fds: nothing the zygote buffered can leak into them.
        out = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        err = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        sys.argv = [PROGRAM_NAME]
        if "tempfile" in sys.modules:
            setattr(sys.modules["tempfile"], "tempdir", setup.scratch)  # noqa: B010 - module attribute, not typed
        if "random" in sys.modules:  # `random` re-seeds itself from urandom after fork: make every call reproducible
            sys.modules["random"].seed(0)
        gc.enable()
    except BaseException as exc:
        _report_setup_failure(exc)
    message = read_message(0)
    if message is None:  # the zygote is discarding this child
        exit_(0)
    try:
        head, _, source = message.partition(b"\n")
        cpu = max(1, int(float(json.loads(head)["cpu_time_s"]) + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        inp = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        for name, stream in (("stdin", inp), ("stdout", out), ("stderr", err)):
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", stream)
    except BaseException as exc:
        _report_setup_failure(exc)
    try:
        result = run_program(source, write, int(setup.cfg["max_output_bytes"]))
        payload = RESULT_PREFIX + json.dumps(result).encode() + b"\n"
        view = memoryview(payload)
        while view:
            view = view[write(3, view) :]
        for fd in (1, 2, 3):  # EOF on every pipe tells the zygote the result is complete: it answers at once
            os.close(fd)
    except BaseException:
        exit_(1)
    exit_(0)


def _report_setup_failure(exc: BaseException) -> NoReturn:
    try:
        msg = json.dumps({"sandbox_error": f"{type(exc).__name__}: {exc}"}).encode()
        os.write(3, RESULT_PREFIX + msg + b"\n")
    finally:
        os._exit(SETUP_FAILED_EXIT)


# --------------------------------------------------------------------------------------------------------------------
# Supervising a child (in the parent for programs, in the zygote for its self-test)


def kill_group(pid: int) -> None:
    """SIGKILL a child's process group (it leads its own session) and the child itself."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except OSError:
            pass


def _child_pids(parent: int) -> list[int]:
    """Pids whose parent is `parent`, from /proc (a few ms: only used where children could have forked)."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and int(fields[1]) == parent:
            kids.append(int(name))
    return kids


def _reap_strays(scan: bool, keep: int) -> None:
    """Reap zombies; with `scan`, also find and kill anything still running but `keep` (children could fork).

    The zygote is a child subreaper, so an orphaned grandchild is re-parented here and shows up as our child.
    """
    kids = [pid for pid in _child_pids(os.getpid()) if pid != keep] if scan else []
    for pid in kids:
        kill_group(pid)
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if kids else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == keep:  # the spare child died before its program came: it is replaced when needed
            continue
        kids = [k for k in kids if k != pid]


class Child:
    """One child and the ends of its four pipes held by whoever supervises it (plus a pidfd where available)."""

    def __init__(self, pid: int, code_w: int, out_r: int, err_r: int, res_r: int, pidfd: int | None = None) -> None:
        self.pid = pid
        self.code_w = code_w
        self.out_r, self.err_r, self.res_r = out_r, err_r, res_r
        if pidfd is None:
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):  # kernel < 5.3: completion is seen as EOF on every pipe
                pidfd = -1
        self.pidfd = pidfd

    def fds(self) -> list[int]:
        return [self.code_w, self.out_r, self.err_r, self.res_r] + ([self.pidfd] if self.pidfd >= 0 else [])

    def exited(self) -> bool:
        """Whether it is gone (only knowable with a pidfd; without one, assume it still waits)."""
        return self.pidfd >= 0 and bool(select.select([self.pidfd], [], [], 0)[0])

    def send_program(self, source: bytes, cpu_time_s: float) -> None:
        """Hand the program over (raises BrokenPipeError if the child is gone)."""
        write_message(self.code_w, json.dumps({"cpu_time_s": cpu_time_s}).encode() + b"\n" + source)
        os.close(self.code_w)
        self.code_w = -1

    def close(self) -> None:
        for fd in self.fds():
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.code_w = self.out_r = self.err_r = self.res_r = self.pidfd = -1


def supervise(child: Child, deadline: float, cap: int) -> dict[str, Any]:
    """Collect a child's output until it is done or a limit is hit (then kill it). Never waits for its status.

    Done means either the child exited (its pidfd fired) or, earlier, it closed all three pipes after writing a
    complete result ("early": a normal exit is under way and its status is not needed). `need_status` tells the caller
    to ask the zygote how the child ended (a signal, an exit code).
    """
    out_r, err_r, res_r = child.out_r, child.err_r, child.res_r
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    poller = select.poll()
    for fd in bufs:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    if child.pidfd >= 0:
        poller.register(child.pidfd, select.POLLIN)
    open_pipes = {out_r, err_r, res_r}
    reason: str | None = None

    def drain(fd: int) -> bool:
        """Read what is available; False on EOF. Output beyond the cap is discarded and ends the program."""
        nonlocal reason
        buf = bufs[fd]
        limit = RESULT_CAP if fd == res_r else cap
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return True
            if not data:
                return False
            room = limit + 1 - len(buf)
            if room > 0:
                buf += data[:room]
            if len(buf) > limit and fd != res_r:
                reason = reason or "output"
                return True

    exited = early = False
    while reason is None:
        remaining_ms = (deadline - time.monotonic()) * 1000
        if remaining_ms <= 0:
            reason = "timeout"
            break
        for fd, _ev in poller.poll(max(1, int(remaining_ms + 0.999))):
            if fd == child.pidfd:
                exited = True
            elif fd in open_pipes and not drain(fd):
                poller.unregister(fd)
                open_pipes.discard(fd)
        res = bufs[res_r]
        if not open_pipes and res.endswith(b"\n") and RESULT_PREFIX in res:
            early = True
            break
        if exited or (child.pidfd < 0 and not open_pipes):
            exited = True
            break
    if reason is not None:
        kill_group(child.pid)
    for fd in open_pipes:
        drain(fd)
    return {
        "reason": reason,
        "early": early,
        "need_status": reason is None and not early,
        "stdout": bytes(bufs[out_r]),
        "stderr": bytes(bufs[err_r]),
        "result": bytes(bufs[res_r]),
    }


def _decode(buf: bytes | bytearray, cap: int) -> tuple[str, bool]:
    truncated = len(buf) > cap
    data = bytes(buf[:cap])
    text = data.decode("utf-8", "replace") if not truncated else data.decode("utf-8", "ignore")
    return text, truncated


def build_result(sup: dict[str, Any], cap: int, cpu_s: float, status: int | None, cpu_used: float) -> dict[str, Any]:
    """Turn what the supervisor saw (and, when needed, how the child ended) into the fields of `ExecutionResult`."""
    stdout, out_trunc = _decode(sup["stdout"], cap)
    stderr, err_trunc = _decode(sup["stderr"], cap)
    raw = sup["result"]
    started = raw.startswith(STARTED)
    report: dict[str, Any] | None = None
    idx = raw.rfind(RESULT_PREFIX)
    if idx >= 0:
        line = raw[idx + len(RESULT_PREFIX) :].split(b"\n", 1)[0]
        try:
            parsed = json.loads(line)
            report = parsed if isinstance(parsed, dict) else None
        except Exception:  # the program can write anything on fd 3 (even JSON nested deep enough to recurse out)
            report = None
    r: dict[str, Any] = {
        "ok": False,
        "stdout": stdout,
        "stderr": stderr,
        "error": None,
        "error_message": "",
        "timed_out": False,
        "memory_exceeded": False,
        "output_truncated": out_trunc or err_trunc,
    }
    if status is None:  # not asked for: it closed its pipes after a complete result, i.e. a normal exit 0
        status = 0
    if sup["reason"] == "timeout":
        r.update(error="Timeout", error_message="wall-clock time limit exceeded", timed_out=True)
    elif sup["reason"] == "output":
        r.update(
            error="OutputLimit", error_message=f"output exceeded {cap} bytes; program killed", output_truncated=True
        )
    elif not started and report is not None and "sandbox_error" in report:  # only the setup, before the program
        r.update(error="SandboxError", error_message=str(report["sandbox_error"])[:2000])
    elif status < 0:
        r.update(error="SandboxError", error_message="the sandbox worker could not report how the program ended")
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = _signame(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= max(1, int(cpu_s + 0.999))):
            r.update(error="Timeout", error_message=f"CPU time limit exceeded ({name})", timed_out=True)
        else:
            r.update(error="Killed", error_message=f"killed by signal {name}")
    elif not started and os.WIFEXITED(status) and os.WEXITSTATUS(status) == SETUP_FAILED_EXIT:
        r.update(error="SandboxError", error_message="the sandbox could not set up the child process")
    elif report is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        err = report.get("error")
        if err is None:
            r["ok"] = True
        else:
            r["error"] = str(err)[:100]
            r["error_message"] = str(report.get("message", ""))[:cap]
            r["memory_exceeded"] = bool(report.get("memory_exceeded", False))
            tb = str(report.get("traceback", ""))
            if tb:
                room = cap - len(r["stderr"].encode("utf-8", "replace"))
                if room < len(tb.encode("utf-8", "replace")):
                    r["output_truncated"] = True
                r["stderr"] += tb.encode("utf-8", "replace")[: max(0, room)].decode("utf-8", "ignore")
    elif os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == 0:
            r["ok"] = True  # os._exit(0): a normal, successful exit
        else:
            r.update(error="SystemExit", error_message=f"exit code {code}")
    else:
        r.update(error="SandboxError", error_message=f"unexpected wait status {status}")
    return r


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# --------------------------------------------------------------------------------------------------------------------
# The zygote


def send_json(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv_json(sock: socket.socket, maxfds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (SOCK_SEQPACKET keeps boundaries) and the fds passed with it; (None, []) on EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_CONTROL_MESSAGE, maxfds)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


class Zygote:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.scratch = cfg["scratch"]
        self.setup = Setup(cfg, self.scratch)
        self.protections: dict[str, bool] = {
            "fork_server": True,
            "process_per_call": True,
            "env_scrubbed": True,
            "no_stdin": True,
            "rlimits": True,
            "uid_drop": False,
            "network_namespace": False,
            "scratch_tmpfs": False,
            "landlock_fs": False,
            "landlock_net": False,
            "landlock_scopes": False,
            "seccomp": False,
            "no_processes": False,
            "no_network": False,
        }
        self.notes: list[str] = []
        self.preloaded: list[str] = []
        self.spare: Child | None = None  # forked and set up, not yet handed to the parent
        self.lent: Child | None = None  # handed to the parent, running (or about to run) a program
        self.children_can_fork = True  # until the self-test shows otherwise
        self.fast_fork = False  # raw fork(2), once the zygote is known to be single-threaded (`fast_fork`)

    # ---- once per worker ----
    def setup_layers(self) -> None:
        cfg = self.cfg
        is_root = os.geteuid() == 0
        try:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
        except OSError as exc:
            self.notes.append(f"subreaper: {exc}")
        if is_root and cfg["scratch_tmpfs"]:
            try:
                _check(libc().unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
                _check(libc().mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, private)")
                uid, gid = (cfg["uid"], cfg["gid"]) if cfg["drop_privileges"] else (0, 0)
                opts = f"size={int(cfg['scratch_mb'])}m,nr_inodes=4096,mode=0700,uid={uid},gid={gid}"
                _check(
                    libc().mount(
                        b"tmpfs", self.scratch.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts.encode()
                    ),
                    "mount(tmpfs)",
                )
                self.protections["scratch_tmpfs"] = True
            except OSError as exc:
                self.notes.append(f"scratch tmpfs: {exc}")
        if is_root and cfg["network_namespace"]:
            try:
                _check(libc().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
                self.protections["network_namespace"] = True
            except OSError as exc:
                self.notes.append(f"network namespace: {exc}")
        if is_root and cfg["drop_privileges"]:
            self.setup.uid, self.setup.gid = int(cfg["uid"]), int(cfg["gid"])
            os.chown(self.scratch, self.setup.uid, self.setup.gid)
        os.chmod(self.scratch, 0o700)
        if cfg["landlock"]:
            abi = landlock_abi()
            if abi >= 1:
                try:
                    readable = default_readable_paths() + list(cfg.get("readable_paths", ()))
                    fd, info = landlock_ruleset(abi, self.scratch, readable)
                    self.setup.ruleset_fd = fd
                    self.landlock_info = info
                except OSError as exc:
                    self.notes.append(f"landlock: {exc}")
            else:
                self.notes.append("landlock: not supported by this kernel")
        if cfg["seccomp"]:
            arch = seccomp_arch()
            if arch is None:
                self.notes.append(f"seccomp: no syscall table for {os.uname().machine}")
            else:
                self.setup.seccomp = SeccompTemplate(arch)

    def preload(self) -> None:
        for name in self.cfg["preload"]:
            try:
                __import__(name)
                self.preloaded.append(name)
            except Exception as exc:  # a missing optional package (numpy) is not an error
                self.notes.append(f"preload {name}: {type(exc).__name__}")

    def warm_up(self) -> None:
        """Run trusted snippets through the real code path so children start from warm interpreter state."""
        saved = sys.stdout
        sink = io.StringIO()
        sys.stdout = sink
        try:
            for snippet in self.cfg["warmup"]:
                run_program(snippet.encode(), lambda fd, b: len(b), 1024)
            run_program(b"1/0", lambda fd, b: len(b), 1024)
            json.dumps({"error": None, "message": "", "traceback": ""})
        finally:
            sys.stdout = saved
        import random

        random.seed(0)
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed(0)

    def self_test(self) -> None:
        """Fork one child that applies every layer and probes it; keep only the layers that really hold."""
        import _socket  # noqa: F401  (loaded here so the probe can use it after the uid drop)

        probe = PROBE_PROGRAM.replace("PARENT_PID", str(os.getpid())).encode()
        result = self.run_local(probe, 10.0)
        if result.get("error") is not None or not result.get("ok"):
            # A layer made the child unusable: retry without the optional ones so the sandbox still works.
            self.notes.append(f"self-test failed with all layers: {result.get('error')}: {result.get('error_message')}")
            self.setup.seccomp = None
            if self.setup.ruleset_fd >= 0:
                os.close(self.setup.ruleset_fd)
                self.setup.ruleset_fd = -1
            self.shutdown()
            self.spare = None
            result = self.run_local(probe, 10.0)
        try:
            seen = json.loads(result.get("stdout", "").strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"sandbox self-test produced no report: {result}") from None
        p = self.protections
        p["uid_drop"] = self.setup.uid is not None and seen["uid"] == self.setup.uid
        p["no_processes"] = not seen["fork"]
        self.children_can_fork = bool(seen["fork"])
        p["no_network"] = not seen["socket"] and not seen["connect"]
        p["seccomp"] = self.setup.seccomp is not None and seen["socket_errno"] == errno.EPERM
        if self.setup.ruleset_fd >= 0:
            info = getattr(self, "landlock_info", {})
            p["landlock_fs"] = not seen["read_outside"] and not seen["write_outside"] and seen["write_scratch"]
            p["landlock_net"] = bool(info.get("landlock_net"))
            p["landlock_scopes"] = bool(info.get("landlock_scopes")) and not seen["signal_parent"]
        if not seen["write_scratch"]:
            raise RuntimeError(f"sandbox self-test: the scratch directory is not writable: {seen}")
        self.self_test_report = seen

    # ---- once per program ----
    def prefork(self) -> Child:
        """Fork a child now; it sets itself up and waits for its program (see `_child`)."""
        code_r, code_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        vm_size = _vm_size()
        pid = fast_fork() if self.fast_fork else os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                _child(self.setup, (code_r, out_w, err_w, res_w), vm_size)
            finally:
                os._exit(SETUP_FAILED_EXIT)
        for fd in (code_r, out_w, err_w, res_w):
            os.close(fd)
        return Child(pid, code_w, out_r, err_r, res_r)

    def take_spare(self) -> Child:
        child, self.spare = self.spare, None
        if child is None or child.exited():  # none yet, or killed from outside while it waited
            if child is not None:
                self.retire(child)
            child = self.prefork()
        return child

    def retire(self, child: Child) -> tuple[int, float]:
        """Kill (if still running) and reap a child, reap anything it left, wipe the scratch dir. -> (status, cpu s)."""
        child.close()
        kill_group(child.pid)
        try:
            _, status, rusage = os.wait4(child.pid, 0)
            cpu = rusage.ru_utime + rusage.ru_stime
        except ChildProcessError:  # reaped already by `_reap_strays`
            status, cpu = -1, 0.0
        _reap_strays(scan=self.children_can_fork, keep=self.spare.pid if self.spare is not None else -1)
        self.wipe_scratch()
        return status, cpu

    def run_local(self, source: bytes, timeout_s: float) -> dict[str, Any]:
        """Run one trusted program here, supervised by the zygote itself (the self-test)."""
        cap = int(self.cfg["max_output_bytes"])
        child = self.take_spare()
        start = time.monotonic()
        child.send_program(source, timeout_s)
        sup = supervise(child, start + timeout_s, cap)
        status, cpu = self.retire(child)
        return build_result(sup, cap, timeout_s, status if sup["need_status"] else None, cpu)

    def lend_next(self, sock: socket.socket) -> None:
        """Hand a ready child's pipe ends and pidfd to the parent, then fork the next spare."""
        child = self.take_spare()
        send_json(sock, {"op": "child", "pid": child.pid}, child.fds())
        for fd in (child.code_w, child.out_r, child.err_r, child.res_r):  # the parent holds them now
            os.close(fd)
        child.code_w = child.out_r = child.err_r = child.res_r = -1
        self.lent = child
        # Fork the spare now: the fork overlaps the lent child's program instead of delaying the next call. The spare
        # applies its layers and blocks reading its own pipe; it cannot see the lent child's files, because the
        # scratch directory is wiped after the lent child is gone and before the spare is lent.
        self.spare = self.prefork()

    def wipe_scratch(self) -> None:
        """Remove everything a program left in the scratch directory (the zygote is root, or the owner)."""
        import shutil

        with os.scandir(self.scratch) as it:
            entries = list(it)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                try:
                    os.chmod(entry.path, 0o700)
                except OSError:
                    pass
                shutil.rmtree(entry.path, onerror=_force_remove)
            else:
                os.unlink(entry.path)
        if entries:
            with os.scandir(self.scratch) as it:
                if any(True for _ in it):
                    raise RuntimeError("could not wipe the scratch directory")
        st = os.stat(self.scratch)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.scratch, 0o700)
        if self.setup.uid is not None and (st.st_uid, st.st_gid) != (self.setup.uid, self.setup.gid):
            os.chown(self.scratch, self.setup.uid, self.setup.gid or 0)

    def serve(self, sock: socket.socket) -> None:
        """Lend children to the parent one at a time; retire each when the parent is done with it."""
        self.lend_next(sock)
        while True:
            msg, fds = recv_json(sock)
            for fd in fds:
                os.close(fd)
            if msg is None or msg.get("op") == "exit":
                return
            if msg.get("op") == "done" and self.lent is not None and msg.get("pid") == self.lent.pid:
                status, cpu = self.retire(self.lent)
                self.lent = None
                if msg.get("want_status"):
                    send_json(sock, {"op": "status", "pid": msg["pid"], "status": status, "cpu_s": cpu})
                self.lend_next(sock)

    def shutdown(self) -> None:
        for child in (self.spare, self.lent):
            if child is not None:
                child.close()
                kill_group(child.pid)


def _force_remove(func: Any, path: str, _exc: Any) -> None:
    try:
        os.chmod(os.path.dirname(path), 0o700)
        func(path)
    except OSError:
        pass


# The self-test: each probe records whether an escape worked (True = the layer did NOT hold).
PROBE_PROGRAM = r"""
import errno, json, os, signal
seen = {"uid": os.getuid()}
def attempt(name, fn):
    try:
        fn()
        seen[name] = True
    except OSError as e:
        seen[name] = False
        seen[name + "_errno"] = e.errno
    except Exception:
        seen[name] = False
def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
attempt("fork", fork)
import _socket
def sock():
    _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM).close()
attempt("socket", sock)
seen.setdefault("socket_errno", 0)
def connect():
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    s.settimeout(0.5)
    s.connect(("127.0.0.1", 9))
attempt("connect", connect)
attempt("read_outside", lambda: open("/etc/passwd", "rb").close())
def write_outside():
    p = "/tmp/.rstar-sandbox-probe-%d" % os.getpid()
    open(p, "wb").close()
    os.unlink(p)
attempt("write_outside", write_outside)
def write_scratch():
    with open("probe.txt", "w") as f:
        f.write("x")
    os.unlink("probe.txt")
attempt("write_scratch", write_scratch)
attempt("signal_parent", lambda: os.kill(PARENT_PID, 0))
print(json.dumps(seen))
"""


def main() -> None:
    # fd 0 is a SOCK_SEQPACKET socket to the parent; move it off 0 so that nothing a library reads or prints can touch
    # the protocol, and put /dev/null on 0 and 1.
    sock = socket.socket(fileno=os.dup(0))
    sock.set_inheritable(False)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the caller's terminal is the caller's business
    cfg, _ = recv_json(sock)
    if cfg is None:
        return
    zygote = Zygote(cfg)
    try:
        zygote.setup_layers()
        zygote.preload()
        if cfg["warmup"]:
            zygote.warm_up()
        gc.collect()
        gc.freeze()  # children do not touch (and copy) the pre-loaded objects' GC headers
        zygote.fast_fork = bool(cfg.get("fast_fork", True)) and single_threaded()
        if not zygote.fast_fork:
            zygote.notes.append("fast fork off: the zygote has more than one thread (or it was disabled)")
        zygote.self_test()
    except Exception as exc:
        send_json(sock, {"op": "ready", "ready": False, "error": f"{type(exc).__name__}: {exc}"})
        raise
    ready = {
        "op": "ready",
        "ready": True,
        "pid": os.getpid(),
        "protections": zygote.protections,
        "preloaded": zygote.preloaded,
        "notes": zygote.notes,
        "fast_fork": zygote.fast_fork,
        "python": sys.version.split()[0],
    }
    send_json(sock, ready)
    try:
        zygote.serve(sock)
    finally:
        zygote.shutdown()


if __name__ == "__main__":
    main()
