"""`rstar exec`: run one Python program in the sandbox and print the result as one JSON object.

    rstar exec [--timeout S] [--memory-mb M] [--protections] FILE      # FILE may be '-' for stdin

The JSON object has the fields of `rstar.types.ExecutionResult` (`ok`, `stdout`, `stderr`, `error`, `error_message`,
`timed_out`, `memory_exceeded`, `output_truncated`, `duration_ms`), plus `protections` with `--protections`.
The exit status is 0 whatever the program did; it is non-zero only for usage errors (a missing file, a bad option)
or when the sandbox itself cannot start.
"""

from __future__ import annotations

import argparse
import json
import sys


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "exec",
        help="run a Python file in the sandbox; print the result as JSON",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("file", metavar="FILE", help="the program to run; '-' reads it from stdin")
    p.add_argument("--timeout", type=_positive_float, default=5.0, metavar="S", help="wall-clock limit (default 5)")
    p.add_argument(
        "--memory-mb", type=_positive_int, default=512, metavar="M", help="memory on top of the interpreter (512)"
    )
    p.add_argument("--protections", action="store_true", help="add which isolation layers were active")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rstar.verify.sandbox import Sandbox, SandboxConfig, SandboxUnavailable

    try:
        if args.file == "-":
            code = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                code = f.read()
    except OSError as exc:
        print(f"rstar exec: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    # One program: skip the warm-up snippets (they make every later call fast, and there is none), start ~1 s sooner.
    config = SandboxConfig(workers=1, timeout_s=args.timeout, memory_mb=args.memory_mb, warmup=())
    try:
        with Sandbox(config) as sandbox:
            result = sandbox.run(code)
            out = result.to_dict()
            if args.protections:
                out["protections"] = sandbox.protections
    except SandboxUnavailable as exc:
        print(f"rstar exec: the sandbox could not start: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(out, ensure_ascii=False))
    return 0
