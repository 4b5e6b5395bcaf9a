"""bench/ppm_probe.py and ppm_crosseval.py's settings: new problems never leak, a run's budget is the one used."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tests.helpers.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the bench scripts import each other as `bench.*`


probe = load_bench("ppm_probe")
xe = load_bench("ppm_crosseval")


def _world(tmp_path: Path) -> Path:
    from rstar.data.world import WorldConfig, generate_world, write_world

    write_world(generate_world(WorldConfig(seed=0, train=20, heldout=12, seed_sft=8)), tmp_path / "world")
    return tmp_path / "world"


def test_fresh_problems_are_new_and_the_heldout_split_is_untouched(tmp_path: Path) -> None:
    from rstar.data.problems import load_problems

    world = _world(tmp_path)
    seen = {p.question for s in ("train", "seed", "heldout") for p in load_problems(world / f"{s}.jsonl")[0]}
    new = probe.fresh_problems(world, 30)
    questions = [p.question for p in new]
    assert len(questions) == 30 and len(set(questions)) == 30
    assert not set(questions) & seen  # nothing the run trained on, bootstrapped from or is evaluated on
    assert all(p.answer for p in new)
    assert [p.question for p in probe.fresh_problems(world, 30)] == questions  # seeded: the same every time


def test_fresh_problems_refuse_a_world_whose_heldout_split_would_change(tmp_path: Path) -> None:
    world = _world(tmp_path)
    summary = json.loads((world / "world.json").read_text())
    summary["config"]["seed"] = 1  # a different generator seed: its held-out split is not the run's
    (world / "world.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="held-out"):
        probe.fresh_problems(world, 5)


def test_crosseval_searches_with_the_runs_budget(tmp_path: Path) -> None:
    evo = importlib.import_module("bench.evolution")  # the module ppm_crosseval itself imports
    assert xe.run_budget(None) == evo.DEFAULT
    b = replace(evo.DEFAULT, max_depth=3, max_step_tokens=32, mcts_candidates=2, temperature=0.7, mcts_budget=5)
    path = tmp_path / "evolution.json"
    path.write_text(json.dumps({"budget": asdict(b)}))
    got = xe.run_budget(path)
    assert got == b
    cfg = evo.eval_config(got, seed=3)
    assert (cfg.max_steps, cfg.max_step_tokens, cfg.mcts_candidates, cfg.temperature, cfg.seed) == (3, 32, 2, 0.7, 3)
