"""SFT selection on hand-built trees: which trajectories are chosen, in which order, rendered how."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rstar.data.schema import SFT_SCHEMA
from rstar.data.sft import build_sft, sft_from_trees
from rstar.data.trees import build_trees, load_tree_dirs, nodes_frame, problems_frame
from rstar.verify.steps import build_prompt, render_trajectory

Spec = dict[str, dict[str, Any]]

Q = "Tom has 3 apples and buys 4 more. How many apples does Tom have?"


def _texts(nodes: pl.DataFrame, *ids: str) -> list[str]:
    by_id = dict(zip(nodes["node_id"].to_list(), nodes["step_text"].to_list(), strict=True))
    return [by_id[i] for i in ids]


def test_top_k_by_average_q_rendered_in_the_step_format() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": 0.2},
        "0.0.0": {"q": 1.0, "outcome": "correct"},  # avg 0.6
        "0.1": {"q": 0.9},
        "0.1.0": {"q": 0.9, "outcome": "correct"},  # avg 0.9 (best)
        "0.2": {"q": 0.8, "outcome": "correct"},  # avg 0.8
        "0.3": {"q": 1.0, "outcome": "wrong"},  # wrong: never selected, whatever its Q
    }
    nodes = nodes_frame("p", spec)
    sft = build_sft(nodes, problems_frame({"p": Q}), k=2)
    assert sft.schema == pl.Schema(SFT_SCHEMA)
    assert sft["leaf_id"].to_list() == ["0.1.0", "0.2"]
    assert sft["rank"].to_list() == [0, 1]
    assert sft["avg_q"].to_list() == pytest.approx([0.9, 0.8])
    assert sft["num_steps"].to_list() == [2, 1]
    best = sft.row(0, named=True)
    assert best["prompt"] == build_prompt(Q)
    steps = _texts(nodes, "0.1", "0.1.0")
    assert best["completion"] == "".join(steps)
    assert best["prompt"] + best["completion"] == render_trajectory(Q, steps)
    assert best["completion"].endswith("<end_of_answer>\n")
    assert best["source"] == "test"


def test_k_is_configurable_and_validated() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": 0.1, "outcome": "correct"},
        "0.1": {"q": 0.3, "outcome": "correct"},
        "0.2": {"q": 0.2, "outcome": "correct"},
    }
    nodes, problems = nodes_frame("p", spec), problems_frame({"p": Q})
    assert build_sft(nodes, problems, k=1)["leaf_id"].to_list() == ["0.1"]
    assert build_sft(nodes, problems, k=3)["leaf_id"].to_list() == ["0.1", "0.2", "0.0"]
    assert build_sft(nodes, problems, k=10).height == 3
    with pytest.raises(ValueError, match="k must be"):
        build_sft(nodes, problems, k=0)


def test_average_q_ties_break_by_minimum_q() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": 0.0},
        "0.0.0": {"q": 1.0, "outcome": "correct"},  # avg 0.5, min 0.0
        "0.1": {"q": 0.4},
        "0.1.0": {"q": 0.6, "outcome": "correct"},  # avg 0.5, min 0.4 -> first
        "0.2": {"q": 0.5, "outcome": "correct"},  # avg 0.5, min 0.5 -> before both (one step)
    }
    sft = build_sft(nodes_frame("p", spec), problems_frame({"p": Q}), k=3)
    assert sft["leaf_id"].to_list() == ["0.2", "0.1.0", "0.0.0"]


def test_full_ties_break_by_length_then_natural_leaf_order_whatever_the_row_order() -> None:
    spec: Spec = {"0": {}}
    for i in (10, 2, 1):  # "0.10" must sort after "0.2" (natural order, not string order)
        spec[f"0.{i}"] = {"q": 0.5, "outcome": "correct"}
    spec["0.3"] = {"q": 0.5}
    spec["0.3.0"] = {"q": 0.5, "outcome": "correct"}  # same avg/min, two steps -> last
    nodes = nodes_frame("p", spec)
    problems = problems_frame({"p": Q})
    expected = ["0.1", "0.2", "0.10", "0.3.0"]
    assert build_sft(nodes, problems, k=4)["leaf_id"].to_list() == expected
    shuffled = nodes.sample(fraction=1.0, shuffle=True, seed=3)
    assert build_sft(shuffled, problems, k=4)["leaf_id"].to_list() == expected


def test_trajectories_with_failing_code_are_dropped() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": 0.9, "exec_ok": False},  # an error the search let through
        "0.0.0": {"q": 0.9, "outcome": "correct"},
        "0.1": {"q": 0.1, "outcome": "correct"},
    }
    trees, _ = build_trees(nodes_frame("p", spec))
    sft, stats = sft_from_trees(trees, problems_frame({"p": Q}), k=2)
    assert sft["leaf_id"].to_list() == ["0.1"]
    assert stats.dropped_exec_error == 1
    kept, _ = sft_from_trees(trees, problems_frame({"p": Q}), k=2, drop_exec_errors=False)
    assert kept["leaf_id"].to_list() == ["0.0.0", "0.1"]


def test_problems_without_a_correct_trajectory_contribute_nothing() -> None:
    hard = nodes_frame(
        "hard",
        {"0": {}, "0.0": {"q": -1.0, "outcome": "wrong"}, "0.1": {"q": -1.0, "outcome": "code_error"}},
    )
    easy = nodes_frame("easy", {"0": {}, "0.0": {"q": 1.0, "outcome": "correct"}})
    trees, _ = build_trees(pl.concat([hard, easy]))
    sft, stats = sft_from_trees(trees, problems_frame({"hard": "h?", "easy": "e?"}), k=2)
    assert sft["problem_id"].to_list() == ["easy"]
    assert (stats.problems, stats.with_correct, stats.selected_problems, stats.rows) == (2, 1, 1, 1)


def test_empty_node_table_gives_an_empty_frame_with_the_schema() -> None:
    sft = build_sft(nodes_frame("p", {}), problems_frame({"p": Q}))
    assert sft.height == 0
    assert sft.schema == pl.Schema(SFT_SCHEMA)


def test_problem_missing_from_the_problem_table_is_reported_not_fatal() -> None:
    trees, _ = build_trees(nodes_frame("ghost", {"0": {}, "0.0": {"q": 1.0, "outcome": "correct"}}))
    sft, stats = sft_from_trees(trees, problems_frame({"other": Q}))
    assert sft.height == 0
    assert stats.missing_question == 1


def test_unvisited_steps_count_as_q_zero() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": None},
        "0.0.0": {"q": 0.8, "outcome": "correct"},  # avg (0 + 0.8) / 2 = 0.4
        "0.1": {"q": 0.5, "outcome": "correct"},
    }
    sft = build_sft(nodes_frame("p", spec), problems_frame({"p": Q}), k=2)
    assert sft["leaf_id"].to_list() == ["0.1", "0.0.0"]
    assert sft["avg_q"].to_list() == pytest.approx([0.5, 0.4])


def test_trees_from_several_shards_are_pooled_and_identical_texts_deduplicated(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    first = nodes_frame(
        "p", {"0": {}, "0.0": {"q": 0.9, "outcome": "correct"}, "0.1": {"q": 0.2, "outcome": "correct"}}
    )
    # The second shard repeats the first shard's best path text (same node id, same text) with a lower Q,
    # and adds a new correct trajectory.
    second = nodes_frame(
        "p",
        {
            "0": {},
            "0.0": {"q": 0.7, "outcome": "correct"},
            "0.1": {"q": 0.6},
            "0.1.0": {"q": 0.6, "outcome": "correct"},
        },
    )
    first.write_parquet(a / "nodes.parquet")
    second.write_parquet(b / "nodes.parquet")
    problems_frame({"p": Q}).write_parquet(a / "problems.parquet")
    data = load_tree_dirs([a, b])
    assert sorted(set(data.nodes["tree_id"].to_list())) == ["p#0", "p#1"]
    trees, _ = build_trees(data.nodes)
    sft, stats = sft_from_trees(trees, data.problems, k=3)
    assert list(zip(sft["tree_id"].to_list(), sft["leaf_id"].to_list(), strict=True)) == [
        ("p#0", "0.0"),
        ("p#1", "0.1.0"),
        ("p#0", "0.1"),
    ]
    assert stats.duplicates == 1
