"""Streaming Parquet output: parts, resume, retry of failed problems, crash safety, the summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest

from rstar.config import SearchConfig
from rstar.data.schema import NODES_SCHEMA, PROBLEMS_SCHEMA
from rstar.models.fakes import FakePolicy, InProcessExecutor, RandomIntPolicy
from rstar.search import load_synthesis, synthesize, synthesize_to_dir
from rstar.search.driver import ProblemResult
from rstar.search.io import finished_problem_ids
from rstar.types import Completion, Problem, SamplingSpec

CFG = SearchConfig(rollouts=3, candidates=4, seed=3)


def problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"Question {i}?", answer="7") for i in range(n)]


def policy() -> RandomIntPolicy:
    return RandomIntPolicy(max_int=20, p_final=0.2)


def parts(out: Path, kind: str) -> list[str]:
    return sorted(p.name for p in (out / kind).glob("part-*.parquet"))


def no_time(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop("wall_time_s").sort("problem_id")


def test_parts_hold_exactly_what_synthesize_returns(tmp_path: Path) -> None:
    ps = problems(5)
    summary = synthesize_to_dir(ps, tmp_path, policy(), InProcessExecutor(), CFG, flush_every=2)
    assert (
        parts(tmp_path, "nodes")
        == parts(tmp_path, "problems")
        == [
            "part-000001.parquet",
            "part-000002.parquet",
            "part-000003.parquet",
        ]
    )
    nodes, probs = load_synthesis(tmp_path)
    ref = synthesize(ps, policy(), InProcessExecutor(), CFG)
    assert list(nodes.columns) == list(NODES_SCHEMA) and list(probs.columns) == list(PROBLEMS_SCHEMA)
    assert nodes.sort("problem_id", "expansion_order").equals(ref.nodes.sort("problem_id", "expansion_order"))
    assert no_time(probs).equals(no_time(ref.problems))
    assert summary["status"] == "complete"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["totals"]["problems"] == 5 and on_disk["to_search"] == 5
    assert on_disk["totals"]["rollouts"] == int(ref.problems["rollouts"].sum())
    assert on_disk["config"]["rollouts"] == 3 and on_disk["policy_id"] == policy().model_id
    assert on_disk["this_run"]["expansions"] == ref.stats.expansions


def test_resume_skips_finished_problems(tmp_path: Path) -> None:
    synthesize_to_dir(problems(3), tmp_path, policy(), InProcessExecutor(), CFG)
    pol = policy()
    summary = synthesize_to_dir(problems(5), tmp_path, pol, InProcessExecutor(), CFG)
    assert summary["skipped_already_done"] == 3 and summary["to_search"] == 2
    assert summary["totals"]["problems"] == 5
    nodes, probs = load_synthesis(tmp_path)
    assert sorted(probs["problem_id"]) == [f"p{i}" for i in range(5)]
    # Nothing searched twice: the second run only expanded p3 and p4.
    assert pol.prompts == summary["this_run"]["prompts"]
    ref = synthesize(problems(5), policy(), InProcessExecutor(), CFG)
    assert nodes.sort("problem_id", "expansion_order").equals(ref.nodes.sort("problem_id", "expansion_order"))
    # A third run has nothing to do.
    again = synthesize_to_dir(problems(5), tmp_path, policy(), InProcessExecutor(), CFG)
    assert again["to_search"] == 0 and again["status"] == "complete"


class FlakyPolicy(FakePolicy):
    def __init__(self, bad: set[str]) -> None:
        super().__init__(policy().model_id)
        self.inner, self.bad = policy(), bad

    def generate(
        self, prompts: Sequence[str], spec: SamplingSpec, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        if any(b in p for p in prompts for b in self.bad):
            raise ConnectionError("server went away")
        return self.inner.generate(prompts, spec, seeds=seeds)


def test_failed_problems_are_retried_on_resume_and_the_latest_attempt_wins(tmp_path: Path) -> None:
    ps = problems(4)
    synthesize_to_dir(ps, tmp_path, FlakyPolicy({"Question 2?"}), InProcessExecutor(), CFG)
    assert finished_problem_ids(tmp_path) == {"p0", "p1", "p3"}
    assert finished_problem_ids(tmp_path, include_failed=True) == {"p0", "p1", "p2", "p3"}
    _, probs = load_synthesis(tmp_path)
    assert probs.filter(pl.col("problem_id") == "p2")["error"][0] == "ConnectionError: server went away"
    summary = synthesize_to_dir(ps, tmp_path, policy(), InProcessExecutor(), CFG)
    assert summary["to_search"] == 1 and summary["totals"]["failed"] == 0
    nodes, probs = load_synthesis(tmp_path)
    assert probs.height == 4 and probs["error"].is_null().all()
    ref = synthesize(ps, policy(), InProcessExecutor(), CFG)
    # The failed attempt's nodes are superseded, not duplicated, even for a plain read of every part.
    assert nodes.sort("problem_id", "expansion_order").equals(ref.nodes.sort("problem_id", "expansion_order"))
    plain = pl.read_parquet(tmp_path / "nodes" / "*.parquet")
    assert plain.sort("problem_id", "expansion_order").equals(nodes.sort("problem_id", "expansion_order"))
    assert pl.read_parquet(tmp_path / "problems" / "*.parquet").height == 4
    assert summary["resume_cleanup"]["retried_problems"] == 1


def test_orphan_node_parts_without_a_problem_part_are_ignored(tmp_path: Path) -> None:
    synthesize_to_dir(problems(2), tmp_path, policy(), InProcessExecutor(), CFG)
    nodes, _ = load_synthesis(tmp_path)
    # A kill between the two writes leaves a nodes part with no problems part: it must not be read.
    (tmp_path / "nodes" / "part-000001.parquet").rename(tmp_path / "nodes" / "part-000007.parquet")
    (tmp_path / "nodes" / "part-000001.parquet").write_bytes((tmp_path / "nodes" / "part-000007.parquet").read_bytes())
    again, _ = load_synthesis(tmp_path)
    assert again.equals(nodes)
    # Hidden temporary files from an interrupted write are not parts either.
    (tmp_path / "problems" / ".part-000009.parquet.tmp").write_bytes(b"half a file")
    assert load_synthesis(tmp_path)[0].equals(nodes)
    # Resuming removes both, so a plain read of the parts is right again.
    summary = synthesize_to_dir(problems(2), tmp_path, policy(), InProcessExecutor(), CFG)
    assert summary["resume_cleanup"] == {"orphan_parts": 1, "temp_files": 1, "retried_problems": 0}
    assert pl.read_parquet(tmp_path / "nodes" / "*.parquet").equals(nodes)


def test_an_interrupted_run_keeps_finished_problems_and_resumes(tmp_path: Path) -> None:
    ps = problems(6)
    seen: list[str] = []

    def stop_after_three(res: ProblemResult) -> None:
        seen.append(res.problem.id)
        if len(seen) == 3:
            raise KeyboardInterrupt

    cfg = SearchConfig(rollouts=3, candidates=4, seed=3, max_active_trees=2)
    with pytest.raises(KeyboardInterrupt):
        synthesize_to_dir(ps, tmp_path, policy(), InProcessExecutor(), cfg, on_problem_done=stop_after_three)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("stopped: KeyboardInterrupt")
    assert finished_problem_ids(tmp_path) == set(seen)  # flushed on the way out
    done = synthesize_to_dir(ps, tmp_path, policy(), InProcessExecutor(), cfg)
    assert done["to_search"] == 3 and done["totals"]["problems"] == 6


def test_no_resume_refuses_a_used_directory(tmp_path: Path) -> None:
    synthesize_to_dir(problems(1), tmp_path, policy(), InProcessExecutor(), CFG)
    with pytest.raises(FileExistsError):
        synthesize_to_dir(problems(1), tmp_path, policy(), InProcessExecutor(), CFG, resume=False)


def test_empty_directory_reads_as_empty_tables(tmp_path: Path) -> None:
    nodes, probs = load_synthesis(tmp_path)
    assert nodes.height == 0 and probs.height == 0
    assert list(nodes.columns) == list(NODES_SCHEMA) and list(probs.columns) == list(PROBLEMS_SCHEMA)
    assert finished_problem_ids(tmp_path) == set()
