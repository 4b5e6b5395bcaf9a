"""`rstar eval` end to end with fake models: arguments, reports, printed table, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from rstar.cli import main


def test_eval_cli_runs_modes_and_budgets(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--policy", "fake:random-int?max=9",
            "--ppm", "fake:hash",
            "--benchmarks", "gsm8k,amc23",
            "--mode", "greedy,maj,bon",
            "--budgets", "1,2",
            "--limit", "3",
            "--data-dir", str(shared_data / "benchmarks"),
            "--format", "cot",
            "--out", str(out),
            "--no-plot",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| benchmark | greedy | maj@1 | maj@2 | bon@1 | bon@2 |" in captured.out
    assert "| amc23 |" in captured.out and "tokens/problem" in captured.out
    df = pl.read_parquet(out / "results.parquet")
    assert df.height == 2 * 3 * 5
    assert set(df["benchmark"]) == {"gsm8k", "amc23"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["format"] == "cot" and summary["limit"] == 3
    assert not (out / "scaling.png").exists()


def test_eval_cli_reports_bad_benchmarks_and_exits_1(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--policy", "fake:random-int", "--benchmarks", "aime2024,math5000", "--limit", "2"]
    argv += ["--data-dir", str(shared_data), "--format", "cot", "--out", str(tmp_path), "--no-plot", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unknown benchmark 'math5000'" in err and "known benchmarks are aime2024, amc23, gsm8k, math500" in err
    assert pl.read_parquet(tmp_path / "results.parquet").height == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "best"], "unknown mode 'best'"),
        (["--budget", "0"], "--budget must be >= 1"),
        (["--policy", "fake:nonsense"], "cannot load policy 'fake:nonsense'"),
        (["--ppm", "nope:x"], "cannot load PPM 'nope:x'"),
    ],
)
def test_eval_cli_bad_arguments_exit_2(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--policy", "fake:random-int", "--out", str(tmp_path), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
