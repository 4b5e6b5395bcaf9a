"""bench/evolution.py's acceptance arithmetic: per-seed gains against the seed spread, and merging per-seed files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bench import load_bench

ev = load_bench("evolution")
B = ev.Budget(rounds=2, mcts_budget=3)


def _run(seed: int, boot: float, r1: float, r2: float, ppm: float, plain: float, base: bool = True) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [{"stage": "base", "greedy": 0.0}] if base else []
    rows += [
        {"stage": "bootstrap", "greedy": boot, "mcts-plain@3": plain},
        {"stage": "round 1", "greedy": r1, "mcts@3": ppm, "mcts-plain@3": plain},
        {"stage": "round 2", "greedy": r2, "mcts@3": ppm, "mcts-plain@3": plain, "mcts-plain@3_ppm_rank": 50.0},
    ]
    return {"seed": seed, "rows": rows}


def test_a_gain_is_shown_only_when_every_seed_beats_the_spread() -> None:
    s = ev.summary([_run(0, 50.0, 55.0, 62.0, 60.0, 50.0), _run(1, 52.0, 52.0, 60.0, 58.0, 57.0)], B)
    vs_boot = s["greedy_round2_vs_bootstrap"]
    assert vs_boot == {"gains": [12.0, 8.0], "spread": 2.0, "shown": True}
    assert s["greedy_round1_vs_bootstrap"] == {"gains": [5.0, 0.0], "spread": 3.0, "shown": False}
    assert s["greedy_round2_vs_base"]["shown"] is True
    # PPM vs plain: seed 1 gains only 1 point, less than the 2-point spread of PPM-guided accuracy
    assert s["ppm_vs_plain_round2"] == {"gains": [10.0, 1.0], "spread": 2.0, "shown": False}
    assert s["seed_spread_greedy"] == {"base": 0.0, "bootstrap": 2.0, "round 1": 3.0, "round 2": 2.0}
    assert "ppm_topk_vs_plain_round2" not in s  # not measured in these runs: no verdict


def test_the_top_k_rule_is_judged_against_plain_mcts_on_its_own() -> None:
    runs = [_run(0, 50.0, 55.0, 62.0, 60.0, 50.0), _run(1, 52.0, 52.0, 60.0, 58.0, 57.0)]
    for run, topk in zip(runs, (58.0, 64.0), strict=True):
        run["rows"][-1]["mcts-topk@3"] = topk
    s = ev.summary(runs, B)
    assert s["ppm_topk_vs_plain_round2"] == {"gains": [8.0, 7.0], "spread": 6.0, "shown": True}
    assert s["ppm_vs_plain_round2"]["shown"] is False  # the paper's rule is judged separately


def test_the_final_ppm_row_is_judged_against_the_last_rounds_plain_mcts() -> None:
    """The PPM-only round keeps the last round's policy: its PPM-guided search is compared with that round's plain
    search (same policy, seed and budget), and the spread is the PPM-guided accuracy's over seeds."""
    runs = [_run(0, 50.0, 55.0, 62.0, 60.0, 50.0), _run(1, 52.0, 52.0, 60.0, 58.0, 57.0)]
    for run, (ppm, topk, wmaj) in zip(runs, ((66.0, 61.0, 50.0), (64.0, 58.0, 60.0)), strict=True):
        run["rows"].append({"stage": "final PPM", "mcts@3": ppm, "mcts-topk@3": topk, "mcts-wmaj@3": wmaj})
    s = ev.summary(runs, B)
    assert s["ppm_vs_plain_final"] == {"gains": [16.0, 7.0], "spread": 2.0, "shown": True}
    assert s["ppm_topk_vs_plain_final"] == {"gains": [11.0, 1.0], "spread": 3.0, "shown": False}
    assert s["ppm_wmaj_vs_plain_final"] == {"gains": [0.0, 3.0], "spread": 10.0, "shown": False}
    assert s["ppm_vs_plain_round2"]["shown"] is False  # the round's own PPM is still judged on its own row
    assert "ppm_vs_plain_final" not in ev.summary([_run(0, 50.0, 55.0, 62.0, 60.0, 50.0)] * 2, B)  # no such row


