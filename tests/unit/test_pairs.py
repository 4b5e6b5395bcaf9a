"""PPM preference pairs on hand-built trees (exact pairs, tie rules, final-step pairs) and property tests."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rstar.data.pairs import PairConfig, build_pairs, pairs_from_trees, select_sides
from rstar.data.schema import PAIRS_SCHEMA
from rstar.data.trees import build_trees, nodes_frame, problems_frame
from rstar.verify.steps import build_prompt

Spec = dict[str, dict[str, Any]]

Q = "What is 1?"

# Root with three children:
#   0.0 (Q 0.5) mixed: 0.0.0 correct (Q 1), 0.0.1 wrong (Q -1)
#   0.1 (Q -0.5) wrong only: 0.1.0 wrong (Q -1), 0.1.1 code error (Q -1)
#   0.2 (Q 0.9) correct answer
MIXED: Spec = {
    "0": {},
    "0.0": {"q": 0.5},
    "0.0.0": {"q": 1.0, "outcome": "correct"},
    "0.0.1": {"q": -1.0, "outcome": "wrong"},
    "0.1": {"q": -0.5},
    "0.1.0": {"q": -1.0, "outcome": "wrong"},
    "0.1.1": {"q": -1.0, "outcome": "code_error"},
    "0.2": {"q": 0.9, "outcome": "correct"},
}


def _summary(pairs: pl.DataFrame) -> list[tuple]:
    return list(
        zip(
            pairs["kind"].to_list(),
            pairs["node_id"].to_list(),
            pairs["chosen_id"].to_list(),
            pairs["rejected_id"].to_list(),
            pairs["weight"].to_list(),
            strict=True,
        )
    )


def test_exact_step_and_final_pairs_of_a_mixed_tree() -> None:
    nodes = nodes_frame("p", MIXED)
    pairs = build_pairs(nodes, problems_frame({"p": Q}))
    assert pairs.schema == pl.Schema(PAIRS_SCHEMA)
    assert _summary(pairs) == [
        # root: chosen top-2 by Q = [0.2, 0.0]; rejected bottom-2 = [0.1, 0.0]; (0.0, 0.0) is no pair
        ("step", "0", "0.2", "0.1", 0.25),
        ("step", "0", "0.2", "0.0", 0.25),
        ("step", "0", "0.0", "0.1", 0.25),
        # the mixed child 0.0
        ("step", "0.0", "0.0.0", "0.0.1", 1.0),
        # final pairs: correct [0.2 (avg .9), 0.0.0 (avg .75)] vs wrong [0.1.0 (avg -.75), 0.0.1 (avg -.25)];
        # (0.0.0, 0.0.1) equals the step pair at 0.0 and is skipped
        ("final", "0", "0.2", "0.1.0", 0.25),
        ("final", "0", "0.2", "0.0.1", 0.25),
        ("final", "0", "0.0.0", "0.1.0", 0.25),
    ]
    texts = dict(zip(nodes["node_id"].to_list(), nodes["step_text"].to_list(), strict=True))
    step = pairs.row(3, named=True)
    assert step["prefix"] == build_prompt(Q) + texts["0.0"]
    assert (step["chosen"], step["rejected"]) == (texts["0.0.0"], texts["0.0.1"])
    assert (step["q_chosen"], step["q_rejected"], step["depth"]) == (1.0, -1.0, 2)
    final = pairs.row(4, named=True)
    assert final["prefix"] == build_prompt(Q)
    assert final["chosen"] == texts["0.2"]
    assert final["rejected"] == texts["0.1"] + texts["0.1.0"]
    assert final["q_chosen"] == pytest.approx(0.9)
    assert final["q_rejected"] == pytest.approx(-0.75)
    assert (final["pos_count"], final["neg_count"], final["depth"]) == (2, 2, 1)


def test_final_pairs_use_the_deepest_shared_node_as_prefix() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": 0.1},
        "0.0.0": {"q": 0.4},
        "0.0.0.0": {"q": 1.0, "outcome": "correct"},
        "0.0.1": {"q": -0.2},
        "0.0.1.0": {"q": -1.0, "outcome": "wrong"},
    }
    nodes = nodes_frame("p", spec)
    pairs = build_pairs(nodes, problems_frame({"p": Q}), step_pairs=False)
    texts = dict(zip(nodes["node_id"].to_list(), nodes["step_text"].to_list(), strict=True))
    assert pairs.height == 1
    row = pairs.row(0, named=True)
    assert (row["kind"], row["node_id"], row["depth"]) == ("final", "0.0", 2)
    assert row["prefix"] == build_prompt(Q) + texts["0.0"]
    assert row["chosen"] == texts["0.0.0"] + texts["0.0.0.0"]
    assert row["rejected"] == texts["0.0.1"] + texts["0.0.1.0"]


def test_one_chosen_takes_up_to_four_rejected_lowest_q_first() -> None:
    spec: Spec = {"0": {}, "0.0": {"q": 0.9, "outcome": "correct"}}
    for i, q in enumerate([-0.1, -0.9, -0.5, -0.7, -0.3], start=1):
        spec[f"0.{i}"] = {"q": q, "outcome": "wrong"}
    pairs = build_pairs(nodes_frame("p", spec), problems_frame({"p": Q}), final_pairs=False)
    assert pairs["rejected_id"].to_list() == ["0.2", "0.4", "0.3", "0.5"]
    assert set(pairs["chosen_id"].to_list()) == {"0.0"}
    assert pairs["weight"].to_list() == [0.25] * 4
    assert set(pairs["neg_count"].to_list()) == {4}


def test_one_rejected_takes_up_to_four_chosen_highest_q_first() -> None:
    spec: Spec = {"0": {}, "0.0": {"q": -0.9, "outcome": "wrong"}}
    for i, q in enumerate([0.1, 0.9, 0.5, 0.7, 0.3], start=1):
        spec[f"0.{i}"] = {"q": q, "outcome": "correct"}
    pairs = build_pairs(nodes_frame("p", spec), problems_frame({"p": Q}), final_pairs=False)
    assert pairs["chosen_id"].to_list() == ["0.2", "0.4", "0.3", "0.5"]
    assert set(pairs["rejected_id"].to_list()) == {"0.0"}


def test_select_sides_rule() -> None:
    cfg = PairConfig()
    assert select_sides(5, 5, cfg) == (2, 2)
    assert select_sides(1, 5, cfg) == (1, 4)
    assert select_sides(5, 1, cfg) == (4, 1)
    assert select_sides(1, 1, cfg) == (1, 1)
    assert select_sides(0, 3, cfg) == (0, 0)
    assert select_sides(3, 3, PairConfig(top_n=3, single_n=2)) == (3, 3)


def test_equal_q_siblings_break_ties_by_natural_node_order() -> None:
    spec: Spec = {"0": {}}
    for i in (10, 2, 3):
        spec[f"0.{i}"] = {"q": 0.5, "outcome": "correct"}
    for i in (11, 4, 5):
        spec[f"0.{i}"] = {"q": -0.5, "outcome": "wrong"}
    pairs = build_pairs(nodes_frame("p", spec), problems_frame({"p": Q}), final_pairs=False)
    assert [(c, r) for _, _, c, r, _ in _summary(pairs)] == [
        ("0.2", "0.4"),
        ("0.2", "0.5"),
        ("0.3", "0.4"),
        ("0.3", "0.5"),
    ]
    # and the row order of the input does not matter
    shuffled = nodes_frame("p", spec).sample(fraction=1.0, shuffle=True, seed=7)
    assert build_pairs(shuffled, problems_frame({"p": Q}), final_pairs=False).equals(pairs)


def test_code_error_leaves_are_not_wrong_answers() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": 0.5, "outcome": "correct"},
        "0.1": {"q": -1.0, "outcome": "code_error"},
        "0.2": {"q": -1.0, "outcome": "max_depth"},
        "0.3": {"q": -1.0, "outcome": "unparsable"},
    }
    trees, _ = build_trees(nodes_frame("p", spec))
    pairs, stats = pairs_from_trees(trees, problems_frame({"p": Q}))
    assert pairs.height == 0
    assert stats.mixed_nodes == 0


def test_margin_filter() -> None:
    spec: Spec = {
        "0": {},
        "0.0": {"q": 0.3, "outcome": "correct"},
        "0.1": {"q": 0.1, "outcome": "correct"},
        "0.2": {"q": 0.2, "outcome": "wrong"},
        "0.3": {"q": -0.4, "outcome": "wrong"},
    }
    nodes, problems = nodes_frame("p", spec), problems_frame({"p": Q})
    # default margin 0.0: only pairs with Q(chosen) > Q(rejected)
    assert [(c, r) for _, _, c, r, _ in _summary(build_pairs(nodes, problems, final_pairs=False))] == [
        ("0.0", "0.3"),
        ("0.0", "0.2"),
        ("0.1", "0.3"),
    ]
    strict = build_pairs(nodes, problems, final_pairs=False, margin=0.6)  # 0.1 - (-0.4) = 0.5 < 0.6
    assert [(c, r) for _, _, c, r, _ in _summary(strict)] == [("0.0", "0.3")]
    off = build_pairs(nodes, problems, final_pairs=False, margin=None)
    assert ("0.1", "0.2") in [(c, r) for _, _, c, r, _ in _summary(off)]
    assert off.height == 4
    with pytest.raises(ValueError, match="margin"):
        PairConfig(margin=-0.1)


def test_final_pairs_across_shard_trees_share_only_the_prompt() -> None:
    a = nodes_frame("p", {"0": {}, "0.0": {"q": 0.8, "outcome": "correct"}}).with_columns(
        pl.lit("p#0").alias("tree_id")
    )
    b = nodes_frame("p", {"0": {}, "0.0": {"q": -0.8, "outcome": "wrong"}}).with_columns(pl.lit("p#1").alias("tree_id"))
    pairs = build_pairs(pl.concat([a, b]), problems_frame({"p": Q}))
    assert pairs.height == 1
    row = pairs.row(0, named=True)
    assert (row["kind"], row["tree_id"], row["node_id"], row["prefix"]) == ("final", "p#0", None, build_prompt(Q))


def test_empty_and_unsolvable_inputs_give_no_pairs() -> None:
    assert build_pairs(nodes_frame("p", {}), problems_frame({"p": Q})).height == 0
    hard = nodes_frame("p", {"0": {}, "0.0": {"q": -1.0, "outcome": "wrong"}, "0.1": {"q": -1.0, "outcome": "wrong"}})
    assert build_pairs(hard, problems_frame({"p": Q})).height == 0


# --------------------------------------------------------------------------------------------------------------------
# Properties over random trees

# answers are drawn often so that most trees are mixed; None = an inner node that gets children
OUTCOMES = ["correct", "wrong", "correct", "wrong", "code_error", "max_depth", None, None, None]
Q_GRID = [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]  # a coarse grid, so ties are frequent


@st.composite
def random_tree(draw: st.DrawFn) -> dict[str, dict]:
    spec: dict[str, dict] = {"0": {}}
    frontier = ["0"]
    while frontier:
        nid = frontier.pop()
        depth = nid.count(".")
        n_kids = draw(st.integers(2 if depth == 0 else (1 if depth < 2 else 0), 4 if depth < 3 else 0))
        for i in range(n_kids):
            cid = f"{nid}.{i}"
            q = draw(st.sampled_from(Q_GRID))
            outcome = draw(st.sampled_from(OUTCOMES))
            spec[cid] = {"q": q}
            if outcome is not None:
                spec[cid]["outcome"] = outcome
            else:
                frontier.append(cid)
    # Make most trees mixed: a tree without a correct (or wrong) answer gets one at a drawn leaf.
    leaves = [n for n in spec if n != "0" and not any(c.startswith(n + ".") for c in spec)]
    for outcome in ("correct", "wrong"):
        free = [n for n in leaves if spec[n].get("outcome") not in ("correct", "wrong")]
        if free and not any(spec[n].get("outcome") == outcome for n in leaves) and draw(st.integers(0, 3)):
            spec[draw(st.sampled_from(free))]["outcome"] = outcome
    return spec


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_tree(), margin=st.sampled_from([None, 0.0, 0.3, 1.0]))
def test_pairs_share_their_prefix_and_respect_the_margin(spec: dict[str, dict], margin: float | None) -> None:
    nodes = nodes_frame("p", spec)
    trees, _ = build_trees(nodes)
    (tree,) = trees
    pairs, _ = pairs_from_trees(trees, problems_frame({"p": Q}), PairConfig(margin=margin))
    texts = dict(zip(nodes["node_id"].to_list(), nodes["step_text"].to_list(), strict=True))
    event("has pairs" if pairs.height else "no pairs")
    keys = set()
    for row in pairs.iter_rows(named=True):
        key = (row["prefix"], row["chosen"], row["rejected"])
        assert key not in keys  # no duplicate pair
        keys.add(key)
        assert row["chosen"] != row["rejected"]
        assert row["prefix"].startswith(build_prompt(Q))
        assert row["prefix"] == tree.prefix(Q, row["node_id"])
        assert row["weight"] == pytest.approx(1.0 / (row["pos_count"] * row["neg_count"]))
        if margin is not None:
            assert row["q_chosen"] > row["q_rejected"]
            assert row["q_chosen"] - row["q_rejected"] >= margin - 1e-12
        if row["kind"] == "step":
            # two children of the prefix node: the chosen one reaches a correct answer, the rejected one a wrong one
            assert tree.nodes[row["chosen_id"]].parent_id == row["node_id"]
            assert tree.nodes[row["rejected_id"]].parent_id == row["node_id"]
            assert row["chosen"] == texts[row["chosen_id"]] and row["rejected"] == texts[row["rejected_id"]]
            assert tree.flags(row["chosen_id"])[0] and tree.flags(row["rejected_id"])[1]
        else:
            # two whole trajectories: prefix + chosen ends in a correct answer, prefix + rejected in a wrong one
            assert tree.nodes[row["chosen_id"]].outcome == "correct"
            assert tree.nodes[row["rejected_id"]].outcome == "wrong"
            assert row["prefix"] + row["chosen"] == tree.prefix(Q, row["chosen_id"])
            assert row["prefix"] + row["rejected"] == tree.prefix(Q, row["rejected_id"])
    # pairs appear exactly at mixed nodes with a chosen and a rejected child that can be paired
    if margin is None:
        mixed = [n for n in tree.nodes if all(tree.flags(n))]
        step_nodes = set(pairs.filter(pl.col("kind") == "step")["node_id"].to_list())
        assert step_nodes <= set(mixed)
