"""`rstar exec`: one JSON object on stdout, exit status 0 whatever the program did, non-zero only for usage errors.

Run through a real subprocess (`python -m rstar.cli exec ...`), as a user would. Each run starts a sandbox worker that
pre-loads sympy and numpy, so the two runs that execute a program are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"ok", "stdout", "stderr", "error", "error_message", "timed_out", "memory_exceeded", "output_truncated"}


def rstar_exec(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rstar.cli", "exec", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )


@pytest.mark.slow
def test_a_file_runs_and_prints_one_json_object(tmp_path: Path) -> None:
    program = tmp_path / "step.py"
    program.write_text("from sympy import Rational\nprint(Rational(1, 3) + Rational(1, 6))\n")
    proc = rstar_exec("--timeout", "10", "--memory-mb", "256", "--protections", str(program))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= KEYS and out["ok"] is True and out["stdout"] == "1/2\n" and out["error"] is None
    assert isinstance(out["protections"], dict) and out["protections"]["fork_server"] is True


@pytest.mark.slow
def test_a_failing_program_from_stdin_still_exits_0() -> None:
    proc = rstar_exec("--timeout", "0.5", "-", stdin="while True:\n    pass\n")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["timed_out"] is True and out["error"] == "Timeout"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["/nonexistent/step.py"], id="missing-file"),
        pytest.param(["--timeout", "0", "-"], id="bad-timeout"),
        pytest.param(["--memory-mb", "lots", "-"], id="bad-memory"),
        pytest.param([], id="no-file"),
    ],
)
def test_usage_errors_exit_non_zero_without_json(args: list[str]) -> None:
    proc = rstar_exec(*args, stdin="print(1)\n")
    assert proc.returncode != 0 and proc.stdout == "" and proc.stderr, proc
