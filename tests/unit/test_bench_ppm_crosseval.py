"""bench/ppm_crosseval.py: mixed-tree arithmetic (the picked answer vs the most frequent one), paths in results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]


xe = load_bench("ppm_crosseval")


def test_mixed_tree_stats_counts_only_trees_with_a_correct_and_a_wrong_answer() -> None:
    rows = [
        # mixed; the PPM picked the lone correct answer, the most frequent ("4" = "4.0", twice) is wrong
        {"answers": ["4", "5", "4.0"], "sample_correct": [False, True, False], "correct": True},
        # mixed; the rule picked wrong, the most frequent ("7") is right; None answers are not votes
        {"answers": [None, "7", "7", "3"], "sample_correct": [False, True, True, False], "correct": False},
        # all right / all wrong / empty: not mixed
        {"answers": ["1", "1"], "sample_correct": [True, True], "correct": True},
        {"answers": ["2"], "sample_correct": [False], "correct": False},
        {"answers": [], "sample_correct": [], "correct": False},
    ]
    assert xe.mixed_tree_stats(rows) == {"mixed": 2, "chosen_right": 1, "most_frequent_right": 1}


def test_a_tie_goes_to_the_answer_seen_first_as_in_the_majority_vote() -> None:
    rows = [{"answers": ["9", "8"], "sample_correct": [False, True], "correct": True}]
    assert xe.mixed_tree_stats(rows) == {"mixed": 1, "chosen_right": 1, "most_frequent_right": 0}


def test_a_round_must_hold_exactly_one_artifact_of_a_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    import infra.storage

    class Store:
        def list_artifacts(self, prefix: str = "") -> list[str]:
            held = ["rounds/2/ppm/abc", "rounds/2/pairs/d1", "rounds/2/pairs/d2"]
            return [k for k in held if k.startswith(prefix)]

    monkeypatch.setattr(infra.storage, "open_store", lambda settings=None: Store())
    assert xe.round_artifact(2, "ppm") == "rounds/2/ppm/abc"
    with pytest.raises(SystemExit, match=r"one policy artifact of round 2 .* found 0"):
        xe.round_artifact(2, "policy")
    with pytest.raises(SystemExit, match=r"one pairs artifact of round 2 .* found 2"):
        xe.round_artifact(2, "pairs")


def test_add_paired_counts_the_problems_only_one_rule_got_right() -> None:
    cells: list[dict[str, Any]] = [
        {"policy_round": 2, "rule": "mcts", "correct": [True, True, False, False, True]},
        {"policy_round": 2, "rule": "mcts-plain", "correct": [True, False, True, False, False]},
        {"policy_round": 3, "rule": "mcts", "correct": [True]},  # no plain cell for round 3: nothing to pair with
    ]
    xe.add_paired(cells)
    assert (cells[0]["only_this_right"], cells[0]["only_plain_right"]) == (2, 1)
    assert cells[0]["sign_p"] == 1.0  # two of three discordant problems: no evidence either way
    assert "only_this_right" not in cells[1] and "only_this_right" not in cells[2]


def test_result_paths_are_recorded_relative_to_the_repository(tmp_path: Path) -> None:
    inside = xe.ROOT / ".rstar" / "bench" / "run"
    assert xe.shown(inside) == ".rstar/bench/run"
    assert xe.shown(f"hf:{inside / 'ppm'}") == "hf:.rstar/bench/run/ppm"
    assert xe.shown(tmp_path / "x") == str(tmp_path / "x")  # outside the repository: kept absolute
    assert xe.shown(f"hf:{tmp_path}") == f"hf:{tmp_path}"
    assert xe.shown("smollm2-135m") == "smollm2-135m"  # a registry name is not a path
    assert xe.shown("hf:relative/ppm") == "hf:relative/ppm"
    assert xe.shown(f"file://{inside}") == f"file://{inside}"  # a URI is not rewritten into a half-relative one
    assert xe.shown(None) is None


def _world(tmp_path: Path) -> Path:
    from rstar.data.world import WorldConfig, generate_world, write_world

    write_world(generate_world(WorldConfig(seed=3, train=12, heldout=6, seed_sft=4)), tmp_path)
    return tmp_path


def test_heldout_problems_inside_the_split_are_the_split(tmp_path: Path) -> None:
    from rstar.data.problems import load_problems

    world = _world(tmp_path)
    split, _ = load_problems(world / "heldout.jsonl")
    assert xe.heldout_problems(world, 0, 6) == (split, 0)
    assert xe.heldout_problems(world, 2, 3) == (split[2:5], 0)


def test_heldout_problems_past_the_split_continue_its_stream_without_trained_problems(tmp_path: Path) -> None:
    from rstar.data.problems import load_problems, write_problems_jsonl
    from rstar.data.world import WorldConfig, generate_world

    world = _world(tmp_path)
    split, _ = load_problems(world / "heldout.jsonl")
    stream = [p.to_problem("heldout") for p in generate_world(WorldConfig(seed=3, heldout=30)).heldout]
    got, skipped = xe.heldout_problems(world, 4, 10)
    assert got[:2] == split[4:6] and skipped == 0  # the split's tail, then the stream's next problems in order
    assert [p.question for p in got[2:]] == [p.question for p in stream[6:14]]
    # a PPM-only round's problem file claims two of them: they are skipped, counted, and the stream fills the gap
    write_problems_jsonl([stream[7], stream[9]], world / "final_ppm_2.jsonl")
    got2, skipped2 = xe.heldout_problems(world, 4, 10)
    assert skipped2 == 2 and len(got2) == 10
    trained = {p.question for f in ("train", "seed", "final_ppm_2") for p in load_problems(world / f"{f}.jsonl")[0]}
    assert not trained & {p.question for p in got2}
    assert [p.question for p in got2[2:]] == [p.question for p in stream[6:16] if p not in (stream[7], stream[9])]


def test_heldout_problems_refuse_a_split_the_stream_does_not_start_with(tmp_path: Path) -> None:
    from rstar.data.problems import load_problems, write_problems_jsonl

    world = _world(tmp_path)
    split, _ = load_problems(world / "heldout.jsonl")
    write_problems_jsonl(list(reversed(split)), world / "heldout.jsonl")
    with pytest.raises(SystemExit, match="does not start with the run's split"):
        xe.heldout_problems(world, 0, 8)
    with pytest.raises(SystemExit, match="--heldout-offset must be >= 0"):
        xe.heldout_problems(world, -1, 8)
