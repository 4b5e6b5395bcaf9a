"""The evaluation runner and its reports: every file written, failures contained, partial results kept."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest

from rstar.eval.config import EvalConfig
from rstar.eval.report import RESULTS_SCHEMA, read_results
from rstar.eval.runner import evaluate
from rstar.models.fakes import FunctionPolicy, FunctionRewardModel, InProcessExecutor, split_prompt
from rstar.types import Completion, Problem, SamplingSpec
from rstar.verify.steps import END_OF_ANSWER

PROBLEMS = [
    Problem("a", "What is 1 + 1?", "2", level="1", subject="Algebra"),
    Problem("b", "What is 2 + 2?", "4", level="2", subject="Algebra"),
    Problem("c", "What is 3 + 3?", "6", level="2", subject="Geometry"),
]


def adder(p_wrong: float = 0.0) -> FunctionPolicy:
    """Answers `x + y` questions in one boxed step; wrong by one with probability p_wrong (seeded)."""

    def fn(prompt: str, n: int, rng: random.Random) -> list[str]:
        question, _ = split_prompt(prompt)
        nums = [int(t) for t in question.replace("?", " ").split() if t.isdigit()]
        out = []
        for _ in range(n):
            value = sum(nums) + (1 if rng.random() < p_wrong else 0)
            out.append(f"# add them\nThe answer is \\boxed{{{value}}}{END_OF_ANSWER}")
        return out

    return FunctionPolicy(fn, model_id="fake:adder")


def ppm() -> FunctionRewardModel:
    return FunctionRewardModel(lambda prefix: 0.5, model_id="fake:flat")


def test_evaluate_writes_every_report(tmp_path: Path) -> None:
    report = evaluate(
        adder(),
        {"toy": PROBLEMS},
        modes=["greedy", "maj", "bon"],
        budgets=[1, 2],
        out_dir=tmp_path,
        reward_model=ppm(),
        executor=InProcessExecutor(),
    )
    assert report.ok and report.errors == []
    # greedy once + maj@1, maj@2, bon@1, bon@2, over 3 problems
    assert len(report.results) == 15
    assert [s.label for s in report.summaries] == ["greedy", "maj@1", "maj@2", "bon@1", "bon@2"]
    assert all(s.accuracy == 1.0 for s in report.summaries)
    assert report.accuracy("toy", "maj", 2) == 1.0 and report.accuracy("toy", "greedy", 99) == 1.0

    df = read_results(tmp_path / "results.parquet")
    assert df.schema == pl.Schema(RESULTS_SCHEMA) and df.height == 15
    row = df.filter((pl.col("mode") == "maj") & (pl.col("budget") == 2) & (pl.col("problem_id") == "b")).row(
        0, named=True
    )
    assert (row["gold"], row["prediction"], row["correct"], row["n_samples"], row["votes"]) == ("4", "4", True, 2, 2)
    assert row["problem"] == "What is 2 + 2?" and row["benchmark"] == "toy" and row["tokens"] > 0
    assert row["wall_time_s"] > 0 and row["level"] == "2" and row["answers"] == ["4", "4"]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["policy"] == "fake:adder" and summary["ppm"] == "fake:flat"
    assert [c["label"] for c in summary["cells"]] == ["greedy", "maj@1", "maj@2", "bon@1", "bon@2"]
    assert {(d["level"], d["problems"]) for d in summary["by_level"] if d["label"] == "greedy"} == {("1", 1), ("2", 2)}
    assert {d["subject"] for d in summary["by_subject"]} == {"Algebra", "Geometry"}
    table = (tmp_path / "table.md").read_text()
    assert "| toy | 100.0 | 100.0 |" in table and "## By level" in table and "## By subject" in table
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 15
    assert "maj@2" in report.table()


def test_accuracy_reflects_wrong_answers(tmp_path: Path) -> None:
    always_wrong = adder(p_wrong=1.0)
    report = evaluate(
        always_wrong, {"toy": PROBLEMS}, ["greedy"], out_dir=tmp_path, plot=False, executor=InProcessExecutor()
    )
    [s] = report.summaries
    assert (s.accuracy, s.answered, s.errors) == (0.0, 3, 0)
    assert [r.prediction for r in report.results] == ["3", "5", "7"]


class Flaky:
    """Fails every call whose number is in `fail_on` with a connection error, like a model server going away."""

    def __init__(self, inner: FunctionPolicy, fail_on: set[int] | None = None, always: bool = False) -> None:
        self.inner, self.fail_on, self.always, self.calls = inner, fail_on or set(), always, 0

    @property
    def model_id(self) -> str:
        return "fake:flaky"

    def generate(
        self, prompts: Sequence[str], spec: SamplingSpec, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        self.calls += 1
        if self.always or self.calls in self.fail_on:
            raise ConnectionError("Connection refused: http://127.0.0.1:9/v1")
        return self.inner.generate(prompts, spec, seeds=seeds)


def test_a_failed_batch_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    policy = Flaky(adder(), fail_on={2})
    report = evaluate(
        policy,
        {"toy": PROBLEMS},
        ["greedy"],
        out_dir=tmp_path,
        plot=False,
        executor=InProcessExecutor(),
        config=EvalConfig(batch_size=1),
    )
    errs = [r.error for r in report.results]
    assert errs[0] is None and errs[2] is None
    assert errs[1] == "ConnectionError: Connection refused: http://127.0.0.1:9/v1"
    [s] = report.summaries
    assert (s.correct, s.errors, s.accuracy) == (2, 1, pytest.approx(2 / 3))
    assert not report.ok and any("Connection refused" in e for e in report.errors)
    assert read_results(tmp_path / "results.parquet")["error"].null_count() == 2


def test_a_dead_server_skips_the_rest_of_the_cell_quickly(tmp_path: Path) -> None:
    policy = Flaky(adder(), always=True)
    many = [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1)) for i in range(10)]
    report = evaluate(
        policy,
        {"one": many, "two": many[:3]},
        ["greedy", "maj"],
        budgets=[2],
        out_dir=tmp_path,
        plot=False,
        executor=InProcessExecutor(),
        config=EvalConfig(batch_size=2, max_failed_batches=2),
    )
    # Two failed batches per cell, then the cell's remaining problems are skipped without calling the server.
    assert policy.calls == 2 * 4
    assert len(report.results) == 2 * (10 + 3)
    assert all(r.error and not r.correct for r in report.results)
    assert sum("skipped after 2 failed batches" in (r.error or "") for r in report.results) == 2 * 6


def test_partial_results_survive_an_interrupted_run(tmp_path: Path) -> None:
    class Interrupting(Flaky):
        def generate(self, prompts, spec, *, seeds=None):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().generate(prompts, spec, seeds=seeds)

    with pytest.raises(KeyboardInterrupt):
        evaluate(
            Interrupting(adder()),
            {"toy": PROBLEMS},
            ["greedy"],
            out_dir=tmp_path,
            plot=False,
            executor=InProcessExecutor(),
            config=EvalConfig(batch_size=1),
        )
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["correct"]) for r in lines] == [("a", True), ("b", True)]


def test_bad_benchmarks_are_reported_and_the_rest_runs(tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "What is 5 + 5?", "answer": "10"}\n{"question": "What is 6 + 6?"}\n')
    report = evaluate(
        adder(),
        ["no-such-bench", f"mine={f}"],
        ["greedy"],
        out_dir=tmp_path / "out",
        plot=False,
        executor=InProcessExecutor(),
    )
    assert [(r.benchmark, r.correct) for r in report.results] == [("mine", True)]
    text = "\n".join(report.errors)
    assert "unknown benchmark 'no-such-bench'" in text and "aime2024, amc23, gsm8k, math500" in text
    assert "mine row 2: no answer" in text
    assert not report.ok
    assert "no-such-bench" in (tmp_path / "out" / "table.md").read_text()


def test_ppm_modes_without_a_ppm_are_skipped_with_a_reason(tmp_path: Path) -> None:
    report = evaluate(
        adder(),
        {"toy": PROBLEMS},
        ["greedy", "bon", "mcts"],
        [2],
        out_dir=tmp_path,
        plot=False,
        executor=InProcessExecutor(),
    )
    assert {r.mode for r in report.results} == {"greedy"}
    assert any("mode bon skipped" in e and "--ppm" in e for e in report.errors)
    assert any("mode mcts skipped" in e for e in report.errors)


def test_mcts_needs_the_code_format(tmp_path: Path) -> None:
    report = evaluate(
        adder(),
        {"toy": PROBLEMS[:1]},
        ["mcts"],
        [2],
        out_dir=tmp_path,
        plot=False,
        reward_model=ppm(),
        executor=InProcessExecutor(),
        config=EvalConfig(format="cot"),
    )
    assert report.results == [] and "use --format code" in report.errors[0]


def test_bad_arguments_raise_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate(adder(), {"toy": PROBLEMS}, ["best"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="budgets"):
        evaluate(adder(), {"toy": PROBLEMS}, ["maj"], [0], out_dir=tmp_path)
    with pytest.raises(ValueError, match="format"):
        EvalConfig(format="chat")
