"""The data-quality report (numbers, markdown, plots) and `rstar build-data` end to end on hand-built shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rstar.cli import main as cli_main
from rstar.data.pairs import build_pairs
from rstar.data.qvalues import aggregate
from rstar.data.report import build_data, quality_report, render_markdown, write_report
from rstar.data.schema import NODES_SCHEMA, PAIRS_SCHEMA, SFT_SCHEMA
from rstar.data.sft import build_sft
from rstar.data.trees import nodes_frame, problems_frame

Spec = dict[str, dict[str, Any]]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ["q_distribution.png", "pairs_per_depth.png", "solve_rate_by_difficulty.png", "solve_rate_by_source.png"]

MIXED: Spec = {
    "0": {},
    "0.0": {"q": 0.5},
    "0.0.0": {"q": 1.0, "outcome": "correct"},
    "0.0.1": {"q": -1.0, "outcome": "wrong"},
    "0.1": {"q": -0.5},
    "0.1.0": {"q": -1.0, "outcome": "wrong"},
    "0.1.1": {"q": -1.0, "outcome": "code_error", "exec_ok": False},
    "0.2": {"q": 0.9, "outcome": "correct"},
}
HARD: Spec = {"0": {}, "0.0": {"q": -1.0, "outcome": "wrong"}, "0.1": {"q": None}}


def _inputs() -> tuple[pl.DataFrame, pl.DataFrame]:
    nodes = pl.concat([nodes_frame("mixed", MIXED), nodes_frame("hard", HARD)])
    problems = pl.concat(
        [problems_frame({"mixed": "What is 1?"}, source="math"), problems_frame({"hard": "What is 2?"}, source="gsm8k")]
    )
    return nodes, problems


def test_report_numbers() -> None:
    nodes, problems = _inputs()
    agg = aggregate(nodes, problems)
    sft, pairs = build_sft(nodes, problems), build_pairs(nodes, problems)
    r = quality_report(agg, sft, pairs)
    t = r["totals"]
    assert (t["problems"], t["solved_problems"], t["coverage"]) == (2, 1, 0.5)
    assert (t["terminals"], t["correct"], t["wrong"], t["code_errors"]) == (6, 2, 3, 1)
    assert r["code_error_rate"] == pytest.approx(1 / 6, abs=1e-4)
    assert r["exec_error_step_rate"] == pytest.approx(1 / 9, abs=1e-4)  # 9 executed steps, one failed
    assert r["avg_steps"]["all_terminals"] == pytest.approx((2 + 2 + 2 + 2 + 1 + 1) / 6, abs=1e-4)
    assert r["avg_steps"]["correct"] == pytest.approx(1.5)
    assert r["avg_steps"]["sft"] == pytest.approx(1.5)
    assert {d["difficulty"]: d["problems"] for d in r["by_difficulty"]} == {"hard": 1, "medium": 1}
    assert {s["source"]: s["coverage"] for s in r["by_source"]} == {"gsm8k": 0.0, "math": 1.0}
    assert r["q"]["count"] == 8 and r["q"]["unvisited"] == 1
    assert sum(r["q"]["histogram"]["counts"]) == 8
    assert r["q"]["mean_at_correct_terminals"] == pytest.approx(0.95)
    assert r["pairs"]["by_depth"] == [
        {"depth": 1, "step": 3, "final": 3, "mean_margin": pytest.approx(1.1833, abs=1e-4)},
        {"depth": 2, "step": 1, "final": 0, "mean_margin": 2.0},
    ]
    assert (r["pairs"]["step"], r["pairs"]["final"]) == (4, 3)
    assert r["rerun"]["problems"] == 1 and r["rerun"]["extra_rollouts"] == 16  # hard: +16; mixed has 2 correct
    json.dumps(r)  # serialisable
    md = render_markdown(r)
    assert "| problems | 2 |" in md and "## Pairs by depth" in md


@pytest.mark.slow  # matplotlib import + four plots: a few seconds on a busy 2-core machine
def test_write_report_files_and_plots(tmp_path: Path) -> None:
    nodes, problems = _inputs()
    agg = aggregate(nodes, problems)
    write_report(tmp_path, agg, build_sft(nodes, problems), build_pairs(nodes, problems), extra={"note": 1})
    assert json.loads((tmp_path / "report.json").read_text())["extra"] == {"note": 1}
    assert (tmp_path / "report.md").read_text().startswith("# Data-quality report")
    for name in PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


@pytest.mark.slow
def test_empty_inputs_give_a_report_not_an_exception(tmp_path: Path) -> None:
    agg = aggregate(pl.DataFrame(schema=NODES_SCHEMA), problems_frame({}))
    r = write_report(tmp_path, agg, pl.DataFrame(schema=SFT_SCHEMA), pl.DataFrame(schema=PAIRS_SCHEMA))
    assert r["totals"]["problems"] == 0 and r["totals"]["coverage"] is None
    assert r["pairs"]["total"] == 0 and r["code_error_rate"] is None
    for name in PLOTS:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def _write_shards(root: Path) -> tuple[Path, Path]:
    a, b = root / "shard-a", root / "shard-b"
    a.mkdir()
    b.mkdir()
    nodes, problems = _inputs()
    nodes.filter(pl.col("problem_id") == "mixed").write_parquet(a / "nodes.parquet")
    nodes.filter(pl.col("problem_id") == "hard").write_parquet(b / "nodes.parquet")
    problems.write_parquet(a / "problems.parquet")
    pl.DataFrame(schema=NODES_SCHEMA).write_parquet(b / "nodes-empty.parquet")
    return a, b


def test_build_data_library_and_cli_write_the_same_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _write_shards(tmp_path)
    summary = build_data([a, b], tmp_path / "lib", plots=False)
    assert summary["counts"] == {
        "problems": 2,
        "trees": 2,
        "nodes": 11,
        "sft_rows": 2,
        "pairs": 7,
        "rerun_problems": 1,
    }
    assert summary["inputs"]["empty_files"] == [str(b / "nodes-empty.parquet")]

    rc = cli_main(["build-data", "--trees", str(a), "--trees", str(b), "--out", str(tmp_path / "cli"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr()
    assert "2 SFT rows" in out.out and "7 pairs (4 step, 3 final)" in out.out
    assert "nodes-empty.parquet" in out.err
    cli = tmp_path / "cli"
    for f in ["sft.parquet", "pairs.parquet", "aggregate/problems.parquet", "aggregate/rerun.parquet", "summary.json"]:
        assert (cli / f).exists(), f
    for name in PLOTS:
        assert (cli / "report" / name).exists()
    assert pl.read_parquet(cli / "sft.parquet").equals(pl.read_parquet(tmp_path / "lib" / "sft.parquet"))
    assert pl.read_parquet(cli / "pairs.parquet").equals(pl.read_parquet(tmp_path / "lib" / "pairs.parquet"))
    assert json.loads((cli / "summary.json").read_text())["digests"] == summary["digests"]

    rc = cli_main(
        ["build-data", "--trees", str(a), "--out", str(tmp_path / "m"), "--margin", "1.5", "--no-plots", "--quiet"]
    )
    assert rc == 0
    strict = pl.read_parquet(tmp_path / "m" / "pairs.parquet")
    assert strict.height > 0 and ((strict["q_chosen"] - strict["q_rejected"]) >= 1.5).all()


def test_build_data_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert cli_main(["build-data", "--trees", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no Parquet tree files" in capsys.readouterr().err
    assert cli_main(["build-data", "--trees", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    # only empty tree files: empty outputs and a warning, not a crash
    pl.DataFrame(schema=NODES_SCHEMA).write_parquet(tmp_path / "empty" / "nodes.parquet")
    assert cli_main(["build-data", "--trees", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "nothing to train on" in capsys.readouterr().err
    assert pl.read_parquet(tmp_path / "o" / "sft.parquet").height == 0
