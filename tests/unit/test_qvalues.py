"""Aggregation: per-problem outcomes and difficulty, the re-run list, per-depth Q statistics, shard merging."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rstar.data.qvalues import DEPTH_STATS_SCHEMA, AggregateConfig, aggregate
from rstar.data.schema import NODES_SCHEMA, PROBLEM_STATS_SCHEMA
from rstar.data.trees import build_trees, load_tree_dirs, nodes_frame, problems_frame


def _frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    nodes = pl.concat(
        [
            # easy: every graded answer correct (a code error does not make it medium)
            nodes_frame(
                "easy",
                {
                    "0": {},
                    "0.0": {"q": 1.0, "outcome": "correct"},
                    "0.1": {"q": 0.5},
                    "0.1.0": {"q": 1.0, "outcome": "correct"},
                    "0.2": {"q": -1.0, "outcome": "code_error"},
                },
            ),
            # medium: one correct, two wrong -> solve rate 1/3; fewer than 2 correct -> a few extra rollouts
            nodes_frame(
                "medium",
                {
                    "0": {},
                    "0.0": {"q": 1.0, "outcome": "correct"},
                    "0.1": {"q": -1.0, "outcome": "wrong"},
                    "0.2": {"q": -1.0, "outcome": "wrong"},
                },
            ),
            # hard: no correct answer
            nodes_frame("hard", {"0": {}, "0.0": {"q": -1.0, "outcome": "wrong"}, "0.1": {"q": None}}),
            # hard too: only code errors, no answer at all
            nodes_frame("errors", {"0": {}, "0.0": {"q": -1.0, "outcome": "code_error"}}),
            # answers without gold
            nodes_frame("nogold", {"0": {}, "0.0": {"q": 0.0, "outcome": "ungraded"}}),
        ]
    )
    problems = pl.concat(
        [
            problems_frame({"easy": "e", "medium": "m", "hard": "h", "errors": "x"}, source="gsm8k"),
            problems_frame({"nogold": "n"}, source="math"),
            problems_frame({"crashed": "c"}, source="math", error="Timeout"),
            problems_frame({"never": "v"}, source="math"),
        ]
    )
    return nodes, problems


def test_outcome_counts_solve_rate_and_difficulty() -> None:
    nodes, problems = _frames()
    agg = aggregate(nodes, problems)
    assert agg.problems.schema == pl.Schema(PROBLEM_STATS_SCHEMA)
    rows = {r["problem_id"]: r for r in agg.problems.iter_rows(named=True)}
    assert {p: r["difficulty"] for p, r in rows.items()} == {
        "easy": "easy",
        "medium": "medium",
        "hard": "hard",
        "errors": "hard",
        "nogold": "ungraded",
        "crashed": "failed",
        "never": "failed",
    }
    e = rows["easy"]
    assert (e["terminals"], e["answers"], e["correct"], e["wrong"], e["code_errors"]) == (3, 2, 2, 0, 1)
    assert e["solve_rate"] == pytest.approx(2 / 3)
    assert e["avg_steps"] == pytest.approx((1 + 2 + 1) / 3)
    assert e["source"] == "gsm8k"
    assert rows["medium"]["solve_rate"] == pytest.approx(1 / 3)
    assert rows["hard"]["solve_rate"] == 0.0
    assert rows["nogold"]["other_terminals"] == 1
    assert rows["crashed"]["solve_rate"] is None and rows["crashed"]["nodes"] == 0


def test_rerun_list_says_which_problems_need_more_rollouts_and_how_many() -> None:
    nodes, problems = _frames()
    agg = aggregate(nodes, problems)
    assert agg.rerun.rows() == [
        ("crashed", 16, "failed"),
        ("errors", 16, "hard"),
        ("hard", 16, "hard"),
        ("medium", 8, "few_correct"),
        ("never", 16, "missing"),
    ]
    custom = aggregate(nodes, problems, AggregateConfig(extra_rollouts_hard=64, min_correct=1, rollouts_failed=4))
    assert custom.rerun.rows() == [
        ("crashed", 4, "failed"),
        ("errors", 64, "hard"),
        ("hard", 64, "hard"),
        ("never", 4, "missing"),
    ]
    with pytest.raises(ValueError):
        AggregateConfig(extra_rollouts_hard=-1)


def test_depth_statistics_skip_unvisited_nodes_in_q() -> None:
    nodes, problems = _frames()
    agg = aggregate(nodes, problems)
    assert agg.depths.schema == pl.Schema(DEPTH_STATS_SCHEMA)
    d1 = agg.depths.row(0, named=True)
    # depth 1: easy (1, .5, -1), medium (1, -1, -1), hard (-1, unvisited), errors (-1), nogold (0)
    assert (d1["depth"], d1["nodes"], d1["visited"]) == (1, 10, 9)
    assert d1["q_mean"] == pytest.approx((1 + 0.5 - 1 + 1 - 1 - 1 - 1 - 1 + 0) / 9)
    assert (d1["q_min"], d1["q_max"]) == (-1.0, 1.0)
    assert d1["code_errors"] == 2 and d1["exec_errors"] == 2
    assert agg.depths["depth"].to_list() == [1, 2]


def test_empty_inputs() -> None:
    agg = aggregate(pl.DataFrame(schema=NODES_SCHEMA), problems_frame({"p": "q"}))
    assert agg.problems["difficulty"].to_list() == ["failed"]
    assert agg.depths.height == 0
    agg = aggregate(pl.DataFrame(schema=NODES_SCHEMA), None)
    assert agg.problems.height == 0 and agg.rerun.height == 0


def test_shards_are_merged_and_empty_or_foreign_files_reported(tmp_path: Path) -> None:
    a, b = tmp_path / "round1", tmp_path / "extra"
    a.mkdir()
    b.mkdir()
    nodes_frame("p", {"0": {}, "0.0": {"q": -1.0, "outcome": "wrong"}}).write_parquet(a / "nodes-000.parquet")
    nodes_frame("q", {"0": {}, "0.0": {"q": 1.0, "outcome": "correct"}}).write_parquet(a / "nodes-001.parquet")
    problems_frame({"p": "P?", "q": "Q?"}, rollouts=16).write_parquet(a / "problems.parquet")
    # the extra rollouts for the hard problem p, as a second shard
    nodes_frame("p", {"0": {}, "0.0": {"q": 1.0, "outcome": "correct"}}).write_parquet(b / "nodes.parquet")
    problems_frame({"p": "P?"}, rollouts=16).write_parquet(b / "problems.parquet")
    pl.DataFrame(schema=NODES_SCHEMA).write_parquet(b / "empty.parquet")
    pl.DataFrame({"x": [1]}).write_parquet(b / "foreign.parquet")
    (b / "broken.parquet").write_bytes(b"not parquet")

    data = load_tree_dirs([a, b])
    assert data.empty_files == [str(b / "empty.parquet")]
    assert len(data.skipped_files) == 2
    assert sorted(set(data.nodes["tree_id"].to_list())) == ["p#0", "p#2", "q"]
    assert data.problems.rows(named=True)[0]["rollouts"] == 32  # p: summed over shards
    trees, issues = build_trees(data.nodes)
    assert [t.tree_id for t in trees] == ["p#0", "p#2", "q"] and not issues.messages
    agg = aggregate(data.nodes, data.problems)
    p = agg.problems.row(0, named=True)
    assert (p["problem_id"], p["trees"], p["correct"], p["wrong"], p["difficulty"]) == ("p", 2, 1, 1, "medium")
    with pytest.raises(FileNotFoundError):
        load_tree_dirs([tmp_path / "nope"])


def test_malformed_trees_are_reported() -> None:
    nodes = pl.concat(
        [
            nodes_frame("ok", {"0": {}, "0.0": {"q": 1.0, "outcome": "correct"}, "0.5.1": {"q": 0.0}}),  # orphan
            nodes_frame("tworoots", {"0": {}, "1": {}}),
        ]
    )
    trees, issues = build_trees(nodes)
    assert [t.tree_id for t in trees] == ["ok"]
    assert issues.dropped_trees == 1 and issues.dropped_nodes == 3
    assert any("not reachable" in m for m in issues.messages)


def test_synthesis_directories_are_read_through_the_engine_reader(tmp_path: Path) -> None:
    """`rstar synthesize` writes nodes/ and problems/ part files; a re-searched problem's latest attempt wins."""
    shard = tmp_path / "trees" / "shard-0"
    (shard / "nodes").mkdir(parents=True)
    (shard / "problems").mkdir()
    first = nodes_frame("p", {"0": {}, "0.0": {"q": -1.0, "outcome": "wrong"}})
    first.write_parquet(shard / "nodes" / "part-000001.parquet")
    problems_frame({"p": "P?"}, error="Timeout").write_parquet(shard / "problems" / "part-000001.parquet")
    retry = nodes_frame("p", {"0": {}, "0.0": {"q": 1.0, "outcome": "correct"}})
    retry.write_parquet(shard / "nodes" / "part-000002.parquet")
    problems_frame({"p": "P?"}).write_parquet(shard / "problems" / "part-000002.parquet")
    (shard / "summary.json").write_text("{}")

    data = load_tree_dirs([tmp_path / "trees"])
    assert data.node_files == [str(shard)] and data.problem_files == [str(shard)]
    assert data.nodes["tree_id"].to_list() == ["p", "p"]  # one tree: the latest attempt only
    agg = aggregate(data.nodes, data.problems)
    assert agg.problems.select("correct", "wrong", "difficulty").row(0) == (1, 0, "easy")