def test_a_gain_equal_to_the_spread_is_not_shown_whatever_the_rounding() -> None:
    """Accuracies are stored rounded to 0.01: 40/60 and 41/60 give a spread of 68.33 - 66.67 = 1.66 while the gain
    39/60 -> 40/60 reads 66.67 - 65.0 = 1.67. Both are one problem of 60, so the gain does not clear the spread."""
    runs = [_run(0, 50.0, 55.0, 62.0, 60.0, 65.0), _run(1, 52.0, 52.0, 60.0, 58.0, 65.0)]
    for run, topk in zip(runs, (66.67, 68.33), strict=True):
        run["rows"][-1]["mcts-topk@3"] = topk
    s = ev.summary(runs, B)
    assert s["ppm_topk_vs_plain_round2"] == {"gains": [1.67, 3.33], "spread": 1.66, "shown": False}
    runs[1]["rows"][-1]["mcts-topk@3"] = 68.0  # a real margin: 1.67 > 1.33
    assert ev.summary(runs, B)["ppm_topk_vs_plain_round2"]["shown"] is True


def test_evaluate_refuses_a_mode_set_it_does_not_plan(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modes"):
        ev._evaluate("fake:oracle", None, [], [], B, tmp_path, 0, modes=("maj",))
    with pytest.raises(ValueError, match="needs a PPM"):
        ev._evaluate("fake:oracle", None, [], [], B, tmp_path, 0, modes=("mcts",))


def test_one_seed_has_no_spread_and_shows_nothing() -> None:
    s = ev.summary([_run(0, 50.0, 70.0, 80.0, 90.0, 10.0)], B)
    assert s["greedy_round2_vs_bootstrap"] == {"gains": [30.0], "spread": None, "shown": False}
    assert "seed_spread_greedy" not in s


def _write(path: Path, runs: list[dict[str, Any]], **budget: Any) -> Path:
    from dataclasses import asdict, replace

    path.write_text(json.dumps({"budget": asdict(replace(B, **budget)), "runs": runs, "wall_s": 60.0}))
    return path


def test_merge_shares_the_base_row_and_drops_the_plain_ppm_rank(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", [_run(0, 50.0, 55.0, 62.0, 60.0, 50.0)])
    b = _write(tmp_path / "b.json", [_run(1, 52.0, 52.0, 60.0, 58.0, 57.0, base=False)], eval_base=False, maj_k=0)
    merged = ev.merge([a, b])  # skipping evaluations (the base model, maj@k) does not make another experiment
    assert merged["seeds"] == [0, 1] and merged["wall_s"] == 120.0
    seed1 = merged["runs"][1]["rows"]
    assert seed1[0] == {"stage": "base", "greedy": 0.0}  # the untouched model does not depend on the run seed
    assert not any(k.endswith("_ppm_rank") for run in merged["runs"] for row in run["rows"] for k in row)
    assert merged["summary"]["greedy_round2_vs_base"] == {"gains": [62.0, 60.0], "spread": 2.0, "shown": True}
    out = tmp_path / "both.json"
    assert ev.report(merged, B, out, None, tmp_path) == 0
    assert json.loads(out.read_text())["seeds"] == [0, 1] and out.with_suffix(".png").stat().st_size > 0


def test_merge_refuses_different_budgets_and_repeated_seeds(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", [_run(0, 50.0, 55.0, 62.0, 60.0, 50.0)])
    b = _write(tmp_path / "b.json", [_run(1, 50.0, 55.0, 62.0, 60.0, 50.0)], lr=1e-3)
    with pytest.raises(SystemExit, match=r"different budget.*lr"):
        ev.merge([a, b])
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0\] more than once"):
        ev.merge([a, a])


def test_the_weighted_vote_is_read_off_the_stored_trees(tmp_path: Path) -> None:
    from rstar.eval.metrics import ProblemResult
    from rstar.eval.report import write_reports

    def res(pid: str, answers: list[str], scores: list[float], ok: list[bool], mode: str = "mcts") -> ProblemResult:
        return ProblemResult("heldout", mode, 3, pid, "q", "g", None, False, len(answers), sum(ok),
                             answers=tuple(answers), scores=tuple(scores), sample_correct=tuple(ok))  # fmt: skip

    results = [
        res("a", ["5", "5", "6"], [0.3, 0.2, 0.9], [True, True, False]),  # weighted: "5" (1.25 vs 0.95) right
        res("b", ["2", "9", "2"], [0.8, -0.2, 0.9], [False, True, False]),  # weighted: "2" wrong
        res("a", ["6"], [0.1], [False], mode="mcts-topk"),  # other rules' rows are not read
    ]
    write_reports(tmp_path, results, meta={}, plot=False)
    assert ev.weighted_vote_accuracy(tmp_path / "results.parquet", 3) == 0.5
    assert ev.weighted_vote_accuracy(tmp_path / "results.parquet", 8) == 0.0  # no trees of that budget


def test_a_finished_evaluation_of_the_same_inputs_is_reused_and_any_change_runs_it_again(tmp_path: Path) -> None:
    """Re-running the bench re-uses an evaluation only of the same policy, PPM, settings and problems, complete."""
    from rstar.data.problems import load_problems
    from rstar.data.world import WorldConfig, generate_world, write_world

    world = write_world(generate_world(WorldConfig(seed=0, train=4, heldout=6, seed_sft=1)), tmp_path / "world")
    held, _ = load_problems(world["heldout"])
    policy = f"fake:oracle?answers={world['heldout']}&p_correct=0.5"
    b = ev.Budget(max_depth=3, max_step_tokens=16)
    first = ev._evaluate(policy, None, held, [], b, tmp_path / "eval", 0, modes=("greedy",))
    assert "reused_eval" not in first and first["greedy"] > 0
    again = ev._evaluate(policy, None, held, [], b, tmp_path / "eval", 0, modes=("greedy",))
    assert again["reused_eval"] == ["greedy-1"]
    assert {k: v for k, v in again.items() if k != "reused_eval"} == first  # same numbers, the first run's wall time
    fresh = ev._evaluate(policy, None, held, [], b, tmp_path / "eval", 0, modes=("greedy",), fresh=True)
    assert "reused_eval" not in fresh
    # other problems, other settings, another policy: evaluated again
    assert "reused_eval" not in ev._evaluate(policy, None, held[:5], [], b, tmp_path / "eval", 0, modes=("greedy",))
    ev._evaluate(policy, None, held, [], b, tmp_path / "eval", 0, modes=("greedy",))
    changed = ev.Budget(max_depth=4, max_step_tokens=16)
    assert "reused_eval" not in ev._evaluate(policy, None, held, [], changed, tmp_path / "eval", 0, modes=("greedy",))
    other = f"fake:oracle?answers={world['heldout']}&p_correct=0.9"
    assert "reused_eval" not in ev._evaluate(other, None, held, [], changed, tmp_path / "eval", 0, modes=("greedy",))
    # an interrupted evaluation (a problem's result missing) is not a finished one, nor is a damaged result file
    import polars as pl

    results = tmp_path / "eval" / "greedy-1" / "results.parquet"
    pl.read_parquet(results)[:-1].write_parquet(results)
    assert "reused_eval" not in ev._evaluate(other, None, held, [], changed, tmp_path / "eval", 0, modes=("greedy",))
    assert ev._evaluate(other, None, held, [], changed, tmp_path / "eval", 0, modes=("greedy",))["reused_eval"]
    results.write_bytes(results.read_bytes()[:100])
    assert "reused_eval" not in ev._evaluate(other, None, held, [], changed, tmp_path / "eval", 0, modes=("greedy",))


def test_the_final_ppm_round_gets_new_problems_only_when_asked(tmp_path: Path) -> None:
    from rstar.data.problems import load_problems
    from rstar.data.world import WorldConfig, generate_world, write_world

    world = write_world(generate_world(WorldConfig(seed=0, train=8, heldout=6, seed_sft=4)), tmp_path / "world")
    assert ev._final_ppm_problems(world, ev.Budget(final_ppm=True)) is None  # the rounds' problems
    assert ev._final_ppm_problems(world, ev.Budget(final_ppm=False, final_ppm_problems=5)) is None
    path = ev._final_ppm_problems(world, ev.Budget(final_ppm=True, final_ppm_problems=5))
    assert path is not None
    new = [p.question for p in load_problems(path)[0]]
    splits = [world["train"], world["heldout"], tmp_path / "world" / "seed.jsonl"]  # seed.jsonl: the seed SFT's
    seen = {p.question for split in splits for p in load_problems(split)[0]}
    assert len(set(new)) == 5 and not set(new) & seen
