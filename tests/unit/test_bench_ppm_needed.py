"""bench/ppm_needed.py: simulated judges of a known ranking accuracy, the product's answer rules on hand-made trees."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bench import load_bench

pn = load_bench("ppm_needed")


def _row(mode: str, answers: list[str | None], grades: list[bool], pid: str, **kw: Any) -> dict[str, Any]:
    return {"mode": mode, "budget": 8, "problem_id": pid, "answers": answers, "sample_correct": grades, **kw}


# Five trees: the vote is right (twice), the vote is wrong (the correct answer is rare), all wrong, one with a
# trajectory that has no answer.
ROWS = [
    _row("mcts-plain", ["7", "7", "7.0", "3"], [True, True, True, False], "a"),
    _row("mcts-plain", ["12", "9", "9", "9"], [True, False, False, False], "b"),
    _row("mcts-plain", ["1", "2"], [False, False], "c"),
    _row("mcts-plain", [None, "5"], [False, True], "d"),
    _row("mcts-plain", ["4", "4", "6", "4"], [True, True, False, True], "e"),
]


def test_the_judge_gap_gives_the_asked_ranking_accuracy() -> None:
    assert pn.judge_mean(0.5) == 0.0 and pn.judge_mean(1.0) == math.inf
    rng = random.Random(0)
    for a in (0.6, 0.75, 0.9):
        mu = pn.judge_mean(a)
        won = sum(mu + rng.gauss(0, 1) > rng.gauss(0, 1) for _ in range(20000)) / 20000
        assert abs(won - a) < 0.015, (a, won)
    for bad in (0.4, 1.01):
        with pytest.raises(ValueError, match=r"between 0\.5"):
            pn.judge_mean(bad)


def test_rules_on_hand_made_trees_chance_and_perfect_judges() -> None:
    trees = pn.trees_of([*ROWS, _row("mcts", ["7"], [True], "a")], "mcts-plain")
    assert len(trees) == 5 and trees[0].keys[0] == trees[0].keys[2]  # "7" and "7.0": one answer for the vote
    assert trees[3].keys[0] is None
    assert pn.vote_accuracy(trees) == 0.6  # trees a, d (the only answer there is right) and e
    perfect = pn.simulate(trees, 1.0, 5, 4, random.Random(0))
    # a perfect judge picks a correct answer wherever a tree holds one (a, b, d, e); the top-4 vote of tree b still
    # sees three wrong "9"s out of four answers and loses it
    assert perfect["best"] == [0.8] * 5 and perfect["topk"] == [0.6] * 5
    chance = pn.simulate(trees, 0.5, 4000, 1, random.Random(1))
    # a chance judge picks uniformly: a 3/4, b 1/4, c 0, d 1, e 3/4 -> 0.55 on average; top-1 is the highest score
    assert abs(sum(chance["best"]) / 4000 - 0.55) < 0.01
    assert chance["best"] == chance["topk"]


def test_analyse_finds_where_a_judge_beats_the_vote_and_reads_the_measured_ppm(tmp_path: Path) -> None:
    measured = [
        _row("mcts", ["12", "9"], [True, False], "b", scores=[0.9, 0.1], correct=True, benchmark="w", problem="q",
             gold="12", prediction="12", n_samples=2, n_correct=1, tokens=3, wall_time_s=0.1),
        _row("mcts-topk", ["12", "9"], [True, False], "b", correct=False),
    ]  # fmt: skip
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS + measured) + "\n")
    (res,) = pn.analyse(path, "mcts-plain", "mcts", draws=200, top_k=1, seed=0)
    assert res["problems"] == 5 and res["vote"] == 0.6 and res["covered"] == 0.8 and res["mixed"] == 4
    curve = {c["ranking"]: c for c in res["curve"]}
    assert curve[1.0]["best_mean"] == 0.8 and curve[0.5]["best_mean"] < 0.59  # chance: 0.55, below the vote
    assert all(a["best_mean"] <= b["best_mean"] + 0.03 for a, b in zip(res["curve"], res["curve"][1:], strict=False))
    assert res["needed"]["best"] is not None and 0.5 < res["needed"]["best"] <= 1.0
    assert res["measured"] == {"mode": "mcts", "ranking": 1.0, "best": 1.0, "topk": 0.0, "covered": 1.0}
    assert "beats the vote from a ranking of" in pn.table(res, 1)
    with pytest.raises(SystemExit, match="no rows of mode 'beam'"):
        pn.analyse(path, "beam", "mcts", draws=1, top_k=1, seed=0)


def test_main_writes_json_and_plot_one_analysis_per_budget(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    small = [{**r, "budget": 3, "answers": r["answers"][:1], "sample_correct": r["sample_correct"][:1]} for r in ROWS]
    path.write_text("\n".join(json.dumps(r) for r in ROWS + small) + "\n")
    out = tmp_path / "needed.json"
    assert pn.main(["--results", str(path), "--draws", "5", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(f["budgets"], f["problems"]) for f in data["files"]] == [([3], 5), ([8], 5)]  # trees never mixed
    assert data["files"][0]["answers_per_tree"] == 0.8 and data["files"][1]["answers_per_tree"] == 3.0
    assert data["files"][0]["measured"] is None and len(data["files"][0]["curve"]) == len(pn.RANKINGS)
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit):
        pn.main(["--results", str(tmp_path / "missing.jsonl")])
