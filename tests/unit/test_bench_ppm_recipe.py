"""bench/ppm_recipe.py: judges on fixed trees (golden numbers), the validation split's disjointness, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.bench import load_bench

pr = load_bench("ppm_recipe")
pn = load_bench("ppm_needed")
T = pn.Tree

# a: 2 right, 1 wrong; b: 1 right, 2 wrong (the vote is wrong); c: all wrong; d: one answer missing
TREES = [
    T(("7", "7", "3"), (True, True, False)),
    T(("12", "9", "9"), (True, False, False)),
    T(("1", "2"), (False, False)),
    T((None, "5"), (False, True)),
]


def test_a_perfect_judge_a_reversed_judge_and_ties() -> None:
    perfect = pr.judge_stats(TREES, [[2, 2, -1], [3, 0, 0], [0, 0], [9, 1]], top_k=1)
    assert perfect["vote"] == 0.5  # a and d
    assert perfect["covered"] == 0.75
    # the missing answer of d scores 9 but has no answer: it never wins
    assert perfect["best"] == 0.75 and perfect["topk"] == 0.75
    assert perfect["ranking"] == 1.0 and perfect["mixed_trees"] == 2 and perfect["pairs"] == 2 + 2
    assert perfect["ranking_ci90"] == [1.0, 1.0]
    reversed_ = pr.judge_stats(TREES, [[-2, -2, 1], [-3, 0, 0], [0, 0], [0, 1]], top_k=1)
    assert reversed_["ranking"] == 0.0 and reversed_["best"] == 0.25  # only d, whose one answer is right
    tied = pr.judge_stats(TREES, [[0, 0, 0], [0, 0, 0], [0, 0], [0, 0]], top_k=1)
    assert tied["ranking"] == 0.5  # ties count half
    # ties go to the first answer: a's "7" (right), b's "12" (right), d's "5" (the only one with an answer)
    assert tied["best"] == 0.75


def test_ranking_pools_pairs_and_the_interval_covers_it() -> None:
    # tree a: correct ones beat the wrong one once of two (1/2); tree b: both pairs won (2/2) -> pooled 3/4
    s = pr.judge_stats(TREES, [[1, -1, 0], [5, 1, 2], [0, 0], [0, 0]], top_k=2, boot=500)
    assert s["ranking"] == pytest.approx(0.75)
    lo, hi = s["ranking_ci90"]
    assert 0.5 <= lo <= 0.75 <= hi <= 1.0
    with pytest.raises(ValueError, match="scores"):
        pr.judge_stats(TREES, [[1, 2], [0, 0, 0], [0, 0], [0, 0]], top_k=1)
    with pytest.raises(ValueError, match="score lists"):
        pr.judge_stats(TREES, [[1, 2, 3]], top_k=1)


def test_a_better_judge_is_needed_where_the_vote_is_strong() -> None:
    easy = [T(("1", "1", "1", "2"), (True, True, True, False))] * 6  # the vote is always right
    need = pr.needed_ranking(easy, top_k=4, draws=50, seed=0)
    assert need["best"] is None  # nothing beats a vote that is never wrong
    rare = [T(("1", "2", "2", "2"), (True, False, False, False))] * 6  # the vote is always wrong
    need = pr.needed_ranking(rare, top_k=1, draws=50, seed=0)
    assert need["best"] is not None and need["best"] <= 0.6


def test_validation_problems_are_new_and_refuse_a_clash(tmp_path: Path) -> None:
    from rstar.data.problems import write_problems_jsonl
    from rstar.data.world import WorldConfig, generate_world, write_world

    cfg = WorldConfig(seed=0, train=12, heldout=6, seed_sft=4)
    world = tmp_path / "world"
    write_world(generate_world(cfg), world)
    first = pr.validation_problems(world, 0, 5)
    later = pr.validation_problems(world, 5, 5)
    assert len(first) == len(later) == 5
    assert not {p.question for p in first} & {p.question for p in later}
    held = {json.loads(line)["question"] for line in (world / "heldout.jsonl").read_text().splitlines()}
    assert not held & {p.question for p in first + later}
    write_problems_jsonl(later[:1], world / "final_ppm_1.jsonl")  # a set a PPM round already used
    with pytest.raises(SystemExit, match="1 validation problems are in a file"):
        pr.validation_problems(world, 5, 5)
    with pytest.raises(SystemExit, match="--offset"):
        pr.validation_problems(world, -1, 5)


def test_named_arguments_and_the_report(tmp_path: Path) -> None:
    assert pr.parse_named(["a=1", "b=x=y"], "--ppm") == {"a": "1", "b": "x=y"}
    for bad in (["a"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(SystemExit):
            pr.parse_named(bad, "--ppm")
    stats = pr.judge_stats(TREES, [[2, 2, -1], [3, 0, 0], [0, 0], [9, 1]], top_k=4)  # top-4 of b: "9" wins
    report = {
        "budget": 8,
        "top_k": 4,
        "trees": {"problems": 4, "answers_per_tree": 2.75, "covered": 0.75, "mixed": 2, "vote": 0.5},
        "needed": {"best": 0.8, "topk": 0.75},
        "judges": [
            {"name": "as-run", "source": "x/model", "settings": None, "train": None, "stats": stats},
            {
                "name": "lr1e-5",
                "source": "y",
                "settings": {"learning_rate": 1e-5},
                "train": {"train_pairs": 582.0, "steps": 73.0, "wall_s": 900.0},
                "stats": stats,
            },
        ],
    }
    text = pr.table(report)
    assert "| as-run | x/model | as trained | 1.000 [1.00-1.00] | 75.0 | 50.0 | 50.0 |" in text
    assert '| lr1e-5 | {"learning_rate": 1e-05} | 582 / 73 / 15.0 |' in text
    assert "beats the vote from a ranking of 0.8 (highest score) / 0.75 (top-4)" in text
    png = tmp_path / "r.png"
    pr.plot(report, png)
    assert png.stat().st_size > 10_000


def test_steps_that_differ_only_in_wording_run_the_same_program() -> None:
    import polars as pl

    a = "# Step 1: add the stamps in the piles found\ntotal = 40 + 11\n<end_of_step>\n"
    b = "# Step 1: add the stamps from the Monday pile\ntotal = 40+11  # Monday and Tuesday\n<end_of_step>\n"
    c = "# Step 1: add the stamps from the Monday pile\ntotal = 40 - 11\n<end_of_step>\n"
    assert pr.program(a) == pr.program(b) == "total=40+11"
    assert pr.program(a) != pr.program(c)
    pairs = pl.DataFrame(
        {
            "kind": ["step", "step", "final", "final"],
            "chosen": [a, a, a, a],
            "rejected": [b, c, b, c],
            "w": [1, 2, 3, 4],
        }
    )
    kept = pr.drop_same_program_steps(pairs)
    assert kept["w"].to_list() == [2, 3, 4]  # final pairs stay: whole trajectories, graded by their answers


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to judge"),
        (["--variant", "a={not json"], "settings are not JSON"),
        (["--variant", "a=[1]", "--pairs", "p", "--like", "l"], "must be a JSON object"),
        (["--variant", "a={}"], "needs --pairs and --like"),
        (["--variant", "a={}", "--ppm", "a=x", "--pairs", "p", "--like", "l"], "share the name 'a'"),
    ],
)
def test_bad_arguments_fail_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        pr.main(["--run", str(tmp_path), "--world", str(tmp_path), *argv])
    assert message in capsys.readouterr().err
