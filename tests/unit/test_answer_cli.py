"""`rstar grade` through a real subprocess: single pairs, JSONL batches, malformed lines, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rstar(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rstar.cli", "grade", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_single_pair_prints_true_or_false() -> None:
    ok = _rstar("\\frac{1}{2}", "so the answer is $\\boxed{0.5}$")
    assert (ok.returncode, ok.stdout) == (0, "true\n")
    bad = _rstar("2,125", "#### 2124")
    assert (bad.returncode, bad.stdout) == (0, "false\n")


def test_batch_reports_malformed_lines_and_keeps_going(tmp_path: Path) -> None:
    lines = [
        json.dumps({"gold": "2,125", "pred": "She sold 2125 eggs.\n#### 2125", "id": "a"}),
        "{not json",
        json.dumps({"gold": "7"}),
        "",
        json.dumps(["gold", "pred"]),
        json.dumps({"gold": "(C)", "pred": "The answer is \\boxed{\\text{(B)}}"}),
        json.dumps({"gold": 5, "pred": "5.0"}),
    ]
    f = tmp_path / "preds.jsonl"
    f.write_text("\n".join(lines) + "\n")
    res = _rstar("--batch", str(f))
    assert res.returncode == 1  # some lines were malformed
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 5, 6, 7]
    assert out[0] == {
        "line": 1,
        "correct": True,
        "pred_answer": "2125",
        "gold_answer": "2,125",
        "method": "exact",
        "id": "a",
    }
    assert "invalid JSON" in out[1]["error"] and "correct" not in out[1]
    assert "missing key(s): pred" in out[2]["error"]
    assert "JSON object" in out[3]["error"]
    assert out[4]["correct"] is False and out[4]["pred_answer"] == "\\text{(B)}"
    assert out[5]["correct"] is True
    assert "line 2" in res.stderr and "line 3" in res.stderr


def test_batch_from_stdin_with_only_good_lines_exits_zero() -> None:
    res = _rstar("--batch", "-", stdin=json.dumps({"gold": "025", "pred": "25"}) + "\n")
    assert res.returncode == 0
    assert json.loads(res.stdout)["correct"] is True


def test_usage_errors_exit_two(tmp_path: Path) -> None:
    assert _rstar().returncode == 2
    assert _rstar("only-gold").returncode == 2
    missing = _rstar("--batch", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
