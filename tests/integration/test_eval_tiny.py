"""End to end on CPU: a tiny random Qwen2 policy, every inference mode, 10 MATH500 problems from the shared copy.

The model is untrained, so accuracy is ~0; what is tested is the plumbing: real HF generation, the real sandbox,
the real MCTS engine in eval mode, an untrained sequence-classification PPM, and every report file.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from rstar.eval.config import EvalConfig
from rstar.eval.modes import MODES
from rstar.eval.report import RESULTS_SCHEMA, read_results
from rstar.eval.runner import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rstar.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_every_mode_on_math500_with_a_tiny_model(tiny: Path, shared_data: Path, tmp_path: Path) -> None:
    from rstar.models.policy_hf import HFPolicy
    from rstar.models.ppm import HFRewardModel

    policy = HFPolicy(tiny, model_id="tiny-test", device="cpu")
    ppm = HFRewardModel(tiny, model_id="tiny-ppm-untrained", device="cpu", allow_untrained_head=True)
    config = EvalConfig(max_step_tokens=8, max_steps=2, beam_candidates=2, mcts_candidates=2, batch_size=10)
    report = evaluate(
        policy,
        ["math500"],
        modes=list(MODES),
        budgets=[2],
        out_dir=tmp_path,
        reward_model=ppm,
        config=config,
        data_dir=shared_data / "benchmarks",
        limit=10,
    )
    assert report.errors == [], report.errors
    assert [s.label for s in report.summaries] == [
        "greedy",
        "maj@2",
        "bon@2",
        "wmaj@2",
        "beam@2",
        "mcts@2",
        "mcts-topk@2",
        "mcts-wmaj@2",
        "mcts-plain@2",
    ]
    for s in report.summaries:
        assert s.problems == 10 and s.errors == 0 and 0.0 <= s.accuracy <= 1.0
        assert s.mean_tokens > 0 and s.total_wall_time_s > 0
    df = read_results(tmp_path / "results.parquet")
    assert df.schema == pl.Schema(RESULTS_SCHEMA) and df.height == 90
    assert df["benchmark"].unique().to_list() == ["math500"] and df["level"].null_count() == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["policy"] == "tiny-test" and summary["ppm"] == "tiny-ppm-untrained"
    assert {d["label"] for d in summary["by_level"]} == {s.label for s in report.summaries}
    assert summary["by_subject"]
    table = (tmp_path / "table.md").read_text()
    assert "### math500 by level" in table and "### math500 by subject" in table
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 90


def test_cot_format_and_cli_on_a_tiny_model(
    tiny: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rstar.cli import main

    argv = ["eval", "--policy", f"hf:{tiny}", "--benchmarks", "gsm8k,aime2024", "--mode", "greedy"]
    argv += ["--limit", "2", "--format", "cot", "--max-tokens", "8", "--quiet", "--no-plot"]
    argv += ["--data-dir", str(shared_data / "benchmarks"), "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| gsm8k |" in out and "| aime2024 |" in out
    assert pl.read_parquet(tmp_path / "results.parquet").height == 2 * 2
